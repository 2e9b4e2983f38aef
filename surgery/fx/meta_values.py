"""Meta values computed once: a model's traces and shape propagation run the same ops on the same shapes.

A model's traces (each mode; the batch and the batch + 1 that tells whether the batch is free; verify's
traces of the original), its shape propagation and its repeated blocks run the same ops on the same
shapes. torch's meta kernels for most ops are Python reference implementations (torch._refs), slower than
the trace itself (an LSTM's decomposition runs step by step), so values on meta tensors are memoized by
what decides them: a torch op or an nn layer's type, settings and parameter shapes, and the inputs'
shapes, strides and dtypes. Not memoized: in-place methods (``x.resize_`` changes its receiver), a user's
own leaf (it may read anything), a layer with hooks (they may change what it returns), device queries.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Tensor attributes that tell the real device; on meta values they would all say "meta".
DEVICE_ATTRIBUTES = ("device", "is_cuda", "is_cpu", "is_meta")

_MEMO: dict[tuple, Any] = {}
_MEMO_SIZE = 50_000
_PURE_MODULES = {"torch", "torch.functional", "torch.nn.functional", "torch._C._nn", "torch._C._VariableFunctions",
                 "_operator", "operator"}
_PURE_BUILTINS = {getattr, len}
_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format,
            type(Ellipsis))


def memoized(kind: str, target: Any, args: Any, kwargs: dict, root: nn.Module, compute: Callable[[], Any]) -> Any:
    """``compute()``, the op's value on meta tensors, or the value an earlier call with the same key computed."""
    key = _memo_key(kind, target, args, kwargs, root)
    if key is None:
        return compute()
    if key not in _MEMO:
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.clear()
        _MEMO[key] = compute()
    return _MEMO[key]


def _memo_key(kind: str, target: Any, args: Any, kwargs: dict, root: nn.Module) -> tuple | None:
    """What decides the value of this op on meta tensors, hashable; None where that is not known."""
    if kind == "call_module":
        module = root.get_submodule(target)
        if not type(module).__module__.startswith("torch.nn.") or module._forward_hooks or module._forward_pre_hooks:
            return None
        state = tuple((n, _spec(t)) for n, t in itertools.chain(module.named_parameters(), module.named_buffers()))
        what: Any = (type(module), module.extra_repr(), module.training, state)
    elif kind == "call_method":
        if target.endswith("_") or target == "get_device" or not (args and torch.is_tensor(args[0])):
            return None
        what = target
    elif kind == "call_function" and (getattr(target, "__module__", None) in _PURE_MODULES or target in _PURE_BUILTINS):
        if target is getattr and args[1] in DEVICE_ATTRIBUTES:
            return None
        what = target
    else:
        return None
    try:
        return (kind, what, _spec(args), _spec(kwargs))
    except _Unmemoizable:
        return None


class _Unmemoizable(Exception):
    pass


def _spec(value: Any) -> Any:
    """``value`` as a hashable description: a tensor by its shape, strides and dtype."""
    if torch.is_tensor(value):
        if value.layout != torch.strided:
            raise _Unmemoizable
        return ("tensor", tuple(value.shape), value.stride(), value.dtype, value.requires_grad)
    if isinstance(value, _SCALARS):
        return (type(value), value)
    if isinstance(value, slice):
        return ("slice", _spec(value.start), _spec(value.stop), _spec(value.step))
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_spec(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _spec(v)) for k, v in value.items()))
    raise _Unmemoizable
