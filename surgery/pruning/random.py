"""Random masks: each prunable weight keeps a uniformly random ``1 - sparsity`` of its entries."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from surgery.errors import MaskError
from surgery.masks import prunable_weights


def random_masks(
    model: nn.Module, sparsity: float, *, seed: int = 0, prunable: Iterable[str] = ("conv", "linear")
) -> dict[str, torch.Tensor]:
    """Layer-wise uniform random masks; exactly ``round(sparsity * numel)`` zeros per weight.

    Deterministic under ``seed``; works for models on the meta device (masks are on CPU).
    """
    if not 0.0 <= sparsity < 1.0:
        raise MaskError(f"sparsity {sparsity} is outside [0, 1): give the fraction of weights to prune, e.g. 0.9.")
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, weight in prunable_weights(model, prunable).items():
        numel = weight.numel()
        pruned = torch.randperm(numel, generator=generator)[: round(sparsity * numel)]
        mask = torch.ones(numel, dtype=torch.bool)
        mask[pruned] = False
        masks[name] = mask.view(weight.shape)
    return masks
