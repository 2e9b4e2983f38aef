"""ASNI: the Amenable Sparse Network Investigator (Damadi et al.).

One training run from dense: after every epoch e (1..E) all prunable weights are pruned
globally by magnitude to

    p_e = alpha * sigmoid((e - beta * E) / gamma)

(pruned weights stay pruned: they are zero and their gradient is masked), under ASNI's
cosine learning rate, stretched by delta (``surgery.compiler.schedules.LRSchedule``; ``lr_schedule: {kind: cosine,
delta: 0.06}``). ``alpha`` defaults to the value that makes p_E exactly the target
sparsity; the paper's CIFAR runs use beta = 0.5 and gamma = 16 for 160 epochs, so gamma
defaults to E / 10. At the end the learned sparse network yields ASNI's initialization:
per layer the mean of its kept positive weights c+ and of its kept negative ones c-
(``surgery.init.centroid``), 2L numbers exported with the mask.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from surgery.errors import ConfigError
from surgery.hooks import TrainerView
from surgery.init.centroid import centroids, centroids_to_metadata, signs, signs_to_metadata
from surgery.pruning.budget import Budget
from surgery.pruning.dynamic import MaskHook
from surgery.pruning.registry import register


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def asni_sparsity(epoch: int, epochs: int, *, alpha: float, beta: float = 0.5, gamma: float) -> float:
    """p_e = alpha sigmoid((e - beta E) / gamma) for epoch ``epoch`` in 1..E."""
    return alpha * sigmoid((epoch - beta * epochs) / gamma)


def alpha_for(target: float, epochs: int, *, beta: float, gamma: float) -> float:
    """The alpha whose schedule ends exactly at ``target`` after the last epoch."""
    return target / sigmoid((epochs - beta * epochs) / gamma)


class ASNIHook(MaskHook):
    name = "asni"

    def __init__(self, names: list[str], budget: Budget, *, alpha: float | None = None, beta: float = 0.5,
                 gamma: float | None = None):
        super().__init__(names, Budget(budget.sparsity, "global"))
        if gamma is not None and gamma <= 0:
            raise ConfigError(f"asni gamma={gamma} must be > 0: it sets how fast pruning happens (the paper: 16 for 160 epochs).")
        if alpha is not None and not 0.0 < alpha < 1.0:
            raise ConfigError(f"asni alpha={alpha} is the final sparsity scale, a fraction in (0, 1) (e.g. 0.97), or omit it.")
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.centroids: dict[str, tuple[float, float]] = {}
        self.signs: dict[str, torch.Tensor] = {}
        self.kept: dict[str, torch.Tensor] = {}

    def plan(self, epochs: int) -> dict[str, float]:
        gamma = self.gamma if self.gamma is not None else epochs / 10
        alpha = self.alpha if self.alpha is not None else alpha_for(self.budget.sparsity, epochs, beta=self.beta, gamma=gamma)
        if alpha >= 1.0:
            raise ConfigError(
                f"asni cannot reach sparsity {self.budget.sparsity} in {epochs} epochs with beta={self.beta}, "
                f"gamma={gamma}: alpha would be {alpha:.3f} >= 1; lower gamma or beta, or train longer."
            )
        return {"alpha": alpha, "beta": self.beta, "gamma": gamma}

    def target(self, epoch: int, epochs: int) -> float:
        return asni_sparsity(epoch, epochs, **self.plan(epochs))

    def setup(self, trainer: TrainerView) -> None:
        super().setup(trainer)
        self.plan(trainer.epochs)  # a bad plan fails before the first epoch, not after it

    def on_epoch_end(self, trainer: TrainerView) -> None:
        self.apply(trainer, self.magnitude_masks(self.target(trainer.epoch + 1, trainer.epochs)))

    def on_train_end(self, trainer: TrainerView) -> None:
        weights = self.effective()
        masks = {n: m.mask & (weights[n] != 0) for n, (m, _) in self.masks.items()}
        self.apply(trainer, masks)  # a kept weight of exactly 0 has no sign: it is pruned (it already acts so)
        self.centroids = centroids(weights, masks)
        self.signs = signs(weights, masks)
        self.kept = masks

    def mask_metadata(self) -> dict[str, str]:
        """The 2L centroids and the kept weights' signs: what ``init: {centroids: true}`` starts from."""
        if not self.centroids:
            return {}
        return {**centroids_to_metadata(self.centroids), **signs_to_metadata(self.signs, self.kept)}

    def values(self) -> dict[str, Any]:
        return {"asni_sparsity": self.sparsity()} if self.masks else {}


@register("asni", stage="during", scope="global", global_only=True, about="ASNI: sigmoid-scheduled global magnitude pruning, then 2L centroids")
def asni_hook(model, names: list[str], budget: Budget, **options: Any) -> ASNIHook:
    return ASNIHook(names, budget, **options)
