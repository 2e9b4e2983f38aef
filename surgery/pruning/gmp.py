"""GMP: gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", 2017).

From a dense start, every ``every`` steps between ``start`` and ``end`` (fractions of
the run) the smallest-magnitude weights are pruned to the cubic schedule

    s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n dt))^3,    t in {t_0, t_0 + dt, ..., t_0 + n dt}

from ``s_i = initial`` to the target ``s_f``; pruned weights never come back. Layer-wise
(every layer at s_t) by default, as in the paper; ``scope: global`` ranks all layers.
"""

from __future__ import annotations

from typing import Any

from surgery.errors import ConfigError
from surgery.hooks import TrainerView
from surgery.pruning.budget import Budget
from surgery.pruning.dynamic import MaskHook, steps_in
from surgery.pruning.registry import register


def cubic_sparsity(step: int, *, start: int, end: int, every: int, initial: float, final: float) -> float:
    """Zhu & Gupta's s_t at optimizer step ``step``: constant between pruning steps, final after ``end``."""
    if step < start:
        return initial
    span = max(end - start, 1)
    t = min(step - start, span)
    t -= t % max(every, 1)  # the schedule moves only at the pruning steps t_0 + k dt
    if step >= end:
        t = span
    return final + (initial - final) * (1 - t / span) ** 3


class GMPHook(MaskHook):
    name = "gmp"

    def __init__(self, names: list[str], budget: Budget, *, start: float = 0.1, end: float = 0.75,
                 every: int = 100, initial: float = 0.0):
        super().__init__(names, budget)
        if not 0.0 <= start < end <= 1.0:
            raise ConfigError(f"gmp start {start} and end {end} are fractions of the run with 0 <= start < end <= 1, e.g. 0.1 and 0.75.")
        if every < 1:
            raise ConfigError(f"gmp every={every}: prune every N >= 1 optimizer steps (Zhu & Gupta use 100-1000).")
        if not 0.0 <= initial <= budget.sparsity:
            raise ConfigError(f"gmp initial sparsity {initial} must lie in [0, target {budget.sparsity}].")
        self.start, self.end, self.every, self.initial = start, end, every, initial

    def schedule(self, trainer: TrainerView) -> dict[str, int]:
        total = trainer.epochs * trainer.steps_per_epoch
        return {"start": steps_in(trainer, self.start * trainer.epochs), "end": max(int(self.end * total), 1),
                "every": self.every}

    def target(self, trainer: TrainerView, step: int) -> float:
        return cubic_sparsity(step, **self.schedule(trainer), initial=self.initial, final=self.budget.sparsity)

    def after_step(self, trainer: TrainerView) -> None:
        plan = self.schedule(trainer)
        step = trainer.step
        due = plan["start"] <= step and ((step - plan["start"]) % plan["every"] == 0 or step == plan["end"])
        if due and step <= plan["end"]:
            self.apply(trainer, self.magnitude_masks(self.target(trainer, step)))

    def on_train_end(self, trainer: TrainerView) -> None:
        if self.sparsity() < self.budget.sparsity - 1e-6:  # a run shorter than the schedule: finish it
            self.apply(trainer, self.magnitude_masks(self.budget.sparsity))

    def values(self) -> dict[str, Any]:
        return {"gmp_sparsity": self.sparsity()} if self.masks else {}


@register("gmp", stage="during", scope="layer", about="gradual magnitude pruning, Zhu & Gupta's cubic schedule")
def gmp_hook(model, names: list[str], budget: Budget, **options: Any) -> GMPHook:
    return GMPHook(names, budget, **options)
