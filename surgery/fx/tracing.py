"""Leaf-aware torch.fx tracing with errors that say which module broke and how to fix it.

Leaves (modules kept as one opaque ``call_module`` node) are decided in one place,
``SurgeryTracer.is_leaf_module``:

* torch.nn's own modules (fx's default rule);
* every subclass of a layer type of ``surgery.fx.layers`` (conv 1-3d, transposed or not, and
  ``nn.Linear``: timm's ``StdConv2d``, ``Conv2dSame`` ...), so each stays one node that
  passes can find;
* modules whose behaviour switches on ``self.training`` inside Python code
  (stochastic depth): traced through, that branch would be frozen into the graph;
* timm's own notrace registry (``timm.layers.get_notrace_modules``) and functions;
* whatever the user names, by class, class name or qualified module path.

fx traces by running the model's own forward on Proxies; every trace keeps the model's
Python state (``surgery.fx.python_state``): what the forward did to caches, counters, hooks
and flags is undone, and what cannot be undone is refused.

Where Python needs a concrete value of a Proxy (``if``, ``int()``, ``len()``, an index), the
tracer raises ``ConcreteValueNeeded``: a model that fails that way can be traced again
specialized to its example inputs' shapes and dtypes (``surgery.fx.concrete``).
"""

from __future__ import annotations

import dis
import functools
import inspect
import itertools
import operator
import os
import sys
import traceback
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from surgery import advice
from surgery.errors import TraceError, did_you_mean
from surgery.fx.layers import LAYER_TYPES
from surgery.fx.python_state import PythonState, first_few, refuse_stale_proxies, require_no_proxies_left

# Always one node: passes look these up by type.
STRUCTURAL_LEAVES: tuple[type[nn.Module], ...] = LAYER_TYPES

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep  # not torchvision
# The tracers' own files: an error they raise is reported at the model's line that asked for it.
_TRACER_FILES = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), f) for f in ("tracing.py", "concrete.py"))
TRACE_OPTIONS_KEY = "surgery.trace_options"  # gm.meta: how the graph was traced (TraceOptions)


def _mode_dependent_leaves() -> tuple[type[nn.Module], ...]:
    """Modules that read ``self.training`` in Python; as leaves they keep obeying ``.train()``."""
    leaves: list[type[nn.Module]] = []
    if "torchvision" in sys.modules:  # a model holding torchvision's modules has imported it (seconds to load)
        from torchvision.ops import StochasticDepth

        leaves.append(StochasticDepth)
    layers = _timm_layers()
    if layers is not None:
        leaves += [layers.DropPath, layers.DropBlock2d]
    return tuple(leaves)


def _timm_notrace() -> tuple[tuple[type[nn.Module], ...], tuple[Any, ...]]:
    layers = _timm_layers()
    if layers is None:
        return (), ()
    return tuple(layers.get_notrace_modules()), tuple(f for f in layers.get_notrace_functions() if callable(f))


def _timm_layers() -> Any:
    """``timm.layers`` if timm is already imported, else None: a model holding timm modules or calling
    timm functions has imported timm, and importing it here would add seconds to every trace."""
    if "timm" not in sys.modules:
        return None
    import timm.layers

    return timm.layers


class ConcreteValueNeeded(fx.proxy.TraceError, TypeError, RuntimeError):
    """Python needed a concrete value of a Proxy (a branch, ``int()``, ``len()``, an index, iteration).

    A subclass of what plain fx raises in each of those places (its TraceError, ``int()``'s TypeError,
    ``len()``'s RuntimeError), so code that catches those still does."""


class SurgeryProxy(fx.Proxy):
    """fx's Proxy, with every conversion Python needs a concrete value for routed to the tracer's
    ``concrete_value``, so that a shape-specialized tracer can answer it (``surgery.fx.concrete``)."""

    def __getattr__(self, name: str) -> SurgeryAttribute:
        return SurgeryAttribute(self, name)

    def __len__(self) -> int:
        return self.tracer.concrete_value(self, len)

    def __int__(self) -> int:
        return self.tracer.concrete_value(self, int)

    def __float__(self) -> float:
        return self.tracer.concrete_value(self, float)

    def __index__(self) -> int:
        return self.tracer.concrete_value(self, operator.index)

    def __iter__(self) -> Any:
        """fx's rule: ``a, b = proxy`` unpacks by index; any other iteration asks the tracer. fx disassembles
        the calling function on every call (an attention model unpacks ``x.shape`` in each block); its
        unpacking sites are read once per code object here."""
        caller = sys._getframe(1)
        count = _unpack_counts(caller.f_code).get(caller.f_lasti)
        if count is not None:
            return (self[i] for i in range(count))
        return self.tracer.iter(self)


