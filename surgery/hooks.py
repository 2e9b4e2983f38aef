"""Training hooks: how whatever acts on a run at fixed points plugs into the Trainer.

This module is the contract between the training loop (``surgery.train.trainer``) and
what it calls: the mask methods (``surgery.pruning``), and the trainer's own ghost
timeline, best-validation selection and checkpoints (``surgery.train.ghost_schedule``,
``.selection``, ``.checkpointing``). Hooks see the trainer only through ``TrainerView``,
so ``surgery.pruning`` never imports ``surgery.train``.

GMP, RigL, ASNI, OptG and learned masks are hooks; the Trainer calls them at fixed
points and stores their state in every checkpoint, so a resumed run continues the
same mask trajectory. Every method is written against the trainer's model
(``trainer.module``: the compiled, masked, possibly ghosted GraphModule), its optimizer
and its clock (``trainer.epoch``, ``trainer.batch``, ``trainer.step``).

    setup           once, after the optimizer exists and before a checkpoint is restored:
                    add parametrizations and optimizer groups here
    on_epoch_start  before the first batch of an epoch (not when resuming mid-epoch)
    schedule_values the values the hook's own schedules take at a step (the ghosts' alpha and
                    beta), logged with that step, and with an epoch at its last step
    before_step     before the forward of each step
    loss            an extra term added to the training loss (or None)
    after_step      after ``optimizer.step()``; ``trainer.step`` is then the steps taken
    on_epoch_end    after the last batch of an epoch, before evaluation
    after_epoch     after the epoch's row is logged (``trainer.history[-1]``, evaluation
                    included), the clock at the next epoch's start; after the last epoch too,
                    before the final checkpoint: best-validation tracking, checkpoints
    on_train_end    after the last epoch and its checkpoint: leave plain ``Mask``
                    parametrizations behind
    values          values logged with every epoch (e.g. ``{"sparsity": 0.42}``)
    mask_metadata   strings stored with the final mask file (ASNI's centroids and signs)

At each point the Trainer calls the best-validation selection first (it judges an epoch
before the ghosts leave at the run's end), then the ghosts (their optimizer group comes
before any method's), the mask methods in the order given, and the checkpoints last (so a
checkpoint holds what the others did at that point).

A hook that changes ``trainer.module``'s parameters in place (the ghosts' removal) calls
``trainer.module_changed()`` afterwards, so the DDP and ``torch.compile`` wrappers are
rebuilt around the new parameters. ``trainer.state()`` is everything a checkpoint holds.

Under DDP the hooks run on every rank; a hook that changes masks calls
``trainer.dist.broadcast_masks(trainer.module)`` afterwards so every rank holds rank 0's.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class RankSync(Protocol):
    """What hooks need of the process group (``surgery.train.distributed.Distributed``)."""

    def all_mean(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def broadcast_masks(self, model: nn.Module) -> int: ...

    @property
    def is_main(self) -> bool: ...  # rank 0, or the only process

    def barrier(self) -> None: ...


class TrainerView(Protocol):
    """What hooks may read and change of the trainer (``surgery.train.trainer.Trainer``)."""

    module: nn.Module  # the compiled, masked, possibly ghosted GraphModule being trained
    optimizer: torch.optim.Optimizer
    dist: RankSync
    epochs: int
    steps_per_epoch: int
    epoch: int  # the current epoch, counted from 0 (epochs completed)
    batch: int  # batches completed in the current epoch
    step: int  # optimizer steps taken
    history: list[dict[str, Any]]  # one row per finished epoch, as logged

    def module_changed(self) -> None: ...

    def state(self) -> dict[str, Any]: ...


class TrainingHook:
    """Base class: every hook point does nothing."""

    name = "hook"
    changes_mask = True  # a hook that only reads the masks (a check) says False: best-val selection stays open

    def setup(self, trainer: TrainerView) -> None:
        pass

    def on_epoch_start(self, trainer: TrainerView) -> None:
        pass

    def schedule_values(self, step: int) -> dict[str, float | None]:
        return {}

    def before_step(self, trainer: TrainerView) -> None:
        pass

    def loss(self, trainer: TrainerView) -> torch.Tensor | None:
        return None

    def after_step(self, trainer: TrainerView) -> None:
        pass

    def on_epoch_end(self, trainer: TrainerView) -> None:
        pass

    def after_epoch(self, trainer: TrainerView) -> None:
        pass

    def on_train_end(self, trainer: TrainerView) -> None:
        pass

    def values(self) -> dict[str, Any]:
        return {}

    def mask_metadata(self) -> dict[str, str]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
