"""Which modules are layers: one table of conv (1-3d, transposed or not) and linear types, read everywhere.

Masks, budgets, SynFlow, ZerO, LRsI and ASNI's centroid init prune or re-initialize every
layer in ``LAYERS`` (a ``prunable`` kind, ``conv`` or ``linear``, names a set of rows).
Tracing keeps every one of them a single graph node. Ghost skips wrap only the forward
(not transposed) convs: a transposed conv upsamples, so its input cannot be projected
onto its output by the stride-matched projection a skip uses (``surgery.compiler.passes.ghost_skip``).
Subclasses count as their base (timm's ``StdConv2d`` is a conv).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Layer:
    """What a layer type is: its ``prunable`` kind, spatial dims (0 for linear), whether transposed."""

    kind: str  # "conv" | "linear": the names masks' ``prunable`` option uses
    dims: int
    transposed: bool = False


LAYERS: dict[type[nn.Module], Layer] = {
    nn.Conv1d: Layer("conv", 1),
    nn.Conv2d: Layer("conv", 2),
    nn.Conv3d: Layer("conv", 3),
    nn.ConvTranspose1d: Layer("conv", 1, transposed=True),
    nn.ConvTranspose2d: Layer("conv", 2, transposed=True),
    nn.ConvTranspose3d: Layer("conv", 3, transposed=True),
    nn.Linear: Layer("linear", 0),
}

LAYER_TYPES: tuple[type[nn.Module], ...] = tuple(LAYERS)
PRUNABLE_KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    kind: tuple(t for t, layer in LAYERS.items() if layer.kind == kind) for kind in ("conv", "linear")
}
FORWARD_CONV_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t, layer in LAYERS.items() if layer.kind == "conv" and not layer.transposed
)


def layer_of(module: nn.Module) -> Layer | None:
    """The table's row for ``module`` (by isinstance, so subclasses count), or None for any other module."""
    return next((layer for cls, layer in LAYERS.items() if isinstance(module, cls)), None)


def layer_kind(module: nn.Module) -> str | None:
    """``"conv"``, ``"linear"`` or None."""
    layer = layer_of(module)
    return layer.kind if layer is not None else None


def is_conv(module: nn.Module) -> bool:
    """Any conv in the table, transposed or not."""
    return layer_kind(module) == "conv"
