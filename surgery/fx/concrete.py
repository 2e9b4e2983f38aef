"""Shape-specialized tracing: a trace that knows the shapes and dtypes of what it traces.

torch.fx traces a forward on Proxies, which have no values: Python code that needs one (Hugging
Face's TF-style padding ``int(x.shape[-2])``, ViT's ``if pixel_values.dtype != expected_dtype``,
Swin's ``if width % patch != 0``) cannot be traced. ``ConcreteTracer`` carries, next to every
Proxy, the value it stands for, computed on the meta device as the trace proceeds (shapes and
dtypes, no data, no kernels that write the model's tensors): the inputs are meta tensors of the
example inputs' shapes and dtypes, parameters and buffers meta copies, each recorded op runs on
its inputs' values. Where Python asks for a concrete value (``bool``, ``int``, ``float``,
``len``, an index, iteration), the value is given, and the graph holds the branch and the numbers
of that input shape. A value that depends on a tensor's data (``if x.sum() > 0``) is still refused:
meta tensors have none. This is the technique of transformers' ``HFTracer`` (transformers/utils/fx.py),
which transformers 5 no longer ships, written over ``SurgeryTracer`` so leaves and modes work as before.

The graph is then valid for those input shapes only: ``Specialization`` records them (in the trace
options, so ``verify`` traces the original the same way, and in the manifest), and each input of the
graph is checked on every call (``check_traced_input``): another shape raises ``SpecializedInputError``.
The batch dimension stays free when a trace at another batch size is the same program.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_map

from surgery.fx.meta_values import DEVICE_ATTRIBUTES, memoized
from surgery.fx.specialization import META, Specialization, check_traced_input
from surgery.fx.tracer import SurgeryTracer

# Values that are pure metadata (sizes, flags, dtypes): nodes computing them are dropped when nothing uses them.
_METADATA_TYPES = (int, float, bool, str, torch.Size, torch.dtype, torch.device, type(None))


class _Unknown:
    """The value of a node the meta computation could not produce, and why."""

    def __init__(self, reason: str):
        self.reason = reason


class ConcreteTracer(SurgeryTracer):
    """``SurgeryTracer`` whose Proxies carry their values on the meta device (see the module docstring)."""

    def __init__(self, specialization: Specialization, device: torch.device, leaf_modules: Sequence[Any] = (),
                 autowrap_functions: Sequence[Any] = ()):
        super().__init__(leaf_modules, autowrap_functions)
        self.specialization = specialization
        self.examples = specialization.examples()
        self.device_probe = torch.empty(0, device=device)  # answers .device / .is_cuda as the real tensors would
        self.values: dict[fx.Node, Any] = {}
        self._meta_copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id: (the tensor, kept alive; its copy)
        self._placeholders = 0
        self._running = False  # computing a leaf module's value: its submodules run, nothing is recorded
        self._twins: dict[int, nn.Module] = {}  # leaf modules by id: their meta twins (the modules outlive the trace)

    # ------------------------------------------------------------------ values, as the trace proceeds

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self.values[proxy.node] = self._value(kind, target, args, kwargs)
        return proxy

    def _value(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        if kind == "placeholder":
            return self._placeholder_value()
        if kind == "get_attr":
            return self._on_meta(_attribute(self.root, target))
        try:
            args, kwargs = self._values_of(args), self._values_of(kwargs)
        except _UnknownInput as unknown:
            return unknown.value
        try:
            with torch.no_grad():
                return self._on_meta(self._run(kind, target, args, kwargs))
        except Exception as error:  # e.g. an op without a meta kernel: unknown, an error only if Python asks for it
            return _Unknown(f"computing {kind} {getattr(target, '__name__', target)} on meta tensors failed: "
                            f"{type(error).__name__}: {error}")

    def _placeholder_value(self) -> Any:
        index, self._placeholders = self._placeholders, self._placeholders + 1
        example = self.examples[index] if index < len(self.examples) else None
        return example if example is not None else _Unknown("an input the trace is not specialized to (not a tensor)")

    def _run(self, kind: str, target: Any, args: Any, kwargs: dict) -> Any:
        return memoized(kind, target, args, kwargs, self.root, lambda: self._compute(kind, target, args, kwargs))

    def _compute(self, kind: str, target: Any, args: Any, kwargs: dict) -> Any:
        if kind == "call_module":  # its forward, not its hooks: a trace records a leaf's call, it runs no hooks
            with self._running_for_real():
                return self._meta_twin(self.root.get_submodule(target)).forward(*args, **kwargs)
        if kind == "call_method":
            return self._run_method(target, args, kwargs)
        if target is getattr and torch.is_tensor(args[0]) and args[1] in DEVICE_ATTRIBUTES:
            return getattr(self.device_probe, args[1])
        return target(*args, **_meta_device_keyword(kwargs))

    def _run_method(self, name: str, args: Any, kwargs: dict) -> Any:
        receiver, rest = args[0], args[1:]
        if torch.is_tensor(receiver):
            if name in ("cuda", "cpu"):  # a device move: the value stays on meta
                return receiver
            if name == "get_device":
                return self.device_probe.get_device()
            if name == "to":
                rest = tuple(META if _is_device(a) else a for a in rest)
        return getattr(receiver, name)(*rest, **_meta_device_keyword(kwargs))

    def _meta_twin(self, module: nn.Module) -> nn.Module:
        """A shallow copy of ``module`` (and its submodules) holding meta copies of its parameters and
        buffers: running it computes shapes and leaves the module's own tensors alone."""
        twin = self._twins.get(id(module))
        if twin is None:
            twin = copy.copy(module)
            twin._parameters = {k: self._on_meta(v) for k, v in module._parameters.items()}
            twin._buffers = {k: self._on_meta(v) for k, v in module._buffers.items()}
            twin._modules = {k: self._meta_twin(m) if m is not None else None for k, m in module._modules.items()}
            self._twins[id(module)] = twin
        return twin

    @contextlib.contextmanager
    def _running_for_real(self) -> Iterator[None]:
        """While a leaf's value is computed, fx's patched ``Module.__call__`` and ``__getattr__`` (see
        ``call_module``, ``getattr``) run the module rather than record it. Functions and methods need
        no such care: fx's wrapped functions pass values that hold no Proxy straight through."""
        running, self._running = self._running, True
        try:
            yield
        finally:
            self._running = running

    def call_module(self, m: nn.Module, forward, args, kwargs):
        if self._running:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._running:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def _values_of(self, args: Any) -> Any:
        def value(a: Any) -> Any:
            if isinstance(a, fx.Proxy):
                found = self.values.get(a.node)
                if isinstance(found, _Unknown):
                    raise _UnknownInput(found)
                return found
            return self._on_meta(a) if torch.is_tensor(a) else a

        return fx.node.map_aggregate(args, value)

    def _on_meta(self, value: Any) -> Any:
        """``value`` with every tensor a meta tensor (parameters and buffers: one meta copy each)."""

        def meta(t: Any) -> Any:
            if not torch.is_tensor(t) or t.is_meta:
                return t
            if id(t) not in self._meta_copies:
                self._meta_copies[id(t)] = (t, torch.empty_like(t, device=META))
            return self._meta_copies[id(t)][1]

        return tree_map(meta, value)

    # ------------------------------------------------------------------ where Python needs a value

    def concrete_value(self, proxy: fx.Proxy, convert: Any) -> Any:
        value = self._known(proxy, getattr(convert, "__name__", str(convert)))
        if torch.is_tensor(value) and convert is not len:
            raise fx.proxy.TraceError(
                f"{convert.__name__}() of a tensor: the branch depends on the tensor's data, not only on its shape "
                "or dtype, so even a trace specialized to the input's shape cannot fix it"
            )
        return convert(value)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return self.concrete_value(obj, bool)

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        value = self._known(obj, "iteration")
        if isinstance(value, dict):
            return iter(list(value))
        return iter([obj[i] for i in range(len(value))])  # each item stays in the graph (a free batch stays free)

    def keys(self, obj: fx.Proxy) -> Any:
        value = self._known(obj, "keys")
        return list(value.keys()) if isinstance(value, dict) else super().keys(obj)

    def _known(self, proxy: fx.Proxy, use: str) -> Any:
        value = self.values.get(proxy.node)
        if isinstance(value, _Unknown):
            raise fx.proxy.TraceError(f"{use} of a traced value whose shape-specialized value is unknown: {value.reason}")
        return value