@functools.cache  # code objects are immutable, and a model has few forwards
def _unpack_counts(code: types.CodeType) -> dict[int, int]:
    """Bytecode offset -> item count of each ``UNPACK_SEQUENCE`` in ``code`` (``frame.f_lasti`` is such an offset)."""
    return {i.offset: i.argval for i in dis.get_instructions(code) if i.opname == "UNPACK_SEQUENCE"}


class SurgeryAttribute(SurgeryProxy, fx.proxy.Attribute):
    """``proxy.shape``, ``proxy.dtype`` ...: fx's lazily recorded attribute, converting as ``SurgeryProxy``."""


@dataclass(frozen=True)
class TraceOptions:
    """How a model was traced; kept in the manifest so ``verify`` can trace the original the same way."""

    leaf_modules: tuple[Any, ...] = ()
    concrete_args: dict[str, Any] | None = None
    autowrap_functions: tuple[Any, ...] = field(default=())
    num_inputs: int | None = None
    specialized_to: Any = None  # surgery.fx.concrete.Specialization: the input shapes and dtypes the graph holds


FRAMES_KEY = "surgery.frames"  # node.meta: (file, line, function) of the model's code that made it, outermost first
_NOT_MODEL_CODE = tuple(os.path.dirname(f) + os.sep for f in (torch.__file__, os.path.abspath(__file__)))  # torch, surgery


class SurgeryTracer(fx.Tracer):
    """An ``fx.Tracer`` that decides leaves in one place and reports failures per module.

    ``record_frames``: each node keeps the frames of the model's code it was made in
    (``node.meta[FRAMES_KEY]``): what ``surgery.fx.branches`` reads. fx's ``record_stack_traces`` formats
    a whole traceback with source lines per node, which costs more than the trace."""

    record_frames = False

    def __init__(self, leaf_modules: Iterable[Any] = (), autowrap_functions: Iterable[Any] = ()):
        timm_modules, timm_functions = _timm_notrace()
        user = list(leaf_modules)
        self.leaf_types = (
            STRUCTURAL_LEAVES
            + _mode_dependent_leaves()
            + timm_modules
            + tuple(x for x in user if isinstance(x, type))
        )
        self.leaf_names = {x for x in user if isinstance(x, str)}
        from surgery.fx.concrete import check_traced_input  # (concrete.py extends this class: imported here)

        # a specialized graph's input check stays one call when its code is traced again (pickling does)
        super().__init__(autowrap_functions=(check_traced_input, *timm_functions, *autowrap_functions))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names:
            return True
        cls = type(m)
        if cls.__name__ in self.leaf_names or f"{cls.__module__}.{cls.__qualname__}" in self.leaf_names:
            return True
        if isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        if self.record_frames:
            node.meta[FRAMES_KEY] = _model_frames(sys._getframe(1))
        return node

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        # fx makes placeholders from the signature a decorator's ``functools.wraps`` exposes, then
        # calls the wrapper, whose ``*args, **kwargs`` receive them positionally: make the placeholders
        # from the wrapped forward's own signature, and call the decorator with them by name, so its
        # own code runs as in a call (transformers' backbone heads force output_hidden_states=True there)
        real = inspect.unwrap(root_fn) if is_module else root_fn
        real = real if isinstance(real, types.FunctionType) else root_fn  # wraps a callable object: fx's way
        fn, args = super().create_args_for_root(real, is_module, concrete_args)
        extra = args[-1] if args and real.__code__.co_flags & inspect.CO_VARKEYWORDS else None
        if isinstance(extra, fx.Proxy) and extra.node.op == "placeholder":
            # the graph is the model called without extra keywords: ``**kwargs`` is {}, not a Proxy
            # that ``self.body(x, **kwargs)`` (transformers' forwards) cannot unpack
            self.graph.erase_node(extra.node)
            args = [*args[:-1], {}]
        if real is not root_fn and not isinstance(self.graph._codegen, fx.graph._PyTreeCodeGen):
            fn = _called_by_name(root_fn, inspect.signature(real))  # (fx flattens pytree arguments itself)
        return fn, args

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        # fx names a parameter read in forward (Swin's bias tables, a ViT's class token) by walking
        # root.named_parameters() on every read: quadratic in the model's size. One table per root instead.
        if isinstance(attr_val, nn.Parameter) and not self.param_shapes_constant:
            name, known = self._parameter_names().get(id(attr_val), (None, None))
            if known is attr_val:
                if name not in parameter_proxy_cache:
                    parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
                return parameter_proxy_cache[name]
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def _parameter_names(self) -> dict[int, tuple[str, nn.Parameter]]:
        if getattr(self, "_names_root", None) is not self.root:
            self._names_root = self.root
            self._names = {id(p): (name, p) for name, p in self.root.named_parameters()}
        return self._names

    def proxy(self, node: fx.Node) -> SurgeryProxy:
        return SurgeryProxy(node, self)

    def concrete_value(self, proxy: fx.Proxy, convert: Any) -> Any:
        """``convert`` (``bool``, ``int``, ``len`` ...) of the value ``proxy`` stands for: a symbolic trace has none."""
        name = getattr(convert, "__name__", str(convert))
        raise ConcreteValueNeeded(f"{name}() of a symbolically traced value: Python needs a concrete value here, "
                                  "which a symbolic trace does not have")

    def to_bool(self, obj: fx.Proxy) -> bool:
        try:
            return super().to_bool(obj)
        except fx.proxy.TraceError as error:  # fx's own: "cannot be used as inputs to control flow"
            raise ConcreteValueNeeded(str(error)) from None

    def iter(self, obj: fx.Proxy):
        try:
            return super().iter(obj)
        except fx.proxy.TraceError as error:
            raise ConcreteValueNeeded(str(error)) from None

    def call_module(self, m: nn.Module, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except TraceError:
            raise  # already explained by the innermost module
        except Exception as error:
            raise _explain(error, self._qualname(m), m) from error

    def _qualname(self, m: nn.Module) -> str:
        try:
            return self.path_of_module(m)
        except NameError:
            return "<a module created inside forward>"


_TRACE_CODES = {fx.Tracer.trace.__code__}


def _model_frames(frame: types.FrameType | None) -> tuple[tuple[str, int, str], ...]:
    """(file, line, function) of each frame from ``frame`` out to the trace's start, outside torch and
    surgery, outermost first."""
    frames = []
    while frame is not None and frame.f_code not in _TRACE_CODES:
        code = frame.f_code
        if not _is_tool_code(code.co_filename):
            frames.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return tuple(reversed(frames))


@functools.lru_cache(maxsize=4096)
def _is_tool_code(file: str) -> bool:
    return os.path.abspath(file).startswith(_NOT_MODEL_CODE)


def _called_by_name(decorated: Any, signature: inspect.Signature) -> Any:
    """A function taking the wrapped forward's arguments positionally (as fx passes them) and calling
    ``decorated`` with them as a call would: ``self`` and positional-only ones by position, the rest by
    name, ``**kwargs`` spread."""
    parameters = list(signature.parameters.values())
    takes_varargs = any(p.kind is p.VAR_POSITIONAL for p in parameters)

    def call(*values: Any) -> Any:
        positional: list[Any] = []
        named: dict[str, Any] = {}
        for i, (p, value) in enumerate(zip(parameters, values)):
            if p.kind is p.VAR_KEYWORD:
                named.update(value)
            elif p.kind is p.VAR_POSITIONAL:
                positional.extend(value)
            elif i == 0 or p.kind is p.POSITIONAL_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and takes_varargs):
                positional.append(value)
            else:
                named[p.name] = value
        return decorated(*positional, **named)

    return call


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

    ``specialized_to`` (a ``surgery.fx.concrete.Specialization``: input shapes and dtypes) traces with
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
            from surgery.fx.concrete import specialize_graph

            specialize_graph(graph, tracer)
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except TraceError:
        raise
    except Exception as error:
        raise _explain(error, "", model) from error
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
    from surgery.fx.concrete import ConcreteTracer  # it extends SurgeryTracer: imported here, not at the top

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


