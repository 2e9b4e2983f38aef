"""Compile part of a model: which submodules, and the inputs the whole model gives them.

torch.fx cannot trace many models as a whole (detection: Python-side anchors, targets,
post-processing), but their backbones trace fine. ``surgery.compile(..., submodule=...)``
compiles only those parts, each on the arguments a real forward of the whole model
passes it: a forward pre-hook on every wanted submodule records the first call's
arguments, on a throwaway copy of the model (so the user's BatchNorm statistics are
untouched), without grad, in the model's current mode. The forward stops as soon as
every wanted submodule has been called.
"""

from __future__ import annotations

import dataclasses
import heapq
import inspect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from surgery import advice
from surgery.errors import MaskError, ShapePropagationError, SubmoduleError, SurgeryError, did_you_mean
from surgery.fx.graph import as_tuple, deepcopy_module, device_of, inputs_on, propagate_shapes, root_cause
from surgery.compiler.passes.attach_masks import SOURCES_FROM_MODEL, resolve_source
from surgery.compiler.recipe import Recipe
from surgery.fx.modes import editing, trace_modes
from surgery.compiler.passes.ghost_skip import site_kinds
from surgery.fx.tracer import STRUCTURAL_LEAVES

SUGGESTED_CHILDREN = 3  # a failed whole-model trace names at most this many parts that trace
_SITES = {True: ("site ghost_skip wraps", "sites ghost_skip wraps"), False: ("conv or Linear", "convs and Linears")}
MAX_TRIED = 64  # parts traced in search of those (bounds the time a failed compile spends suggesting)


@dataclass(frozen=True)
class Call:
    """The arguments one call of a submodule received."""

    args: tuple
    kwargs: dict[str, Any]


# ----------------------------------------------------------------------- paths


def submodule_paths(model: nn.Module, submodule: str | Sequence[str]) -> tuple[str, ...]:
    """The qualified paths ``submodule`` names, checked: each exists, none lies inside another."""
    paths = tuple(dict.fromkeys((submodule,) if isinstance(submodule, str) else submodule))
    known = [name for name, _ in model.named_modules(remove_duplicate=False) if name]
    if not paths:
        raise SubmoduleError("submodule names no module; give a path like 'backbone', or submodule=None "
                             "to compile the whole model.")
    for path in paths:
        if path not in known:
            children = [name for name, _ in model.named_children()]
            raise SubmoduleError(
                f"submodule '{path}' names no module of {type(model).__name__}." + did_you_mean(path, known)
                + f" Give a qualified path as in model.named_modules(); its top-level modules are {children}."
            )
    for path in paths:
        layer = model.get_submodule(path)
        if isinstance(layer, STRUCTURAL_LEAVES):
            parent = path.rpartition(".")[0]
            raise SubmoduleError(
                f"submodule '{path}' is a single {type(layer).__name__} layer, which the passes wrap from outside; "
                + (f"compile the module that holds it: submodule='{parent}'." if parent else
                   "compile the module that calls it (leave submodule=None for the whole model).")
            )
    for outer in paths:
        for inner in paths:
            if inner.startswith(outer + "."):
                raise SubmoduleError(f"submodule '{inner}' lies inside '{outer}'; compile one of the two.")
    return paths


def within(name: str, paths: Sequence[str]) -> bool:
    """Whether the parameter or module path ``name`` lies inside one of ``paths`` (none: the whole model)."""
    return not paths or any(name.startswith(path + ".") for path in paths)


def replace_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, module)


# ------------------------------------------------------------------- capturing


class _AllCaptured(Exception):
    """Raised by the last hook to fire: the rest of the forward is not needed."""


@torch.no_grad()
def capture_calls(
    model: nn.Module, example_inputs: Any, paths: Iterable[str], *, stop_early: bool = True, training: bool | None = None
) -> dict[str, Call]:
    """``{path: the first Call it received}`` in one forward of a copy of ``model`` on ``example_inputs``.

    The copy runs in the model's own mode unless ``training`` says otherwise. Submodules the
    forward never calls are absent. A forward that fails is a ``ShapePropagationError``.
    """
    probe = deepcopy_module(model)
    if training is not None:
        probe.train(training)
    paths = tuple(paths)
    calls: dict[str, Call] = {}

    def recorder(path: str):
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls.setdefault(path, Call(_detached(args), _detached(kwargs)))
            if stop_early and len(calls) == len(paths):
                raise _AllCaptured

        return record

    for path in paths:
        probe.get_submodule(path).register_forward_pre_hook(recorder(path), with_kwargs=True)
    try:
        probe(*inputs_on(device_of(probe), as_tuple(example_inputs)))
    except _AllCaptured:
        pass
    except Exception as error:
        raise _forward_failed(model, probe.training, error) from error
    return calls


