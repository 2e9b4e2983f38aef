"""Training hooks: how a method that changes the mask while training plugs into the Trainer.

GMP, RigL, ASNI, OptG and learned masks are hooks; the Trainer calls them at fixed
points and stores their state in every checkpoint, so a resumed run continues the
same mask trajectory. Every method is written against the trainer's model
(``trainer.module``: the compiled, masked, possibly ghosted GraphModule), its optimizer
and its clock (``trainer.epoch``, ``trainer.batch``, ``trainer.step``).

    setup           once, after the optimizer exists and before a checkpoint is restored:
                    add parametrizations and optimizer groups here
    on_epoch_start  before the first batch of an epoch (not when resuming mid-epoch)
    before_step     before the forward of each step
    loss            an extra term added to the training loss (or None)
    after_step      after ``optimizer.step()``; ``trainer.step`` is then the steps taken
    on_epoch_end    after the last batch of an epoch, before evaluation
    on_train_end    after the last epoch: leave plain ``Mask`` parametrizations behind
    values          numbers logged with every epoch (e.g. ``{"sparsity": 0.42}``)
    mask_metadata   strings stored with the final mask file (ASNI's centroids and signs)

Under DDP the hooks run on every rank; a hook that changes masks calls
``trainer.dist.broadcast_masks(trainer.module)`` afterwards so every rank holds rank 0's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from surgery.train.trainer import Trainer


class TrainingHook:
    """Base class: every hook point does nothing."""

    name = "hook"

    def setup(self, trainer: Trainer) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer) -> None:
        pass

    def before_step(self, trainer: Trainer) -> None:
        pass

    def loss(self, trainer: Trainer) -> torch.Tensor | None:
        return None

    def after_step(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer) -> None:
        pass

    def on_train_end(self, trainer: Trainer) -> None:
        pass

    def values(self) -> dict[str, float]:
        return {}

    def mask_metadata(self) -> dict[str, str]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
