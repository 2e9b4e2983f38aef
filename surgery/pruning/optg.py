"""OptG: optimizing gradient-driven criteria in network sparsity (Zhang et al.).

Every masked weight gets a supermask score m^ (initialized to 0), trained by the same
SGD through a straight-through estimator: the forward uses ``w * m`` with the binary
mask m fixed, and the score's gradient is dL/d(w * m) * w at every position, kept and
pruned alike (Eq. 10), so a pruned weight whose return would lower the loss gains
score. The binary mask is recomputed from a global top-k of the scores only at the
start of each epoch k (the gradients accumulate in between), at the sparsity

    P_k = P / (1 + exp(-alpha (k - 0.5 tau)))            (Eq. 16)

with the scores' learning rate eta_m,k = eta_w,k / (1 + exp(-alpha (k - 0.5 tau)))
(Eq. 17), alpha = 0.5 and tau the number of epochs. Global sorting sets the layer
budgets: as in the official code (``set_model``), a weight is pruned when its score is
below the score at rank (1 - P_k) N, so ties at that threshold are kept; the all-zero
initial scores therefore start the run dense rather than cutting arbitrary tied layers
away. Pruned weights keep their stored values while OptG runs (a revived weight returns
with its value, as the paper's Eq. 11 assumes; weight decay still shrinks them, as in the
official code); at the end the mask is set to exactly P from the scores, the pruned
weights become zero and plain masks remain.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from surgery.errors import ConfigError
from surgery.hooks import TrainerView
from surgery.compiler.masks import Mask, owner_of
from surgery.pruning.budget import Budget, masks_from_scores
from surgery.pruning.dynamic import MaskHook, clear_optimizer_state
from surgery.pruning.registry import register

SCORE_GROUP = "mask_scores"


def ramp(epoch: int, epochs: int, alpha: float = 0.5) -> float:
    """1 / (1 + exp(-alpha (k - 0.5 tau))): the factor of Eq. 16 and 17 at epoch k (1-based)."""
    return 1.0 / (1.0 + math.exp(-alpha * (epoch - 0.5 * epochs)))


def optg_sparsity(epoch: int, epochs: int, target: float, alpha: float = 0.5) -> float:
    """P_k of Eq. 16."""
    return target * ramp(epoch, epochs, alpha)


class _StraightThrough(torch.autograd.Function):
    """``w * mask`` forward; the score takes the gradient the mask would have: dL/d(w * mask) * w."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, mask = ctx.saved_tensors
        return grad * mask, None, (grad * weight).to(torch.float32)


class Supermask(Mask):
    """A Mask with a trainable score per weight (straight-through); bakes like any Mask."""

    def __init__(self, mask: torch.Tensor, order: tuple[str, ...] = ()):
        super().__init__(mask, order)
        self.scores = nn.Parameter(torch.zeros(mask.shape, dtype=torch.float32, device=mask.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(weight, self.mask, self.scores)


class OptGHook(MaskHook):
    name = "optg"

    def __init__(self, names: list[str], budget: Budget, *, alpha: float = 0.5):
        super().__init__(names, Budget(budget.sparsity, "global"))
        if alpha <= 0:
            raise ConfigError(f"optg alpha={alpha} must be > 0 (the paper uses 0.5 in every experiment).")
        self.alpha = alpha

    def setup(self, trainer: TrainerView) -> None:
        super().setup(trainer)
        for name, (mask, original) in list(self.masks.items()):
            plist = _parametrization_list(trainer.module, name)
            if not isinstance(plist[0], Supermask):
                plist[0] = Supermask(mask.mask, mask.order)
            self.masks[name] = (plist[0], original)
        scores = [m.scores for m, _ in self.masks.values()]
        trainer.optimizer.add_param_group({"params": scores, "name": SCORE_GROUP, "weight_decay": 0.0,
                                           "lr_scale": ramp(1, trainer.epochs, self.alpha)})

    def on_epoch_start(self, trainer: TrainerView) -> None:
        k = trainer.epoch + 1
        self._score_group(trainer)["lr_scale"] = ramp(k, trainer.epochs, self.alpha)
        self.apply_from_scores(trainer, optg_sparsity(k, trainer.epochs, self.budget.sparsity, self.alpha))

    @torch.no_grad()
    def apply_from_scores(self, trainer: TrainerView, sparsity: float, exact: bool = False) -> None:
        """The binary masks at ``sparsity`` from a global ranking of the scores; weights keep their values.
        Ties at the threshold are kept (the official rule) unless ``exact`` asks for exactly ``sparsity``."""
        scores = {n: m.scores for n, (m, _) in self.masks.items()}
        new = masks_from_scores(scores, Budget(sparsity, "global")) if exact else threshold_masks(scores, sparsity)
        for name, mask in new.items():
            self.masks[name][0].mask.copy_(mask.to(self.masks[name][0].mask.device))
        trainer.dist.broadcast_masks(trainer.module)

    @torch.no_grad()
    def on_train_end(self, trainer: TrainerView) -> None:
        self.apply_from_scores(trainer, self.budget.sparsity, exact=True)
        for name, (supermask, original) in list(self.masks.items()):
            plist = _parametrization_list(trainer.module, name)
            plain = Mask(supermask.mask, supermask.order)
            plist[0] = plain
            original.mul_(plain.mask)
            clear_optimizer_state(trainer.optimizer, original, ~plain.mask)
            self.masks[name] = (plain, original)
        group = self._score_group(trainer)
        for p in group["params"]:
            trainer.optimizer.state.pop(p, None)
        trainer.optimizer.param_groups.remove(group)

    def _score_group(self, trainer: TrainerView) -> dict[str, Any]:
        return next(g for g in trainer.optimizer.param_groups if g.get("name") == SCORE_GROUP)

    def values(self) -> dict[str, Any]:
        return {"optg_sparsity": self.sparsity()} if self.masks else {}


def threshold_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep every score >= the one at rank ``(1 - sparsity) * N`` of all scores (ties kept: at most ``sparsity``)."""
    flat = torch.cat([s.detach().float().flatten().cpu() for s in scores.values()])
    keep = int((1 - sparsity) * flat.numel())
    if keep >= flat.numel():
        return {n: torch.ones(s.shape, dtype=torch.bool) for n, s in scores.items()}
    threshold = torch.topk(flat, max(keep, 1)).values.min()
    return {n: s.detach().float().cpu() >= threshold for n, s in scores.items()}


def _parametrization_list(model: nn.Module, name: str):
    module, attr = owner_of(model, name)
    return module.parametrizations[attr]


@register("optg", stage="during", scope="global", global_only=True, about="OptG: supermask scores with straight-through gradients, sigmoid sparsity ramp")
def optg_hook(model, names: list[str], budget: Budget, **options: Any) -> OptGHook:
    return OptGHook(names, budget, **options)