class _UnknownInput(Exception):
    def __init__(self, value: _Unknown):
        super().__init__(value.reason)
        self.value = value


def _attribute(root: nn.Module, target: str) -> Any:
    """The attribute at ``target``, read past fx's patched ``Module.__getattr__`` (which would record it)."""
    value: Any = root
    for name in target.split("."):
        if isinstance(value, nn.Module):
            found = [d[name] for d in (value._parameters, value._buffers, value._modules) if name in d]
            value = found[0] if found else object.__getattribute__(value, name)
        else:
            value = getattr(value, name)
    return value


def _is_device(value: Any) -> bool:
    if isinstance(value, torch.device):
        return True
    if not isinstance(value, str):
        return False
    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        return False
    return True


def _meta_device_keyword(kwargs: dict) -> dict:
    return {**kwargs, "device": META} if kwargs.get("device") is not None else kwargs


# ------------------------------------------------------------------ the graph a specialized trace leaves


def specialize_graph(graph: fx.Graph, tracer: ConcreteTracer) -> None:
    """Drop the metadata nodes Python consumed (``x.dtype != ...`` whose answer became a branch) and
    check each specialized input's shape and dtype before anything else runs."""
    _drop_consumed_metadata(graph, tracer.values)
    _guard_inputs(graph, tracer)
    graph._tracer_cls = SurgeryTracer  # its code reads no shapes: what re-traces it (pickling) needs no values


def _drop_consumed_metadata(graph: fx.Graph, values: dict[fx.Node, Any]) -> None:
    for node in reversed(list(graph.nodes)):
        if node.users or node.op not in ("call_function", "call_method", "get_attr") or node.is_impure():
            continue
        if node.op == "get_attr" or _is_metadata(values.get(node)):
            graph.erase_node(node)


def _is_metadata(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_metadata(v) for v in value)
    return isinstance(value, _METADATA_TYPES)


def _guard_inputs(graph: fx.Graph, tracer: ConcreteTracer) -> None:
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    specs = tracer.specialization.inputs
    anchor = placeholders[-1] if placeholders else None
    for index, (node, spec) in enumerate(zip(placeholders, specs)):
        if spec is None or not node.users:
            continue
        with graph.inserting_after(anchor):
            guard = anchor = graph.call_function(check_traced_input, (node, index, spec.shape, spec.dtype))
        node.replace_all_uses_with(guard, delete_user_cb=lambda user: user is not guard)
