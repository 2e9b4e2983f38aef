"""Attach a binary mask to prunable weights as a ``torch.nn.utils.parametrize`` parametrization.

Masks come from a ``{param_name: tensor}`` dict, a safetensors mask file, a
``torch.save``-d state_dict whose zeros mark pruned weights, or from the model itself:
``from_prune`` (``torch.nn.utils.prune``'s ``weight_mask`` buffers) or ``from_zeros``
(its weights' exact zeros). Weights the masks do not name stay dense, except that a
mask file must cover every prunable weight (or say it leaves it dense) unless
``partial: true``: a file made for another model is refused, not half applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx

from surgery.errors import MaskError, RecipeError
from surgery.compiler.manifest import MaskRecord, ensure_manifest
from surgery.compiler.masks import (
    PRUNABLE_CHOICES,
    attach_mask,
    load_masks,
    masks_from_prune,
    masks_from_zeros,
    prunable_weights,
    remove_prune_reparametrization,
    validate_masks,
)
from surgery.compiler.options import check_subset
from surgery.compiler.passes.registry import register
from surgery.compiler.weight_files import SAFETENSORS_SUFFIX, TORCH_SUFFIXES, read_weights_file

SOURCES_FROM_MODEL = ("from_prune", "from_zeros")


@dataclass(frozen=True)
class MaskOptions:
    source: Any = None  # {param: tensor} | "mask.safetensors" | "state_dict.pt" | "from_prune" | "from_zeros"
    prunable: tuple[str, ...] = ("conv", "linear")
    partial: bool = False  # a mask file may leave prunable weights without a mask (they stay dense)

    def __post_init__(self):
        if self.source is None:
            raise RecipeError(
                "masks needs a source: a {param_name: tensor} dict, a .safetensors mask file, a .pt "
                f"state_dict whose zeros mark pruned weights, or one of {list(SOURCES_FROM_MODEL)}."
            )
        object.__setattr__(self, "prunable", check_subset("masks", "prunable", self.prunable, PRUNABLE_CHOICES))


@register("masks", MaskOptions)
def attach_masks(gm: fx.GraphModule, options: MaskOptions) -> fx.GraphModule:
    """Mask every weight the source names; pruned entries are zero now and after every step."""
    manifest = ensure_manifest(gm)
    masks = validate_masks(resolve_source(gm, options), gm, options.prunable)
    for name, mask in masks.items():
        attach_mask(gm, name, mask)
        sparsity = 0.0 if mask.is_meta else 1.0 - mask.count_nonzero().item() / max(mask.numel(), 1)
        manifest.masks.append(MaskRecord(name, tuple(mask.shape), sparsity))
    manifest.passes.append("masks")
    return gm


def resolve_source(gm: fx.GraphModule, options: MaskOptions) -> Mapping[str, torch.Tensor]:
    source = options.source
    if isinstance(source, Mapping):
        return source
    if source == "from_prune":
        masks = masks_from_prune(gm)
        if not masks:
            raise MaskError("masks: from_prune found no torch.nn.utils.prune masks (no '<name>_mask' buffers) in the model.")
        remove_prune_reparametrization(gm)
        return masks
    if source == "from_zeros":
        masks = masks_from_zeros(gm, options.prunable)
        if not masks and not any(w.is_meta for w in prunable_weights(gm, options.prunable).values()):
            raise MaskError(
                f"masks: from_zeros found no exact zero in the model's prunable weights "
                f"(prunable={list(options.prunable)}): it marks nothing as pruned."
            )
        return masks
    if isinstance(source, (str, Path)):
        return _from_file(gm, Path(source), options)
    raise RecipeError(f"masks.source of type {type(source).__name__} is not a dict, a file path or one of {list(SOURCES_FROM_MODEL)}.")


def _from_file(gm: fx.GraphModule, path: Path, options: MaskOptions) -> Mapping[str, torch.Tensor]:
    if path.suffix == SAFETENSORS_SUFFIX:
        return load_masks(path, model=gm, partial=options.partial, kinds=options.prunable)[0]
    if path.suffix in TORCH_SUFFIXES:
        return _from_state_dict(gm, path, read_weights_file(path), options)
    raise MaskError(f"mask file '{path}' is neither .safetensors (a mask file) nor "
                    f"{' / '.join(TORCH_SUFFIXES)} (a state_dict).")


def _from_state_dict(gm: fx.GraphModule, path: Path, state: Any, options: MaskOptions) -> Mapping[str, torch.Tensor]:
    """Masks from the zeros of a saved state_dict; an error when it marks nothing as pruned."""
    prunable = prunable_weights(gm, options.prunable)
    named = [n for n in state if n in prunable] if isinstance(state, Mapping) else []
    if not named:
        held = list(state)[:5] if isinstance(state, Mapping) else type(state).__name__
        raise MaskError(
            f"state_dict file '{path}' names none of the model's prunable weights "
            f"(e.g. '{next(iter(prunable), '')}'); it holds {held}. Save model.state_dict() itself, "
            "not a checkpoint that wraps it."
        )
    masks = masks_from_zeros({n: state[n] for n in named})
    if not masks:
        raise MaskError(f"state_dict file '{path}' has no zero in its {len(named)} prunable weights: it marks nothing as pruned.")
    return masks
