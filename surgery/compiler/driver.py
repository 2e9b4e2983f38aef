"""compile(): trace a copy of the model, propagate shapes, run the recipe's passes in order.

The user's model is never modified: the graph module owns deep copies of its
parameters. After each pass the graph is linted and recompiled, and the pass has
recorded what it did in the manifest (``surgery.manifest_of(gm)``). With
``submodule=`` only those parts are compiled, each on the inputs the whole model
gives it (``surgery.compiler.submodules``), and the whole model comes back around them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import fx, nn

from surgery.fx.collector import collector_paused
from surgery.errors import ShapePropagationError, TraceError
from surgery.compiler.ghosts import Ghost, ghost_parameters
from surgery.fx.graph import as_tuple, deepcopy_module, module_of, propagate_shapes
from surgery.fx.layers import FORWARD_CONV_TYPES
from surgery.compiler.manifest import MANIFEST_KEY, Manifest, Unreached
from surgery.compiler.passes import REGISTRY
from surgery.compiler.passes.registry import reported_in
from surgery.compiler.passes.soft_activation import ACTIVATIONS
from surgery.compiler.recipe import Recipe
from surgery.compiler.submodules import (
    call_inputs,
    capture_calls,
    leaves_within,
    recipes_by_submodule,
    replace_submodule,
    require_reached,
    submodule_paths,
    traceable_parts,
)
from surgery.fx.modes import BRANCHES_KEY, ModeGraphModule, editing, trace_modes
from surgery.fx.tracer import STRUCTURAL_LEAVES
from surgery.fx.tracing import check_leaf_names, trace_options_of

ACTIVATION_TYPES = tuple(t for spelling in ACTIVATIONS.values() for t in spelling.modules)


@collector_paused
def compile(
    model: nn.Module,
    example_inputs: Any,
    recipe: Recipe | Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    submodule: str | Sequence[str] | None = None,
    leaf_modules: Sequence[Any] = (),
    concrete_args: dict[str, Any] | None = None,
) -> nn.Module:
    """Return a ghosted ``fx.GraphModule`` of ``model`` built by ``recipe``'s passes.

    ``recipe``: a preset name (``"tost"``, ``"tost-official"``, ... from ``surgery.compiler.presets``), a
    ``Recipe``, a mapping or a recipe file. A preset gives its *graph* part only: for ``"tost"``
    the ghost skips and PSwish. The rest of ToST (the ghosts' schedules and removal, LRsI, label
    smoothing) is training: ``surgery.ToST`` in your own loop, or ``surgery train``.

    ``example_inputs`` (a tensor or a tuple of positional arguments; a list of images goes
    in a tuple: ``(images,)``) size the skips' projections by shape propagation; they are
    moved to the model's device (meta models get meta inputs).

    ``submodule`` (a qualified module path like ``"backbone"``, or several) compiles only
    those parts: one forward of a copy of the whole model on ``example_inputs`` (its current
    mode, no grad) captures the arguments each receives, each is compiled on them, and a
    copy of the whole model is returned, of the user's class, with each part replaced by its
    ghosted GraphModule (``surgery.compiled_submodules(model)`` lists them) so the user's
    training code runs unchanged. Masks and ``leaf_modules`` paths are then named as in the
    whole model; ``concrete_args`` fix the submodules' forward arguments. A whole model that
    cannot be traced raises a ``TraceError`` naming children that can.
    """
    recipe = Recipe.coerce(recipe)
    leaves = tuple(recipe.leaf_modules) + tuple(leaf_modules)
    if submodule is not None:
        return compile_submodules(model, example_inputs, recipe, submodule, leaves, concrete_args)
    inputs = as_tuple(example_inputs)
    return build(model, trace_whole(model, inputs, leaves, concrete_args, recipe), inputs, recipe)


def trace_whole(
    model: nn.Module, inputs: tuple, leaves: Sequence[Any], concrete_args: dict[str, Any] | None, recipe: Recipe
) -> fx.GraphModule:
    """``trace_modes`` the whole model (one graph, or one per mode where its Python code branches on
    ``self.training``); when fx cannot trace it, the error also names the children that trace."""
    check_leaf_names(model, leaves)
    try:
        return trace_modes(model, leaves, concrete_args, num_inputs=len(inputs), example_inputs=inputs)
    except TraceError as error:
        skips = recipe.options("ghost_skip")
        suggestion = traceable_parts(model, inputs, leaves, skips.targets if skips is not None else None)
        raise TraceError(f"{error}\n{suggestion}" if suggestion else str(error)) from error


def compile_submodules(
    model: nn.Module,
    example_inputs: Any,
    recipe: Recipe,
    submodule: str | Sequence[str],
    leaves: Sequence[Any],
    concrete_args: dict[str, Any] | None,
) -> nn.Module:
    """A copy of ``model`` whose ``submodule`` parts are ghosted GraphModules (see ``compile``)."""
    paths = submodule_paths(model, submodule)
    check_leaf_names(model, leaves)
    calls = capture_calls(model, example_inputs, paths)
    require_reached(model, paths, calls)
    whole = deepcopy_module(model)
    recipes = recipes_by_submodule(whole, recipe, paths)
    for path in paths:
        part = whole.get_submodule(path)
        inputs, fixed = call_inputs(part, calls[path], path)
        traced = trace_modes(part, leaves_within(leaves, path, whole), {**fixed, **(concrete_args or {})} or None,
                             num_inputs=len(inputs), example_inputs=inputs)
        replace_submodule(whole, path, build(part, traced, inputs, recipes[path]))
    return whole


def build(model: nn.Module, traced: fx.GraphModule, inputs: tuple, recipe: Recipe) -> fx.GraphModule:
    """Ghost ``traced`` (a trace of ``model``): a copy, its shapes, then the recipe's passes in order."""
    gm = deepcopy_module(traced)
    cls = type(model)
    manifest = Manifest(model=f"{cls.__module__}.{cls.__qualname__}")
    with editing(gm):
        manifest.unreached = out_of_reach(gm)
    manifest.mode_branches = list(gm.meta.pop(BRANCHES_KEY, []))
    manifest.mode_graphs = 2 if isinstance(gm, ModeGraphModule) else 1
    specialization = trace_options_of(gm).specialized_to
    manifest.specialized_to = specialization.describe() if specialization is not None else []
    gm.meta[MANIFEST_KEY] = manifest
    with editing(gm):  # a model with one program per mode: the passes edit both at once
        _propagate_shapes(gm, inputs)
        for done, (name, options) in enumerate(recipe.passes):
            run_pass, _ = REGISTRY[name]
            with reported_in(name, before=[n for n, _ in recipe.passes[:done]]):
                gm = run_pass(gm, options)
                gm.graph.lint()
        gm.recompile()  # once: a pass edits the graph, none runs the code
    manifest.ghost_parameters = sum(p.numel() for p in ghost_parameters(gm))
    return gm