def _detached(value: Any) -> Any:
    """Copies of the tensors in ``value``: later in-place ops of the forward cannot change them."""
    return tree_map(lambda x: x.detach().clone() if torch.is_tensor(x) else x, value)


def _forward_failed(model: nn.Module, training: bool, error: Exception) -> ShapePropagationError:
    mode = "train" if training else "eval"
    hint = (" In train mode, models that compute their loss in forward (detection) need their targets: "
            "pass (images, targets), or call model.eval() first." if training else "")
    return ShapePropagationError(
        f"running {type(model).__name__} ({mode} mode) on the example inputs, to capture what its submodules "
        f"receive, failed: {type(error).__name__}: {error}\nCheck that the example inputs fit its forward: a "
        "tensor, or a tuple of positional arguments (a list of images goes in a tuple: (images,))." + hint
    )


def require_reached(model: nn.Module, paths: Iterable[str], calls: dict[str, Call]) -> None:
    missing = [path for path in paths if path not in calls]
    if missing:
        mode = "train" if model.training else "eval"
        reached = [name for name, _ in model.named_children() if name in calls]
        raise SubmoduleError(
            f"submodule '{missing[0]}' ({type(model.get_submodule(missing[0])).__name__}) was not reached by the "
            f"forward of {type(model).__name__} on the example inputs ({mode} mode): it is never called, so there "
            "is nothing to compile it on. Pick a submodule that forward calls"
            + (f", e.g. {reached}." if reached else ".")
        )


def call_inputs(module: nn.Module, call: Call, path: str) -> tuple[tuple, dict[str, Any]]:
    """``(tensor inputs, fixed arguments)`` to trace ``module`` as ``call`` called it.

    Leading tensor arguments become the graph's inputs; other values (None, numbers, flags) are
    fixed as concrete arguments. A list or dict of tensors cannot be a traced input here.
    """
    try:
        signature = inspect.signature(module.forward)
        bound = signature.bind(*call.args, **call.kwargs)
    except (TypeError, ValueError):
        return call.args, {}
    inputs: list[Any] = []
    fixed: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        positional = kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if torch.is_tensor(value) and positional and not fixed:
            inputs.append(value)
        elif any(torch.is_tensor(x) for x in tree_leaves(value)) or torch.is_tensor(value):
            raise SubmoduleError(
                f"submodule '{path}' ({type(module).__name__}) is called with {_kind_of(value)} as `{name}`; "
                "a compiled submodule takes tensors as its leading arguments (other arguments are fixed to the "
                "values captured). Compile a submodule called with tensors, e.g. one inside it."
            )
        else:
            fixed[name] = value
    return tuple(inputs), fixed


def _kind_of(value: Any) -> str:
    return "a tensor after a fixed argument" if torch.is_tensor(value) else f"a {type(value).__name__} of tensors"


# ------------------------------------------------------------- leaves and masks


def leaves_within(leaf_modules: Sequence[Any], path: str, model: nn.Module) -> tuple[Any, ...]:
    """The leaves that concern submodule ``path``: module paths (given from the whole model) under it,
    made relative; classes and class names it holds."""
    prefix = path + "."
    part = model.get_submodule(path)
    paths = {name for name, _ in model.named_modules(remove_duplicate=False)}
    classes = {name for m in part.modules() for name in (type(m).__name__, f"{type(m).__module__}.{type(m).__qualname__}")}
    kept: list[Any] = []
    for leaf in leaf_modules:
        if not isinstance(leaf, str):
            kept.append(leaf)
        elif leaf.startswith(prefix):
            kept.append(leaf[len(prefix):])
        elif leaf not in paths and leaf in classes:
            kept.append(leaf)
    return tuple(kept)


def recipes_by_submodule(model: nn.Module, recipe: Recipe, paths: Sequence[str]) -> dict[str, Recipe]:
    """Each submodule's recipe: the same passes, with the masks that name its weights (keys made relative).

    Masks are keyed by the whole model's parameter names, as ``model.state_dict()`` spells them;
    ``from_prune`` / ``from_zeros`` read each submodule's own weights.
    """
    options = recipe.options("masks")
    base = recipe.replace(trace=None)  # leaves are given to each submodule's trace, relative to it
    if options is None or (isinstance(options.source, str) and options.source in SOURCES_FROM_MODEL):
        return {path: base for path in paths}
    masks = resolve_source(model, options)
    outside = [name for name in masks if not within(name, paths)]
    if outside:
        raise MaskError(
            f"{len(outside)} masks name weights outside the compiled submodules {list(paths)}, e.g. '{outside[0]}'."
            + did_you_mean(outside[0], dict(model.named_parameters()))
            + " Masks apply inside the compiled part only: drop them, or compile their submodule too (submodule=[...])."
        )
    recipes: dict[str, Recipe] = {}
    for path in paths:
        prefix = path + "."
        own = {name[len(prefix):]: mask for name, mask in masks.items() if name.startswith(prefix)}
        recipes[path] = base.replace(masks=dataclasses.replace(options, source=own) if own else None)
    return recipes


