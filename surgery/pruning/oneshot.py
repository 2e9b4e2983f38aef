"""One-shot pruning: the masks a ``oneshot`` method (random, magnitude, SNIP, GraSP, SynFlow) finds in one
scoring, for a whole model or for each of its parts. ``surgery prune`` (``surgery.apps.prune``) and a run's mask
stage (``surgery.train.masking``) both find their one-shot masks here.

    masks = oneshot_masks(model, "synflow", 0.9, inputs=(x,))                        # the whole model
    masks = oneshot_masks(detector, "random", 0.9, inputs=(images, targets), parts=["backbone"])

A part is pruned to ``sparsity`` on its own, as ``surgery.compile(..., submodule=...)`` ghosts it; the masks
keep the whole model's parameter names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from surgery.compiler.submodules import capture_calls
from surgery.pruning.registry import find_masks, method

WHOLE_MODEL = ""  # the path of the model itself among its parts


def oneshot_masks(model: nn.Module, name: str, sparsity: float, *, batches=None, inputs: tuple | None = None,
                  parts: Sequence[str] | None = None, seed: int = 0, options: Mapping[str, Any] | None = None,
                  **budget: Any) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}`` of method ``name`` at ``sparsity`` for ``model`` (or each of ``parts``).

    ``inputs``: what a training forward of the whole model takes. Each part's first input shapes the path
    check's input and SynFlow's made-up input (an ``input_shape`` in ``options`` wins). ``budget``: how
    ``find_masks`` spreads the sparsity (scope, distribution, prunable, dense_first, ...).
    """
    made_up_input = method(name).input_shape
    examples = part_inputs(model, inputs, parts) if inputs is not None else {}
    masks: dict[str, torch.Tensor] = {}
    for path in parts or [WHOLE_MODEL]:
        part_options = dict(options or {})
        example = examples.get(path)
        if made_up_input and example is not None:
            part_options.setdefault("input_shape", tuple(example.shape[1:]))
        found = find_masks(model.get_submodule(path), name, sparsity, batches=batches, seed=seed,
                           example_input=example, **budget, **part_options)
        masks.update({f"{path}.{k}" if path else k: mask for k, mask in found.items()})
    return masks


def part_inputs(model: nn.Module, inputs: tuple, parts: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """``{part: one example of the tensor it gets first}`` in a forward of ``model`` on ``inputs`` (RAFT's encoders
    get the image pair stacked, a detector's backbone the resized batch); no part: the model's own first input.
    A part the forward never calls, or whose first input is not a tensor (a detector's images), is left out."""
    if not parts:
        first = {WHOLE_MODEL: inputs[0]}
    else:
        calls = capture_calls(model, inputs, parts)
        first = {path: calls[path].args[0] for path in parts if path in calls}
    return {path: x[:1] for path, x in first.items() if torch.is_tensor(x)}
