"""The ghosts on the trainer's timeline, as a training hook: alpha and beta every step, then their removal.

``GhostSchedule`` drives ``surgery.compiler.timeline.GhostTimeline``, the piece ``surgery.ToST``
drives in a user's own loop. Before each step it sets alpha and beta for that step (pure
functions of the step, so a resumed run computes what an uninterrupted one would). The ghosts
leave at the start of the removal epoch (by default the first LR decay), after that boundary's
checkpoint, so a run resumed from it replays the removal; a removal at the run's very end comes
before the final checkpoint. The removal strips them in place (``deghost(inplace=True)``): the
ghost parameter group leaves the optimizer, every other parameter keeps its identity and its
momentum, and the trainer rebuilds its DDP / compiled wrappers. Masks stay attached.
"""

from __future__ import annotations

from typing import Any

from surgery.compiler.ghosts import ghosts
from surgery.compiler.schedules import GhostPlan, LRSchedule
from surgery.compiler.timeline import GhostTimeline
from surgery.hooks import TrainerView, TrainingHook


class GhostSchedule(TrainingHook):
    name = "ghosts"
    changes_mask = False  # it changes the architecture, not the mask: BestValidation asks holds_final_model

    def __init__(self, plan: GhostPlan, lr_plan: LRSchedule):
        self.plan, self.lr_plan = plan, lr_plan
        self.ghosted_at_start = False
        self.removal_epoch: int | None = None  # the ghosts leave after this many epochs (None: never, or no ghosts)
        self.removed_at: tuple[int, int] | None = None  # (step, epoch) when they left
        self.timeline: GhostTimeline | None = None

    def setup(self, trainer: TrainerView) -> None:
        """Before any other hook's: the ghost parameters get their optimizer group before a method adds its own."""
        self.ghosted_at_start = bool(ghosts(trainer.module))
        if self.ghosted_at_start:
            self.removal_epoch = self.plan.removal_epoch(self.lr_plan, trainer.epochs)
        removal_step = None if self.removal_epoch is None else self.removal_epoch * trainer.steps_per_epoch
        self.timeline = GhostTimeline(trainer.module, self.plan, removal_step, trainer.steps_per_epoch)
        self.timeline.attach(trainer.optimizer)

    @property
    def ghosted(self) -> bool:
        return self.timeline.ghosted

    @property
    def holds_final_model(self) -> bool:
        """The model now is the architecture the run ends with: no ghosts, or ghosts that stay."""
        return not self.ghosted or self.removal_epoch is None

    def schedule_values(self, step: int) -> dict[str, float | None]:
        return self.timeline.strength(step)

    def before_step(self, trainer: TrainerView) -> None:
        self.timeline.apply(trainer.step)

    def on_epoch_start(self, trainer: TrainerView) -> None:
        self._remove_when_due(trainer)  # the removal step is an epoch boundary

    def after_epoch(self, trainer: TrainerView) -> None:
        if trainer.epoch == trainer.epochs:  # removal scheduled at the very end: before the final checkpoint
            self._remove_when_due(trainer)

    def _remove_when_due(self, trainer: TrainerView) -> None:
        if self.timeline.due(trainer.step):
            self.remove(trainer)

    def remove(self, trainer: TrainerView) -> None:
        """Strip every ghost in place; the ghost group leaves the optimizer, the rest keeps its state."""
        self.timeline.remove()
        trainer.module_changed()
        self.removed_at = (trainer.step, trainer.epoch)

    def values(self) -> dict[str, Any]:
        return {"ghosts": "on" if self.ghosted else ("removed" if self.ghosted_at_start else "none")}

    def state_dict(self) -> dict[str, Any]:
        return {"deghosted": self.ghosted_at_start and not self.ghosted, "ghosts_removed_at": self.removed_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Before the model's weights: a checkpoint saved without ghosts loads into a model without them
        (the trainer rebuilds its wrappers after a restore)."""
        if state["deghosted"] and self.ghosted:
            self.timeline.remove()
        removed = state.get("ghosts_removed_at")
        self.removed_at = tuple(removed) if removed is not None else None
