"""Best-validation selection, as a training hook: which epoch's weights a run ends with (``train.select``).

``auto`` and ``best_val`` pick the epoch with the best validation accuracy when the run has a
``val`` split; ``last`` (or no ``val`` split) keeps the last epoch's. Only epochs whose model is
the one the run ends with compete: after the ghosts left (or all of them, when the ghosts stay),
and none while a mask method runs. ``best_val`` with a method that changes the mask is refused
(its paper reports the last epoch); ``auto`` then keeps the last epoch. The best epoch is
remembered even when its weights are not kept: the record reports its test accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from surgery.errors import ConfigError
from surgery.hooks import TrainerView, TrainingHook
from surgery.train.ghost_schedule import GhostSchedule

LAST, BEST_VAL = "last", "best_val"


class BestValidation(TrainingHook):
    name = "best_val"
    changes_mask = False

    def __init__(self, select: str, *, validated: bool, mask_hooks: Sequence[TrainingHook], ghosts: GhostSchedule):
        """``validated``: the run evaluates a ``val`` split; ``mask_hooks``: the mask methods it runs."""
        self.keep = keeps_best_weights(select, validated, mask_hooks)
        self.mask_methods, self.ghosts = bool(mask_hooks), ghosts
        self.best: dict[str, Any] | None = None  # {epoch, val_acc, test_acc} of the best eligible epoch
        self.best_state: dict[str, torch.Tensor] | None = None  # its weights (only when they become the result)
        self.selected = LAST  # whose weights the model holds after training

    def after_epoch(self, trainer: TrainerView) -> None:
        """Remember the epoch with the best validation accuracy among those that end as the final model
        (before the ghosts' removal at the run's end: this hook comes first)."""
        row = trainer.history[-1]
        val = row.get("val_acc")
        final_structure = not self.mask_methods and self.ghosts.holds_final_model
        if val is None or not final_structure or (self.best is not None and val <= self.best["val_acc"]):
            return
        self.best = {"epoch": row["epoch"], "val_acc": val, "test_acc": row.get("test_acc")}
        if self.keep:
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in trainer.module.state_dict().items()}

    def on_train_end(self, trainer: TrainerView) -> None:
        """Load the best-validation weights into the model when they are the run's result."""
        if not (self.keep and self.best_state is not None):
            return
        if self.best["epoch"] != trainer.epochs:
            trainer.module.load_state_dict(self.best_state)
        self.selected = BEST_VAL

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_state = state.get("best"), state.get("best_state")


def keeps_best_weights(select: str, validated: bool, mask_hooks: Sequence[TrainingHook]) -> bool:
    """Whether the best-validation epoch's weights become the result; refuses ``best_val`` with a changing mask."""
    if select == LAST or not validated:
        return False
    changing = [hook.name for hook in mask_hooks if hook.changes_mask]
    if changing:
        if select == BEST_VAL:
            raise ConfigError(
                f"train.select: best_val needs a fixed mask, but {', '.join(changing)} changes "
                "the mask during training (its paper reports the last epoch); use train.select: last."
            )
        return False
    return True
