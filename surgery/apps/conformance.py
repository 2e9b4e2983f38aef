"""Conformance: the whole round trip on one model, as a row of pass/fail cells.

trace -> compile (ToST's ghost skips, PSwish, masks) -> forward + backward -> de-ghost ->
verify (a) isomorphic, (b) strict load, (c) outputs equal -> ONNX parity.
The zoo tests and ``make zoo`` (docs/zoo.md) run it over torchvision and timm; it
works for any model. On the meta device only the structural cells are filled. A model
compiled in parts (``submodule=``: a detector's backbone) is checked as a whole: its train
step is a train-mode forward with synthetic targets (``surgery.zoo.tasks``) whose loss dict is
summed, (a) runs per compiled part, (b) and (c) on the whole model.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery.compiler.driver import compile
from surgery.errors import ExportError, NoTargetsError, TraceError
from surgery.compiler.export import export_onnx
from surgery.compiler.passes.deghost import deghost
from surgery.fx.graph import as_tuple, device_of, scalar_loss
from surgery.compiler.manifest import compiled_submodules, manifest_of
from surgery.compiler.masks import prunable_weights
from surgery.pruning import random_masks
from surgery.compiler.recipe import TOST_RECIPE
from surgery.compiler.submodules import within
from surgery.zoo.tasks import train_inputs
from surgery.fx.python_state import python_state_kept
from surgery.fx.modes import TRAIN
from surgery.compiler.verify import (
    ATOL,
    check_ghost_parity,
    check_outputs,
    check_part,
    in_mode,
    load_into_original,
    runs_in_train_mode,
)

SPARSITY = 0.9


@dataclass
class Row:
    model: str
    trace: bool | None = None
    compile: bool | None = None
    train_step: bool | None = None
    deghost: bool | None = None
    isomorphic: bool | None = None
    strict_load: bool | None = None
    outputs_equal: bool | None = None
    onnx_parity: bool | None = None
    convs_covered: int | None = None
    convs_targeted: int | None = None  # the recipe's ghost_skip targets (default: the body's spatial convs)
    convs_total: int | None = None
    note: str = ""  # the first failure, or what was adapted (e.g. Linear skips for a conv-free model)
    seconds: float = 0.0
    compiled: str = "whole"  # what was compiled: the whole model, or its submodules' paths
    modes: int | None = None  # 2: the forward branches on self.training, one graph per mode (surgery.fx.modes)
    traced_for: str = ""  # a shape-specialized trace's input shapes (surgery.fx.concrete); empty: any shape

    @property
    def structural_ok(self) -> bool:
        return all((self.trace, self.compile, self.train_step, self.deghost, self.isomorphic, self.strict_load))

    @property
    def ok(self) -> bool:
        """Every cell that ran passed."""
        cells = [getattr(self, f.name) for f in fields(self) if f.type == "bool | None"]
        return all(c is not False for c in cells) and self.trace is True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_model(
    name: str,
    model: nn.Module,
    example_inputs: Any,
    *,
    numeric: bool = True,
    onnx: bool = False,
    sparsity: float = SPARSITY,
    seed: int = 0,
    submodule: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    leaf_modules: Sequence[Any] = (),
) -> Row:
    """Run the round trip on ``model`` (only its ``submodule`` parts compiled, if given); every stage
    that fails is recorded, never raised. ``dynamic_batch``: export ONNX with a dynamic batch.
    ``leaf_modules``: kept opaque when tracing (the leaves a trace error suggests).

    The model is compiled in train mode, as training starts, and verified in both modes: (a) each
    mode's graph against the original traced in that mode, (c) outputs in eval mode on
    ``example_inputs`` and in train mode on the training inputs (a detector's loss dict)."""
    row, started = Row(name, compiled=", ".join(submodule or ()) or "whole"), time.perf_counter()
    inputs = as_tuple(example_inputs)
    training = train_inputs(model, inputs, seed=seed)  # a detector's: (images, synthetic targets)
    meta = device_of(model).type == "meta"
    try:
        with in_mode(TRAIN, model):  # the model's own flags come back afterwards
            masks = zoo_masks(model, sparsity, seed, meta, submodule or ())
            ghosted = _compile(row, model, training, masks, submodule, leaf_modules)
        if ghosted is not None and _stage(row, "train_step", lambda: _train_step(ghosted, training)):
            clean = _stage(row, "deghost", lambda: deghost(ghosted))
            if clean is not None:
                _verify(row, model, clean, ghosted, (inputs, training), numeric and not meta, onnx and not meta,
                        dynamic_batch)
    finally:
        row.seconds = round(time.perf_counter() - started, 2)
    return row


def zoo_masks(model: nn.Module, sparsity: float, seed: int, meta: bool, parts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Random masks of the prunable weights inside ``parts`` (all of them when none are given)."""
    if meta:  # shapes only: a meta model has no values to mask
        masks = {n: torch.empty(p.shape, dtype=torch.bool, device="meta") for n, p in prunable_weights(model).items()}
    else:
        masks = random_masks(model, sparsity, seed=seed)
    return {n: m for n, m in masks.items() if within(n, parts)}


LINEAR_SKIPS = "no body conv: skips around Linear layers"


def ghost_recipe(masks: dict, leaf_modules: Sequence[Any] = (), linear: bool = False) -> dict[str, Any]:
    """The zoo's recipe: ``TOST_RECIPE`` with ``masks``; ``linear``: skips around Linear layers too."""
    recipe = {**TOST_RECIPE, "masks": masks, **({"trace": {"leaf_modules": list(leaf_modules)}} if leaf_modules else {})}
    if linear:
        recipe["ghost_skip"] = {"projection": "conv1x1", "targets": ["conv", "linear"]}
    return recipe


def compile_with_ghosts(model: nn.Module, inputs: tuple, masks: dict, submodule: Sequence[str] | None = None,
                        leaf_modules: Sequence[Any] = ()) -> tuple[nn.Module, str]:
    """``surgery.compile`` with the zoo's recipe (``ghost_recipe``); a model with no spatial body conv (a
    ViT's only conv is its stem) gets skips around its Linear layers instead. Returns the ghosted model and
    what was adapted ('' or ``LINEAR_SKIPS``)."""
    try:
        return compile(model, inputs, ghost_recipe(masks, leaf_modules), submodule=submodule), ""
    except NoTargetsError:
        recipe = ghost_recipe(masks, leaf_modules, linear=True)
        return compile(model, inputs, recipe, submodule=submodule), LINEAR_SKIPS


def _compile(row: Row, model: nn.Module, inputs: tuple, masks: dict, submodule: Sequence[str] | None,
             leaf_modules: Sequence[Any] = ()) -> nn.Module | None:
    try:
        ghosted, row.note = compile_with_ghosts(model, inputs, masks, submodule, leaf_modules)
    except TraceError as error:
        row.trace = False
        row.note = f"trace: {error}"
        return None
    except Exception as error:
        row.trace, row.compile = True, False
        row.note = (row.note + "; " if row.note else "") + f"compile: {type(error).__name__}: {error}"
        return None
    return _compiled(row, ghosted)


def _compiled(row: Row, ghosted) -> nn.Module:
    row.trace = row.compile = True
    summary = manifest_of(ghosted).summary()
    row.convs_covered, row.convs_targeted = summary["convs_covered"], summary["convs_targeted"]
    row.convs_total = summary["convs_found"]
    row.modes = summary["mode_graphs"]
    row.traced_for = "; ".join(summary["specialized_to"])
    return ghosted


def _train_step(ghosted: nn.Module, inputs: tuple) -> bool:
    ghosted.train()
    scalar_loss(ghosted(*inputs)).backward()
    return True


def _verify(row: Row, model, clean, ghosted, inputs_by_mode, numeric: bool, onnx: bool, dynamic_batch: bool) -> None:
    inputs, training = inputs_by_mode
    parts = compiled_submodules(clean)
    _stage(row, "isomorphic", lambda: sum(check_part(model, path, part) for path, part in parts.items()) > 0)
    fresh = _stage(row, "strict_load", lambda: load_into_original(model, clean))
    if numeric and fresh is not None:
        _stage(row, "outputs_equal", lambda: _outputs_equal(fresh, clean, ghosted, inputs, training))
    note_before = row.note
    if onnx and _stage(row, "onnx_parity", lambda: _export(clean, inputs, dynamic_batch=dynamic_batch)) is None:
        why_not = _unexportable(model, inputs, dynamic_batch)
        if why_not:  # torch.onnx's limit, not the surgery's: there is no parity to check
            row.onnx_parity, row.note = None, (note_before + "; " if note_before else "") + why_not


def _outputs_equal(fresh: nn.Module, clean: nn.Module, ghosted: nn.Module, inputs: tuple, training: tuple) -> bool:
    """(c) in eval mode and, where the original runs on the training inputs in train mode, in train mode; (d)."""
    names = ("the original class", "the de-ghosted module")
    check_outputs(fresh, clean, inputs, ATOL, *names)
    if not runs_in_train_mode(fresh, training):
        check_outputs(fresh, clean, training, ATOL, *names, mode=TRAIN)
    check_ghost_parity(ghosted, clean, inputs)
    return True


def _export(model: nn.Module, inputs: tuple, sparse: bool = True, dynamic_batch: bool = True) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, inputs, Path(tmp) / "model.onnx", sparse=sparse, dynamic_batch=dynamic_batch)
    return True


def _unexportable(model: nn.Module, inputs: tuple, dynamic_batch: bool = True) -> str:
    """Why torch.onnx cannot export the original model itself, or ''. The export runs the user's forward:
    whatever it does to Python state (a cache filled in eval mode) is undone."""
    try:
        with python_state_kept(model):
            _export(model, inputs, sparse=False, dynamic_batch=dynamic_batch)
    except ExportError as error:
        return "ONNX n/a: torch.onnx cannot export the original model either: " + str(error).split("\n")[0][:160]
    return ""


def _stage(row: Row, cell: str, run: Callable[[], Any]) -> Any:
    """Run one stage; record True / False (and the first failure's message) in ``cell``."""
    try:
        result = run()
    except Exception as error:
        setattr(row, cell, False)
        if not row.note or row.note == LINEAR_SKIPS:
            row.note = (row.note + "; " if row.note else "") + f"{cell}: {type(error).__name__}: {error}"
        return None
    setattr(row, cell, True)
    return result
