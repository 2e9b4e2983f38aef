"""``trace``: a model to an fx graph, the model left as it was, errors that say which module broke and how to fix it.

The tracer (leaves, Proxies) is ``surgery.fx.tracer``'s; a trace specialized to the inputs' shapes
is ``surgery.fx.concrete``'s. fx traces by running the model's own forward on Proxies; every trace keeps the model's
Python state (``surgery.fx.python_state``): what the forward did to caches, counters, hooks
and flags is undone, and what cannot be undone is refused.

Where Python needs a concrete value of a Proxy (``if``, ``int()``, ``len()``, an index), the
tracer raises ``ConcreteValueNeeded``: a model that fails that way can be traced again
specialized to its example inputs' shapes and dtypes (``surgery.fx.concrete``).
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from surgery import advice
from surgery.errors import TraceError, did_you_mean
from surgery.fx.concrete import ConcreteTracer, specialize_graph
from surgery.fx.tracer import ConcreteValueNeeded, SurgeryTracer, explain_trace_failure
from surgery.fx.python_state import PythonState, first_few, refuse_stale_proxies, require_no_proxies_left

TRACE_OPTIONS_KEY = "surgery.trace_options"  # gm.meta: how the graph was traced (TraceOptions)



@dataclass(frozen=True)
class TraceOptions:
    """How a model was traced; kept in the manifest so ``verify`` can trace the original the same way."""

    leaf_modules: tuple[Any, ...] = ()
    concrete_args: dict[str, Any] | None = None
    autowrap_functions: tuple[Any, ...] = field(default=())
    num_inputs: int | None = None
    specialized_to: Any = None  # surgery.fx.specialization.Specialization: the input shapes and dtypes the graph holds



def trace(
    model: nn.Module,
    leaf_modules: Sequence[Any] = (),
    concrete_args: dict[str, Any] | None = None,
    autowrap_functions: Sequence[Any] = (),
    num_inputs: int | None = None,
    record_frames: bool = False,
    specialized_to: Any = None,
) -> fx.GraphModule:
    """Trace ``model`` into an ``fx.GraphModule`` whose state_dict keys equal the model's.

    ``leaf_modules`` are module classes, class names or qualified module paths to keep
    opaque; ``concrete_args`` fixes forward arguments that drive Python control flow.
    The graph is the model as called with ``num_inputs`` positional tensors: forward
    parameters after those that have defaults (``mask=None`` ...) are fixed to them
    (default: every parameter with a default), and ``**kwargs`` is empty. A forward
    wrapped by a ``functools.wraps`` decorator is traced as the function it wraps. Works
    for models on any device, the meta device included (tracing runs no kernels). Raises
    ``TraceError`` naming the module and source line where tracing broke.

    The model is left as it was: what its forward did to Python state while traced
    (caches, counters, hooks, flags, new attributes, on every module) is undone. A forward
    that adds, replaces or marks parameters, buffers or submodules, or stores traced values
    where they cannot be put back, is refused with a ``TraceError``; so is a model holding
    Proxies an earlier trace left behind. The graph module shares the model's parameters.
    ``record_frames`` keeps the model's frames each node was made in (``node.meta[FRAMES_KEY]``).

    ``specialized_to`` (a ``surgery.fx.specialization.Specialization``: input shapes and dtypes) traces with
    concrete values for every shape and dtype the forward reads in Python; the graph holds those
    values and checks, when called, that its inputs have the traced shapes and dtypes.
    """
    check_leaf_names(model, leaf_modules)
    refuse_stale_proxies(model)
    concrete_args = {**_defaults_beyond(model, num_inputs), **(concrete_args or {})} or None
    tracer = _tracer(model, leaf_modules, autowrap_functions, specialized_to)
    tracer.record_frames = record_frames
    state = PythonState(model)
    try:
        graph = tracer.trace(model, concrete_args)
        if specialized_to is not None:
            specialize_graph(graph, tracer)
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except TraceError:
        raise
    except Exception as error:
        raise explain_trace_failure(error, "", model) from error
    finally:  # the forward ran on the user's model: leave it as it was
        constants = state.added_to_root()  # fx parks tensor constants on the traced model itself
        changes = state.registered_changes()
        state.restore()
    if changes:
        raise _registered_state_changed(changes, model, tracer)
    require_no_proxies_left(model)
    gm._non_persistent_buffers_set.update(constants)  # trace-time constants, not state
    mirror_module_tree(gm, model)
    _fixed_arguments_keep_their_names(gm, concrete_args or {})
    _functional_dropout_to_modules(gm, model.training)
    gm.meta[TRACE_OPTIONS_KEY] = TraceOptions(
        tuple(leaf_modules), concrete_args, tuple(autowrap_functions), num_inputs, specialized_to
    )
    return gm


def _tracer(model: nn.Module, leaf_modules: Sequence[Any], autowrap_functions: Sequence[Any],
            specialized_to: Any) -> SurgeryTracer:
    if specialized_to is None:
        return SurgeryTracer(leaf_modules, autowrap_functions)
    return ConcreteTracer(specialized_to, _device_of(model), leaf_modules, autowrap_functions)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def needs_concrete_values(error: BaseException) -> bool:
    """Whether tracing failed because Python needed a concrete value of a Proxy (any error in the chain)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ConcreteValueNeeded):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _fixed_arguments_keep_their_names(gm: fx.GraphModule, concrete_args: dict[str, Any]) -> None:
    """fx renames a fixed argument's input (``scale`` -> ``scale_1``) and gives it the original
    default, so a caller passing ``scale=2.0`` by keyword (or relying on the default of a value
    fixed to something else) fails. Give each its own name back and the fixed value as default."""
    targets = {node.target for node in gm.graph.nodes if node.op == "placeholder"}
    changed = False
    for node in gm.graph.nodes:
        name = node.target.rsplit("_", 1)[0] if node.op == "placeholder" else None
        if name in concrete_args and name not in targets and concrete_args[name] is not fx.PH:
            node.target, node.args = name, (concrete_args[name],)
            changed = True
    if changed:
        gm.recompile()


