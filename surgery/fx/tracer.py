"""The tracer: torch.fx's, with leaves decided in one place and Proxies that say where Python needs a value.

Leaves (modules kept as one opaque ``call_module`` node) are decided in
``SurgeryTracer.is_leaf_module``:

* torch.nn's own modules (fx's default rule);
* every subclass of a layer type of ``surgery.fx.layers`` (conv 1-3d, transposed or not, and
  ``nn.Linear``: timm's ``StdConv2d``, ``Conv2dSame`` ...), so each stays one node that
  passes can find;
* modules whose behaviour switches on ``self.training`` inside Python code
  (stochastic depth): traced through, that branch would be frozen into the graph;
* timm's own notrace registry (``timm.layers.get_notrace_modules``) and functions;
* whatever the user names, by class, class name or qualified module path.

Where Python needs a concrete value of a Proxy (``if``, ``int()``, ``len()``, an index), the
tracer raises ``ConcreteValueNeeded``: a model that fails that way can be traced again
specialized to its example inputs' shapes and dtypes (``surgery.fx.concrete``, a subclass).
``surgery.fx.tracing.trace`` runs a trace and keeps the model as it was.
"""

from __future__ import annotations

import dis
import functools
import inspect
import operator
import os
import sys
import traceback
import types
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from surgery import advice
from surgery.errors import TraceError
from surgery.fx.layers import LAYER_TYPES
from surgery.fx.specialization import check_traced_input

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep  # not torchvision
# The tracers' own files: an error they raise is reported at the model's line that asked for it.
_TRACER_FILES = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), f) for f in ("tracing.py", "tracer.py", "concrete.py"))

# Always one node: passes look these up by type.
STRUCTURAL_LEAVES: tuple[type[nn.Module], ...] = LAYER_TYPES


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

FRAMES_KEY = "surgery.frames"  # node.meta: (file, line, function) of the model's code that made it, outermost first
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # surgery/, above fx/
_NOT_MODEL_CODE = (os.path.dirname(torch.__file__) + os.sep, _PACKAGE_DIR + os.sep)  # torch, surgery


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
            raise explain_trace_failure(error, self._qualname(m), m) from error

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


def explain_trace_failure(error: Exception, qualname: str, module: nn.Module) -> TraceError:
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
