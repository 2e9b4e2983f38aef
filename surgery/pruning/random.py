"""Random masks: each layer keeps a uniformly random subset of its weights, sized by the budget
(``uniform``: ``1 - sparsity`` of every layer; ``erk``: Erdos-Renyi-Kernel densities)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from surgery.compiler.masks import prunable_weights
from surgery.pruning.budget import Budget, weights_of
from surgery.pruning.registry import METHODS, register


@register("random", scope="layer", about="uniformly random weights per layer (uniform or ERK layer budgets)")
def score_random(model: nn.Module, names: list[str], *, seed: int = 0, **_) -> dict[str, torch.Tensor]:
    """Uniform random scores under ``seed``: ranked per layer, a uniformly random subset of exactly the budgeted size."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w.shape, generator=generator) for name, w in weights_of(model, names).items()}


def random_masks(
    model: nn.Module,
    sparsity: float,
    *,
    seed: int = 0,
    prunable: Iterable[str] = ("conv", "linear"),
    distribution: str = "uniform",
) -> dict[str, torch.Tensor]:
    """Layer-wise random masks; exactly ``round(density_l * numel)`` weights kept per layer.

    Deterministic under ``seed``; works for models on the meta device (masks are on CPU).
    """
    budget = Budget(sparsity, "layer", distribution)
    names = list(prunable_weights(model, prunable))  # no prunable weight: no masks (not an error here)
    return METHODS["random"].find(model, names, budget, seed=seed) if names else {}