# ----------------------------------------------------- what to suggest instead


def traceable_parts(model: nn.Module, example_inputs: Any, leaf_modules: Sequence[Any], targets: Sequence[str] | None) -> str:
    """A sentence naming the largest parts of ``model``, at any depth, that trace on their own and that
    ``compile(submodule=...)`` accepts, with how to compile them; '' when no module could be one.

    ``targets``: the recipe's ghost_skip site kinds (None: no ghost_skip), so a part is suggested only
    where the recipe finds something to wrap. Inputs are captured in one eval-mode forward (no targets
    needed); parts are traced and shaped (no passes run), largest first, and one that does not trace
    is searched in turn.
    """
    candidates = [path for path, module in _named_tree(model) if _could_be_compiled(module)]
    if not candidates:
        return ""
    try:
        calls = capture_calls(model, example_inputs, candidates, stop_early=False, training=False)
    except SurgeryError as error:
        if device_of(model).type == "meta":
            return f"To have the parts that trace on their own listed, compile on a real device: {advice.real_device()}."
        cause = root_cause(error)
        return (f"No submodule could be tried instead: the model's forward fails on the example inputs in eval mode "
                f"({type(cause).__name__}: {cause}).")
    found = _largest_traceable(model, calls, leaf_modules, targets)
    if not found:
        wanted = "a site of ghost_skip's targets " + str(list(targets)) if targets else "a conv or Linear"
        return f"No part of it with {wanted} traces on its own either ({len(candidates)} modules looked at)."
    listed = ", ".join(f"'{part.path}' ({type(part.module).__name__}, {_parameters(part.module):,} parameters, "
                       f"{part.sites} {_SITES[bool(targets)][part.sites > 1]})" for part in found)
    return f"These parts trace on their own: {listed}. {advice.compile_parts([part.path for part in found])}"


@dataclass(frozen=True)
class _Part:
    path: str
    module: nn.Module
    sites: int  # call sites the recipe reaches: of ghost_skip's targets, else every conv and Linear


def _largest_traceable(
    model: nn.Module, calls: dict[str, Call], leaf_modules: Sequence[Any], targets: Sequence[str] | None
) -> list[_Part]:
    """The largest disjoint parts that trace and hold a site the recipe reaches, largest first: a heap by
    parameter count, where a part that does not trace (or is never called itself, as a ModuleList) gives
    way to its children."""
    order = itertools.count()  # ties by size go in tree order, and modules are never compared
    queue = [(-_parameters(m), next(order), path, m) for path, m in model.named_children()]
    heapq.heapify(queue)
    found: list[_Part] = []
    tried = 0
    while queue and tried < MAX_TRIED and len(found) < SUGGESTED_CHILDREN:
        _, _, path, module = heapq.heappop(queue)
        if not _could_be_compiled(module):
            continue
        part = None
        if path in calls:
            tried += 1
            part = _traced_part(module, calls[path], path, leaves_within(leaf_modules, path, model), targets)
        if part is not None:
            found.append(part)
            continue
        for name, child in module.named_children():
            heapq.heappush(queue, (-_parameters(child), next(order), f"{path}.{name}", child))
    return found


def _traced_part(
    module: nn.Module, call: Call, path: str, leaf_modules: Sequence[Any], targets: Sequence[str] | None
) -> _Part | None:
    """The part ``path`` traced and shaped as compile would; None if that fails or the recipe would find
    nothing to wrap in it (its layers all sit in leaves, or are of kinds ghost_skip does not target)."""
    try:
        inputs, fixed = call_inputs(module, call, path)
        gm = trace_modes(module, leaf_modules, fixed or None, num_inputs=len(inputs), example_inputs=inputs)
        with editing(gm):
            propagate_shapes(gm, inputs)  # eval mode, no grad: the module's statistics are untouched
            kinds = site_kinds(gm)
    except Exception:  # a probe: any failure (fx's codegen can write invalid Python for fixed defaults) means "not this part"
        return None
    sites = sum(1 for kind in kinds if targets is None or kind in targets)
    return _Part(path, module, sites) if sites else None


def _could_be_compiled(module: nn.Module) -> bool:
    """compile refuses a single conv / Linear (the passes wrap it from outside); a module without one has
    nothing for a recipe to reach."""
    return not isinstance(module, STRUCTURAL_LEAVES) and any(isinstance(m, STRUCTURAL_LEAVES) for m in module.modules())


def _named_tree(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(path, m) for path, m in model.named_modules(remove_duplicate=False) if path]


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
