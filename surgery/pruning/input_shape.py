"""One example's shape, for what runs the model on a made-up input: SynFlow's all-ones input and
the path check's (``collapse.path_input``).

``example_shape``: ``input_shape`` (one example's shape, or the whole input with its batch of
one), else the batches' inputs', else the stem's: the first conv's ``in_channels`` at 32 per
spatial dimension (CIFAR size) or the first linear's ``in_features`` (first in registration
order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from surgery.errors import MaskError
from surgery.fx.layers import layer_of

SPATIAL = 32  # default input size per spatial dimension when no shape is known

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def example_shape(model: nn.Module, input_shape: Sequence[int] | None, batches: Batches | None) -> tuple[int, ...]:
    """One example's shape: ``input_shape`` (given with or without its batch of one), else the
    batches' inputs', else the stem's: the first conv's channels at 32 per spatial dimension, or
    the first linear's features."""
    stem = stem_shape(model)
    if input_shape is not None:
        shape = tuple(input_shape)
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise MaskError(
                f"synflow input_shape {input_shape!r} must be one example's shape, positive integers, "
                "e.g. (3, 224, 224) (or (1, 3, 224, 224) with the batch of one)."
            )
        if stem is not None and len(shape) == len(stem) + 1 and shape[0] == 1:
            return shape[1:]  # (1, C, H, W): the batch of one is SynFlow's own
        return shape
    if batches:
        return tuple(batches[0][0].shape[1:])
    if stem is None:
        raise MaskError(
            f"cannot tell {type(model).__name__}'s input shape (no conv or linear layer); pass "
            "input_shape=(C, H, W) to synflow."
        )
    return stem


def stem_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The default example shape from the first conv or linear in registration order (the stem)."""
    for module in model.modules():
        layer = layer_of(module)
        if layer is not None:
            return (module.in_channels, *(SPATIAL,) * layer.dims) if layer.kind == "conv" else (module.in_features,)
    return None
