"""How many weights each layer keeps, and which: scores in, bool masks out.

Every one-shot method scores each weight (higher = keep) and the registry hands the scores
to ``masks_from_scores`` (``registry.scored_masks``); the methods that train rank with it at
their own steps (GMP, RigL, ASNI, IMP, learned masks, OptG). So budgets behave the same for every method:

- ``scope: global`` keeps the ``round((1 - s) * N)`` highest scores over all layers
  together (the layer-wise budget falls out of the ranking, as OptG and ASNI want);
- ``scope: layer`` keeps ``max(1, round((1 - s_l) * n_l))`` per layer, where ``s_l`` comes
  from the ``distribution``: ``uniform`` (every layer at ``s``) or ``erk`` (Erdos-Renyi-Kernel,
  Evci et al.: density proportional to sum(shape) / prod(shape), rescaled to the target,
  layers that would pass density 1 made dense and the rest rescaled again). The floor of 1
  is why a layer-wise budget never empties a layer (a global ranking can: ``collapse.py``).

Counts are exact: a layer-wise mask misses its target by less than one weight, a global
one misses the overall target by less than one weight. Ties are broken by position
(``torch.topk`` on CPU is deterministic), so a finder is deterministic under its seed.

``prunable_for(model, ...)`` picks the weights to mask: conv and linear weights by
default, optionally leaving the first and / or the last prunable layer dense (they hold
few parameters and matter most; many papers keep them dense) and any weight an
``exclude`` pattern matches (fnmatch over parameter names, e.g. ``layer4.*``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from surgery.errors import MaskError, did_you_mean
from surgery.compiler.masks import owner_of, prunable_weights

SCOPES = ("global", "layer")
DISTRIBUTIONS = ("uniform", "erk")


@dataclass(frozen=True)
class Budget:
    """The target: overall ``sparsity`` in [0, 1), ranked ``global``ly or per ``layer``."""

    sparsity: float
    scope: str = "layer"
    distribution: str = "uniform"

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.scope not in SCOPES:
            raise MaskError(f"unknown budget scope '{self.scope}'." + did_you_mean(self.scope, SCOPES) + f" Known: {list(SCOPES)}.")
        if self.distribution not in DISTRIBUTIONS:
            raise MaskError(
                f"unknown layer-wise distribution '{self.distribution}'." + did_you_mean(self.distribution, DISTRIBUTIONS)
                + f" Known: {list(DISTRIBUTIONS)}."
            )
        if self.scope == "global" and self.distribution != "uniform":
            raise MaskError(
                f"distribution '{self.distribution}' sets per-layer budgets, but scope 'global' ranks all layers "
                "together; use scope: layer with it, or drop the distribution."
            )


def check_sparsity(sparsity: float) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise MaskError(f"sparsity {sparsity!r} is outside [0, 1): give the fraction of weights to prune, e.g. 0.9.")


# ------------------------------------------------------------------ which weights


def prunable_for(
    model: nn.Module,
    prunable: Iterable[str] = ("conv", "linear"),
    *,
    dense_first: bool = False,
    dense_last: bool = False,
    exclude: Iterable[str] = (),
) -> dict[str, nn.Parameter]:
    """The weights to mask, in module order; ``dense_first`` / ``dense_last`` leave out the first and
    the last prunable weight (by module registration order: the stem and the head), whatever their
    type (a Conv2d classifier is the last layer as much as a Linear one); ``exclude`` leaves out every
    weight whose name matches one of its fnmatch patterns (Torch-Pruning's ``ignored_layers``)."""
    weights = prunable_weights(model, prunable)
    names = list(weights)
    for keep, name in ((dense_first, names[:1]), (dense_last, names[-1:])):
        if keep and name:
            weights.pop(name[0], None)
    for name in excluded(names, exclude):
        weights.pop(name, None)
    if not weights:
        raise MaskError(
            f"{type(model).__name__} has no weight to prune with prunable={list(prunable)}"
            + (" once the layers kept dense are left out" if dense_first or dense_last or exclude else "")
            + "; widen prunable (e.g. [conv, linear] or [all]) or keep fewer layers dense."
        )
    return weights


def excluded(names: list[str], patterns: Iterable[str]) -> list[str]:
    """The names some pattern matches (fnmatch, case-sensitive); a pattern that matches none is an error."""
    matched: list[str] = []
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise MaskError(
                f"exclude pattern '{pattern}' matches no prunable weight; patterns match parameter names with "
                f"shell wildcards, e.g. '{names[-1] if names else 'fc.weight'}' or 'layer1.*'. Prunable weights: "
                + ", ".join(names[:6]) + (f" ... ({len(names)} in all)" if len(names) > 6 else "") + "."
            )
        matched += hits
    return matched


def weights_of(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The stored tensors behind ``names`` (for a masked weight, the parametrization's original)."""
    out = {}
    for name in names:
        module, attr = owner_of(model, name)
        if parametrize.is_parametrized(module, attr):
            out[name] = module.parametrizations[attr].original
        else:
            out[name] = getattr(module, attr)
    return out


# ------------------------------------------------------------------ budgets


def layer_densities(shapes: Mapping[str, torch.Size | tuple[int, ...]], budget: Budget) -> dict[str, float]:
    """Per-layer density (fraction kept) for a layer-wise budget."""
    density = 1.0 - budget.sparsity
    if budget.distribution == "uniform":
        return {name: density for name in shapes}
    return erk_densities(shapes, density)


def erk_densities(shapes: Mapping[str, torch.Size | tuple[int, ...]], density: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel: density_l = eps * sum(shape_l) / prod(shape_l), with eps chosen so that
    the kept weights total ``density`` of all; layers that would exceed 1 are dense, eps is refit."""
    sizes = {name: _numel(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(sizes[n] for n in dense)
        weighted = sum(raw[n] * sizes[n] for n in shapes if n not in dense)
        eps = budget / weighted if weighted else 0.0
        overflow = {n for n in shapes if n not in dense and eps * raw[n] > 1.0}
        if not overflow:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense |= overflow


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# ------------------------------------------------------------------ scores -> masks


def masks_from_scores(scores: Mapping[str, torch.Tensor], budget: Budget) -> dict[str, torch.Tensor]:
    """Bool masks keeping the highest scores under ``budget``; on the CPU, shaped like the scores."""
    if not scores:
        raise MaskError("no scores to rank: the model has no prunable weight.")
    flat = {name: s.detach().float().flatten().cpu() for name, s in scores.items()}
    _check_finite(flat)
    if budget.scope == "global":
        total = sum(s.numel() for s in flat.values())
        keep = _keep_top(torch.cat(list(flat.values())), round((1 - budget.sparsity) * total))
        parts = keep.split([s.numel() for s in flat.values()])
        return {name: part.view(scores[name].shape) for name, part in zip(flat, parts)}
    counts = layer_counts({n: tuple(s.shape) for n, s in scores.items()}, budget)
    return {name: _keep_top(s, counts[name]).view(scores[name].shape) for name, s in flat.items()}


def layer_counts(shapes: Mapping[str, torch.Size | tuple[int, ...]], budget: Budget) -> dict[str, int]:
    """Weights each layer keeps under a layer-wise budget: ``round(density_l * n_l)``, at least 1, so a
    layer-wise budget never empties a layer (a tiny layer at a high sparsity would round to 0)."""
    densities = layer_densities(shapes, budget)
    return {name: max(1, round(densities[name] * _numel(shape))) for name, shape in shapes.items()}


def _keep_top(values: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.zeros(values.numel(), dtype=torch.bool)
    k = min(max(k, 0), values.numel())
    if k:
        keep[torch.topk(values, k, sorted=False).indices] = True
    return keep


def _check_finite(flat: Mapping[str, torch.Tensor]) -> None:
    for name, s in flat.items():
        if not torch.isfinite(s).all():
            raise MaskError(
                f"the scores of '{name}' hold NaN or inf; the model or its data produced non-finite gradients "
                "(lower the input scale, or check the model in eval mode)."
            )


def achieved_sparsity(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-layer fraction pruned."""
    return {name: 1.0 - float(m.count_nonzero()) / m.numel() for name, m in masks.items()}
