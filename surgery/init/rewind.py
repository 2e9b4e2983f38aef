"""Weight rewinding: start a sparse run from an early checkpoint of the dense run (Frankle et al. 2019).

``rewind(model, source)`` copies every parameter and buffer (BatchNorm statistics included)
of ``source`` into ``model`` in place, where ``model`` may be plain, traced, or compiled with
masks and ghosts, and ``source`` may be saved from any of those forms:

- a state_dict mapping, or a file holding one: ``.safetensors``, or ``.pt`` / ``.pth`` /
  ``.bin`` (read by ``surgery.compiler.weight_files``: ``torch.load(weights_only=True)``);
- a trainer checkpoint (a dict whose ``"model"`` is the ghosted or de-ghosted model's
  state_dict, see ``surgery.train.checkpoint``), as a file or a dict; ``{"state_dict": ...}``
  works too;
- an ``nn.Module`` (its state_dict).

Keys are compared in plain form: a masked weight's ``X.parametrizations.weight.original``
is ``X.weight`` on either side, and mask buffers (``X.parametrizations.weight.0.mask``) are
never read from the source: the target's masks win and are re-applied after the copy, so
pruned weights stay exactly zero and kept weights equal the source's. Ghost tensors
(``_ghosts.*``) are loaded only when both sides have ghosts, and ignored otherwise (a dense
run has none; its rewound sparse run adds fresh ones). Any other difference (a key on one
side only, a shape mismatch) raises ``CheckpointError`` listing every such key with its
shapes, so a checkpoint of another model or ``num_classes`` is refused before anything
changes.

**Which checkpoint.** "Spending Your Winning Lottery Better" rewinds the dense network to
epoch 33 of its 180 (about 18% of training) before retraining the ticket. Pass the dense
run's checkpoint from that epoch, e.g. ``runs/dense/checkpoints/epoch0033-step....pt``; the
trainer keeps only the newest ``train.keep_checkpoints`` files, so keep that one (copy it,
or raise ``keep_checkpoints``) while the dense run goes on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from surgery.compiler.ghosts import GHOSTS_ROOT
from surgery.compiler.masks import Mask
from surgery.compiler.weight_files import read_state_dict, state_dict_in
from surgery.errors import CheckpointError

Source = str | os.PathLike | Mapping[str, Any] | nn.Module
_FIX = (
    "Pass a state_dict of the same architecture and num_classes, e.g. the dense run's checkpoint "
    "at the rewind epoch (runs/NAME/checkpoints/epochEEEE-stepSSSSSS.pt) or the model.safetensors "
    "it was built from."
)


@dataclass
class RewindReport:
    """What ``rewind`` copied."""

    loaded: int  # tensors copied: parameters and buffers
    masks_applied: int  # masked weights multiplied by the target's mask afterwards
    ghosts_loaded: bool  # both sides had ghosts, so ghost tensors were copied too
    source: str  # where the weights came from


@torch.no_grad()
def rewind(model: nn.Module, source: Source) -> RewindReport:
    """Load ``source``'s weights and buffers into ``model`` in place; its masks stay and are re-applied."""
    state, described = read_source(source)
    target = plain_state_dict(model.state_dict(keep_vars=True))
    incoming = plain_state_dict(state)
    ghosts = _has_ghosts(target) and _has_ghosts(incoming)
    if not ghosts:
        target, incoming = _without_ghosts(target), _without_ghosts(incoming)
    _check_fit(target, incoming, model, described)
    for name, tensor in target.items():
        tensor.copy_(incoming[name])
    masked = reapply_masks(model)
    return RewindReport(len(target), masked, ghosts, described)


# ------------------------------------------------------------------------ sources


def read_source(source: Source) -> tuple[dict[str, Tensor], str]:
    """``(state_dict, description)`` of a path, a mapping, a trainer checkpoint or a module."""
    if isinstance(source, nn.Module):
        return dict(source.state_dict()), f"a {type(source).__name__}'s state_dict"
    if isinstance(source, Mapping):
        return state_dict_in(source, "the mapping given to rewind"), "the given mapping"
    if isinstance(source, (str, os.PathLike)):
        return read_state_dict(source), f"'{Path(source)}'"
    raise CheckpointError(
        f"rewind's source is a {type(source).__name__}; give a state_dict mapping, a trainer checkpoint "
        "dict, an nn.Module, or a path to a .pt / .pth / .safetensors file."
    )


# ------------------------------------------------------------------------- keys


def plain_key(key: str) -> str | None:
    """``X.parametrizations.W.original`` -> ``X.W``; None for a parametrization's own state (masks)."""
    parts = key.split(".")
    if "parametrizations" not in parts:
        return key
    at = parts.index("parametrizations")
    if len(parts) == at + 3 and parts[at + 2] == "original":
        return ".".join(parts[:at] + [parts[at + 1]])
    return None


def plain_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` keyed as the unmasked model's state_dict: originals renamed, mask buffers dropped."""
    plain: dict[str, Tensor] = {}
    for key, tensor in state.items():
        name = plain_key(key)
        if name is not None:
            plain[name] = tensor
    return plain


def _is_ghost(key: str) -> bool:
    return key.split(".", 1)[0] == GHOSTS_ROOT


def _has_ghosts(state: Mapping[str, Tensor]) -> bool:
    return any(_is_ghost(k) for k in state)


def _without_ghosts(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not _is_ghost(k)}


def _check_fit(target: dict[str, Tensor], incoming: dict[str, Tensor], model: nn.Module, where: str) -> None:
    """Raise ``CheckpointError`` listing every key on one side only and every shape that differs."""
    missing = [k for k in target if k not in incoming]
    unexpected = [k for k in incoming if k not in target]
    mismatched = [k for k in target if k in incoming and target[k].shape != incoming[k].shape]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"rewind source {where} does not fit {type(model).__name__}: "
             f"{len(missing) + len(unexpected) + len(mismatched)} tensor(s) differ."]  # fmt: skip
    lines += [f"  missing from the source: {k} {_shape(target[k])}" for k in missing]
    lines += [f"  not in the model: {k} {_shape(incoming[k])}" for k in unexpected]
    lines += [f"  shape differs: {k}: source {_shape(incoming[k])}, model {_shape(target[k])}" for k in mismatched]
    raise CheckpointError("\n".join(lines) + "\n" + _FIX)


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


# ------------------------------------------------------------------------ masks


@torch.no_grad()
def reapply_masks(model: nn.Module) -> int:
    """Multiply every masked weight's stored ``original`` by its mask; returns how many."""
    applied = 0
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for plist in module.parametrizations.values():
            masks = [p.mask for p in plist if isinstance(p, Mask)]
            for mask in masks:
                plist.original.mul_(mask)
            applied += bool(masks)
    return applied