# F.dropout(x, p, training=self.training) freezes the mode it was traced in; these follow .train().
_DROPOUT_MODULES = {
    F.dropout: nn.Dropout,
    F.dropout1d: nn.Dropout1d,
    F.dropout2d: nn.Dropout2d,
    F.dropout3d: nn.Dropout3d,
    F.alpha_dropout: nn.AlphaDropout,
    F.feature_alpha_dropout: nn.FeatureAlphaDropout,
}
FUNCTIONAL_MODULES_ROOT = "_functional"


def _functional_dropout_to_modules(gm: fx.GraphModule, traced_training: bool) -> None:
    """Replace functional dropouts whose ``training`` was the traced mode by torch.nn's modules.

    Without this, a model traced in train mode keeps dropping out in eval. The modules
    hold no state, so the state_dict is unchanged.
    """
    replaced = 0
    for node in list(gm.graph.nodes):
        module_class = _DROPOUT_MODULES.get(node.target) if node.op == "call_function" else None
        if module_class is None:
            continue
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        bound.apply_defaults()
        options = bound.arguments
        if options["training"] is not traced_training or not isinstance(options["p"], (int, float)):
            continue
        if not hasattr(gm, FUNCTIONAL_MODULES_ROOT):
            gm.add_module(FUNCTIONAL_MODULES_ROOT, nn.Module())
        getattr(gm, FUNCTIONAL_MODULES_ROOT).add_module(node.name, module_class(options["p"], bool(options["inplace"])))
        with gm.graph.inserting_before(node):
            replacement = gm.graph.call_module(f"{FUNCTIONAL_MODULES_ROOT}.{node.name}", (options["input"],))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
        replaced += 1
    if replaced:
        gm.recompile()


def check_leaf_names(model: nn.Module, leaf_modules: Sequence[Any]) -> None:
    """A leaf given by name must name a module path or a module class in the model."""
    names = [x for x in leaf_modules if isinstance(x, str)]
    if not names:
        return
    known = {path for path, _ in model.named_modules() if path}
    for module in model.modules():
        cls = type(module)
        known |= {cls.__name__, f"{cls.__module__}.{cls.__qualname__}"}
    for name in names:
        if name not in known:
            raise TraceError(
                f"leaf '{name}' names no module path or module class in {type(model).__name__}."
                + did_you_mean(name, known)
                + " Give a qualified path like 'layer1.0' or a class name like 'BasicBlock'."
            )