def _explain(error: Exception, qualname: str, module: nn.Module) -> TraceError:
    cls = type(module)
    where = _user_source_line(error)
    if qualname:
        subject = f"module `{qualname}` ({cls.__module__}.{cls.__qualname__})"
        fix = (
            f"Fix: keep it opaque as a leaf ({advice.leaf(qualname)}; its class name {cls.__qualname__} "
            "works too); skips and soft activations then cannot reach inside it. If the branch depends "
            "on a forward argument, fix that argument with concrete_args={...}."
        )
    else:
        subject = f"the model's own forward ({cls.__module__}.{cls.__qualname__})"
        fix = (
            "Fix: the top-level forward cannot be a leaf; fix the forward argument that drives "
            "the branch with concrete_args={...}, or move the untraceable code into a submodule "
            f"and mark that submodule a leaf ({advice.leaf()})."
        )
    message = f"torch.fx could not trace {subject}"
    if where:
        message += f" at {where}"
    message += f":\n  {type(error).__name__}: {error}\n{fix}"
    return TraceError(message)


def _user_source_line(error: Exception) -> str:
    """'file.py:42: `code`' for the innermost frame outside torch itself, or ''."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(_TORCH_DIR) and os.path.abspath(f.filename) not in _TRACER_FILES]
    if not frames:
        return ""
    frame = frames[-1]
    code = f": `{frame.line.strip()}`" if frame.line else ""
    return f"{frame.filename}:{frame.lineno}{code}"
