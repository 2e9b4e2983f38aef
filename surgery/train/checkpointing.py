"""Checkpoints on the trainer's timeline, as a training hook: when they are written and what they hold.

``Checkpointing`` writes one every ``train.checkpoint_every`` epochs, one after the last epoch,
and one when a signal stops the run (the trainer asks: ``save``, after the current step). Each
holds the trainer's whole state (``trainer.state()``: model, optimizer, clocks, RNG, every hook's
state) and the run's config, which a resume must match. Rank 0 writes; every rank waits for it.
The files themselves (atomic writes, integrity index, pruning) are ``CheckpointStore``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from surgery.hooks import TrainerView, TrainingHook
from surgery.train.checkpoint import CheckpointStore, load_checkpoint
from surgery.train.config import check_resumable

CHECKPOINT_FORMAT = 1


class Checkpointing(TrainingHook):
    name = "checkpoints"
    changes_mask = False

    def __init__(self, directory: Path, run_config: Mapping[str, Any], *, every: int, keep: int):
        self.store = CheckpointStore(directory, keep=keep)
        self.run_config, self.every = run_config, every
        self.saved: Path | None = None  # the latest checkpoint this process wrote

    def after_epoch(self, trainer: TrainerView) -> None:
        if trainer.epoch == trainer.epochs or (self.every and trainer.epoch % self.every == 0):
            self.save(trainer)

    def save(self, trainer: TrainerView) -> Path | None:
        """Write the trainer's state now (rank 0); the path on rank 0, None on the others."""
        self.saved = None
        if trainer.dist.is_main:
            state = {"format": CHECKPOINT_FORMAT, "config": dict(self.run_config), **trainer.state()}
            self.saved = self.store.save(state, epoch=trainer.epoch, step=trainer.step)
        trainer.dist.barrier()
        return self.saved

    def load(self, resume: bool | str | Path) -> tuple[dict[str, Any], Path]:
        """The state and path of ``resume``: True (this run's latest good checkpoint) or a file."""
        if resume is True:
            return self.store.load_latest()
        return load_checkpoint(resume), Path(resume)

    def check(self, state: Mapping[str, Any], path: Path) -> None:
        """Refuse a checkpoint written with another config (every differing field listed)."""
        check_resumable(state.get("config", {}), self.run_config, path)

    def latest(self) -> Path | None:
        return self.store.latest()