def _propagate_shapes(gm: fx.GraphModule, inputs: tuple) -> None:
    try:
        propagate_shapes(gm, inputs)
    except ShapePropagationError as error:
        if not isinstance(gm, ModeGraphModule):
            raise
        raise ShapePropagationError(
            f"{error}\nThe model's forward branches on self.training, so its train- and eval-mode programs both run "
            "here: the inputs must fit both (Inception v3's aux head needs 299 x 299 images)."
        ) from error


def out_of_reach(gm: fx.GraphModule) -> list[Unreached]:
    """Convs, Linears and activations hidden inside leaf modules, where no pass can see them."""
    found: list[Unreached] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        leaf = module_of(gm, node)
        if leaf is None or node.target in seen or isinstance(leaf, (Ghost, *STRUCTURAL_LEAVES)):
            continue
        seen.add(node.target)
        for name, sub in leaf.named_modules():
            what = _unreached_kind(sub)
            if what and name:
                found.append(Unreached(f"{node.target}.{name}", type(sub).__name__, node.target, what))
    return found


def _unreached_kind(module: nn.Module) -> str | None:
    if isinstance(module, FORWARD_CONV_TYPES):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return "activation" if isinstance(module, ACTIVATION_TYPES) else None


def leaf_modules_in(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """``(path, class)`` of every module the graph calls opaquely that is not one of torch.nn's own."""
    leaves: dict[str, str] = {}
    for node in gm.graph.nodes:
        module = module_of(gm, node)
        if module is None or isinstance(module, Ghost):
            continue
        cls = type(module)
        if not cls.__module__.startswith("torch.nn"):
            leaves.setdefault(node.target, f"{cls.__module__}.{cls.__qualname__}")
    return sorted(leaves.items())
