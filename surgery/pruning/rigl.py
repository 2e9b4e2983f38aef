"""RigL: rigging the lottery (Evci et al., 2020): a sparse network that rewires while it trains.

The run starts from a random mask at the target sparsity (ERK layer budgets by default,
as in the paper). Every ``every`` steps until ``end`` (a fraction of the run) each layer
drops the ``f_t`` fraction of its kept weights with the smallest magnitude and grows
as many connections with the largest dense gradient |dL/dw| among those inactive after the
drop (RigL's Algorithm 1 and its official ``_get_update_op``), so every layer keeps its
count. ``f_t = fraction / 2 * (1 + cos(pi t / T_end))`` decays to 0; newly grown weights
start at zero; a weight dropped and regrown in the same update keeps its value, as in the
official code's default. The dense gradient is the gradient of the masked weight
``w * mask`` at every position, captured only on update steps (``Mask.capture_grad``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from surgery.errors import ConfigError
from surgery.hooks import TrainerView
from surgery.pruning.budget import Budget
from surgery.pruning.dynamic import MaskHook
from surgery.pruning.registry import register


def update_fraction(step: int, end: int, fraction: float) -> float:
    """RigL's cosine-decayed drop/grow fraction at ``step`` (0 from ``end`` on)."""
    if step >= end:
        return 0.0
    return fraction / 2 * (1 + math.cos(math.pi * step / end))


def drop_and_grow(mask: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, fraction: float) -> torch.Tensor:
    """One layer's update: drop the weakest ``fraction`` of kept weights, grow as many by |grad|."""
    kept = int(mask.count_nonzero())
    k = min(int(fraction * kept), mask.numel() - kept)  # a dense layer has nothing to grow into
    if k == 0:
        return mask
    flat_mask = mask.flatten()
    magnitude = torch.where(flat_mask, weight.abs().flatten(), torch.inf)
    dropped = torch.topk(magnitude, k, largest=False).indices
    updated = flat_mask.clone()
    updated[dropped] = False
    growth = torch.where(updated, -torch.inf, grad.abs().flatten().float())  # inactive after the drop
    grown = torch.topk(growth, k).indices
    updated[grown] = True
    return updated.view_as(mask)


class RigLHook(MaskHook):
    name = "rigl"

    def __init__(self, names: list[str], budget: Budget, *, every: int = 100, end: float = 0.75, fraction: float = 0.3):
        super().__init__(names, budget)
        if every < 1 or not 0.0 < end <= 1.0 or not 0.0 < fraction < 1.0:
            raise ConfigError(
                f"rigl every={every}, end={end}, fraction={fraction}: update every N >= 1 steps, until a fraction "
                "0 < end <= 1 of the run, changing 0 < fraction < 1 of each layer (the paper: 100, 0.75, 0.3)."
            )
        self.every, self.end, self.fraction = every, end, fraction
        self.updates = 0

    def end_step(self, trainer: TrainerView) -> int:
        return max(int(self.end * trainer.epochs * trainer.steps_per_epoch), 1)

    def _due(self, trainer: TrainerView, step: int) -> bool:
        return step > 0 and step % self.every == 0 and step < self.end_step(trainer)

    def before_step(self, trainer: TrainerView) -> None:
        capture = self._due(trainer, trainer.step + 1)  # this step's backward feeds the update after it
        for mask, _ in self.masks.values():
            mask.capture_grad, mask.dense_grad = capture, None

    @torch.no_grad()
    def after_step(self, trainer: TrainerView) -> None:
        if not self._due(trainer, trainer.step):
            return
        fraction = update_fraction(trainer.step, self.end_step(trainer), self.fraction)
        new = {}
        for name, (mask, original) in self.masks.items():
            grad = mask.dense_grad
            if grad is None:
                continue  # the weight took no part in this step's forward
            new[name] = drop_and_grow(mask.mask, original * mask.mask, trainer.dist.all_mean(grad), fraction)
            mask.capture_grad, mask.dense_grad = False, None
        self.apply(trainer, new)
        self.updates += 1

    def values(self) -> dict[str, Any]:
        return {"rigl_updates": self.updates}

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))


@register("rigl", stage="during", scope="layer", distribution="erk", about="RigL: drop by magnitude, grow by gradient, from an ERK random start")
def rigl_hook(model, names: list[str], budget: Budget, **options: Any) -> RigLHook:
    return RigLHook(names, budget, **options)