def _defaults_beyond(model: nn.Module, num_inputs: int | None) -> dict[str, Any]:
    """Defaults of the forward parameters a call with ``num_inputs`` positional inputs leaves out."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {
        p.name: p.default
        for i, p in enumerate(named)
        if p.default is not p.empty and (num_inputs is None or i >= num_inputs or p.kind is p.KEYWORD_ONLY)
    }


def trace_options_of(gm: fx.GraphModule) -> TraceOptions:
    return gm.meta.get(TRACE_OPTIONS_KEY, TraceOptions())


def mirror_module_tree(gm: fx.GraphModule, model: nn.Module) -> None:
    """Make ``gm``'s module tree the model's own, including what the graph never touches.

    fx copies only the modules and tensors the graph references and makes up plain
    containers for the paths in between. Those containers are swapped for the
    original modules (same objects, so the same tensors), and unreferenced modules,
    parameters and buffers are adopted: the state_dict keys, shapes and version
    metadata then equal the original's, and a Linear read only through
    ``get_attr`` (e.g. ``attn.qkv.weight``) is still a Linear that masks can find.
    """
    for path, module in model.named_modules(remove_duplicate=False):
        if not path:
            continue
        parent_path, _, name = path.rpartition(".")
        if _lookup(gm, path) is not module:
            setattr(_lookup(gm, parent_path) if parent_path else gm, name, module)
    _copy_direct_state(model, gm)
    for name in model._modules:  # the model's own order: it decides the names of shared parameters
        gm._modules[name] = gm._modules.pop(name)
    # state_dict() records the root's _version, and a class's _load_from_state_dict may read it
    # (MNASNet does): report the original class's. State-dict hooks survive GraphModule deepcopy.
    gm.register_state_dict_post_hook(functools.partial(_report_version, model._version))


def _report_version(version: int, module, state_dict, prefix, local_metadata) -> None:
    local_metadata["version"] = version


def _lookup(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _copy_direct_state(source: nn.Module, target: nn.Module) -> None:
    for name, param in source.named_parameters(recurse=False):
        if name not in target._parameters:
            target.register_parameter(name, param)
    for name, buf in source.named_buffers(recurse=False):
        if name not in target._buffers:
            persistent = name not in source._non_persistent_buffers_set
            target.register_buffer(name, buf, persistent=persistent)


# ------------------------------------------------------------- refusing what cannot be traced faithfully


def _registered_state_changed(changes: list[tuple[str, str]], model: nn.Module, tracer: SurgeryTracer) -> TraceError:
    listed = first_few([what for _, what in changes], "; ")
    path = _forward_to_blame(changes[0][0], model, tracer)
    if path:
        cls = type(model.get_submodule(path))
        where = f"inside module `{path}` ({cls.__module__}.{cls.__qualname__})"
        fix = ("Fix: keep the module whose forward makes that change opaque as a leaf "
               f"({advice.leaf(path)}), or make the change in __init__.")
    else:
        cls = type(model)
        where = f"in the model's own forward ({cls.__module__}.{cls.__qualname__})"
        fix = "Fix: make that change in __init__ (the top-level forward cannot be a leaf)."
    return TraceError(
        f"tracing changed the model's parameters, buffers or submodules {where}: {listed}. The change has been "
        f"undone, and a graph traced through it would not match the model.\n{fix} State a forward creates lazily "
        "on its first call exists once the model has run: call the model once before tracing."
    )


def _forward_to_blame(path: str, model: nn.Module, tracer: SurgeryTracer) -> str:
    """The innermost module at or above ``path`` whose forward the trace ran (not a leaf); '' for the root."""
    while path:
        if not tracer.is_leaf_module(model.get_submodule(path), path):
            return path
        path = path.rpartition(".")[0]
    return ""
