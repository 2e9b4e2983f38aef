"""Learned masks: the end-to-end pruning pipeline's pre-pruning stage (Dogariu).

Every prunable weight theta gets a mask M of the same shape, initialized to 1/2 and
trained with the weights on

    loss(f(x, theta * M), y) + lambda1 * sum M (1 - M) + lambda2 * sum M

(the first term pushes M to 0 or 1, the second towards 0) and clipped to [0, 1] after
every step. As the paper reads it, M_i is the probability of keeping theta_i: every
training forward pass samples a Bernoulli mask from M (a straight-through gradient
reaches M), and evaluation uses the expectation M. ``stochastic: false`` multiplies by M
itself, which BatchNorm after a conv makes scale-invariant, so lambda2 can shrink M at
no cost to the loss. At the end ``theta <- theta * M`` and magnitude pruning to the
target sparsity gives the mask; the post-pruning stage trains on from those weights. The
paper's lambda values did not survive in our copy of it; the defaults (1e-3 each,
per-weight gradients of that size against loss gradients of about 1e-3) are ours.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from surgery.errors import ConfigError
from surgery.hooks import TrainerView, TrainingHook
from surgery.compiler.masks import owner_of
from surgery.pruning.budget import Budget, masks_from_scores, weights_of
from surgery.pruning.registry import StageResult, register

VALUE_GROUP = "mask_values"


class _BernoulliStraightThrough(torch.autograd.Function):
    """A 0/1 sample with P(1) = M forward; the gradient passes to M as if the sample were M."""

    @staticmethod
    def forward(ctx, probabilities: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(probabilities)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class SoftMask(nn.Module):
    """Parametrization ``w -> w * M`` with a trainable M in [0, 1]: ``w * Bernoulli(M)`` in training
    when ``stochastic`` (the expectation ``w * M`` in eval mode)."""

    def __init__(self, like: torch.Tensor, stochastic: bool = True):
        super().__init__()
        self.values = nn.Parameter(torch.full_like(like, 0.5, dtype=torch.float32))
        self.stochastic = stochastic

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        m = self.values
        if self.stochastic and self.training:
            m = _BernoulliStraightThrough.apply(m)
        return weight * m.to(weight.dtype)


class LearnedMaskHook(TrainingHook):
    name = "learned_mask"

    def __init__(self, names: list[str], *, lambda1: float = 1e-3, lambda2: float = 1e-3, stochastic: bool = True):
        for option, value in (("lambda1", lambda1), ("lambda2", lambda2)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"learned mask option {option}={value!r} is out of range: it is a penalty weight, a finite "
                    "number >= 0 (e.g. 1e-3)."
                )
        if not isinstance(stochastic, bool):
            raise ConfigError(
                f"learned mask option stochastic={stochastic!r} must be true (sample M every training forward, the "
                "paper's reading) or false (multiply by M itself)."
            )
        self.names, self.lambda1, self.lambda2, self.stochastic = list(names), lambda1, lambda2, stochastic
        self.soft: dict[str, SoftMask] = {}

    def setup(self, trainer: TrainerView) -> None:
        for name in self.names:
            module, attr = owner_of(trainer.module, name)
            if parametrize.is_parametrized(module, attr):
                raise ConfigError(f"learned masks train on an unmasked model, but '{name}' is masked already; drop mask.file.")
            soft = SoftMask(getattr(module, attr).detach(), self.stochastic)
            parametrize.register_parametrization(module, attr, soft)
            self.soft[name] = soft
        trainer.optimizer.add_param_group({"params": [s.values for s in self.soft.values()], "name": VALUE_GROUP,
                                           "weight_decay": 0.0})

    def loss(self, trainer: TrainerView) -> torch.Tensor:
        values = [s.values for s in self.soft.values()]
        binary = sum((m * (1 - m)).sum() for m in values)
        return self.lambda1 * binary + self.lambda2 * sum(m.sum() for m in values)

    @torch.no_grad()
    def after_step(self, trainer: TrainerView) -> None:
        for soft in self.soft.values():
            soft.values.clamp_(0.0, 1.0)

    @torch.no_grad()
    def on_train_end(self, trainer: TrainerView) -> None:
        """theta <- theta * M: the mask folds into the weights, which become plain parameters again."""
        group = next(g for g in trainer.optimizer.param_groups if g.get("name") == VALUE_GROUP)
        for p in group["params"]:
            trainer.optimizer.state.pop(p, None)
        trainer.optimizer.param_groups.remove(group)
        for name, soft in self.soft.items():
            soft.stochastic = False  # fold M itself, not a sample of it
            module, attr = owner_of(trainer.module, name)
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)

    def values(self) -> dict[str, Any]:
        if not self.soft:
            return {}
        total = sum(s.values.numel() for s in self.soft.values())
        return {"mask_mean": float(sum(s.values.detach().sum() for s in self.soft.values()) / total)}


@register("learned", stage="before", scope="global", about="the pipeline's learned mask: soft mask + penalties, fold, magnitude prune")
def learned_masks(model: nn.Module, names: list[str], budget: Budget, *, train, seed: int = 0, **options: Any) -> StageResult:
    """Train with soft masks (``train`` is the pipeline's round runner), fold them, prune by magnitude."""
    hook = LearnedMaskHook(names, **options)
    result = train(model, None, tag="learned-mask", hooks=[hook])
    folded = weights_of(result.model, names)
    masks = masks_from_scores({n: w.detach().abs() for n, w in folded.items()}, budget)
    state = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
    for name, mask in masks.items():
        state[name] = state[name] * mask
    final = result.history[-1] if result.history else {}
    rounds = [{"round": 1, "trained_sparsity": 0.0, "accuracy": final.get("test_acc"), "sparsity": 1 - _density(masks)}]
    return StageResult(masks, state, rounds)


def _density(masks: dict[str, torch.Tensor]) -> float:
    return sum(int(m.count_nonzero()) for m in masks.values()) / sum(m.numel() for m in masks.values())
