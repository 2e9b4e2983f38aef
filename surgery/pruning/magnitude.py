"""One-shot magnitude pruning (OMP): keep the largest ``|w|``.

The lottery-ticket papers' one-shot baseline: rank the trained (or initial) weights by
magnitude, globally over all layers by default (``scope: layer`` ranks each layer on
its own, with uniform or ERK budgets). Registered as ``magnitude`` and, for the papers'
name, ``omp``. Reads the weights, never writes them: no copy is needed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surgery.errors import MaskError
from surgery.pruning.budget import weights_of
from surgery.pruning.registry import METHODS, register


@register("magnitude", scope="global", trained=True, about="one-shot magnitude pruning (OMP) of trained weights")
def score_magnitude(
    model: nn.Module, names: list[str], *, batches: Any = None, seed: int = 0, **options: Any
) -> dict[str, torch.Tensor]:
    """``|w|`` per weight (``batches`` and ``seed`` are unused)."""
    if options:
        raise MaskError(f"mask method 'magnitude' takes no options, got {sorted(options)}; drop them.")
    with torch.no_grad():
        return {name: w.detach().abs() for name, w in weights_of(model, names).items()}


METHODS["omp"] = METHODS["magnitude"]  # the papers' name for the same method
