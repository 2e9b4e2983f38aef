"""A model's Python state, kept across anything that runs its forward on Proxies (fx tracing).

fx traces by running the model's own forward on Proxies, so whatever that forward does to
Python state would stay done to the user's model: timm's LeViT caches a Proxy in a dict,
and the next trace reads it back. ``PythonState`` records every module's attributes and
the containers reachable from them, and puts them back; ``proxies_in`` finds Proxies a
trace left where nothing can put them back (or an earlier tracer left behind).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

from surgery import advice
from surgery.errors import TraceError

_REGISTERED = {"_parameters": "parameter", "_buffers": "buffer", "_modules": "submodule"}
_CONTAINERS = (dict, list, set)


class PythonState:
    """The Python state of every module of a model, taken before fx runs its forward on Proxies.

    ``restore`` puts back each module's attributes (dropping those the forward added) and,
    in place, every dict, list and set reachable from them through containers: caches,
    counters, flags, registered hooks. In place, so a container the user holds stays the
    model's. Nothing is copied deeper than that: the traced graph shares the model's
    parameters, as fx's always does, which a deepcopy of the model would not.
    Registered state (parameters, buffers, submodules, and the Python attributes of
    parameters and buffers) is also compared by ``registered_changes``: the graph reads the
    tensors and submodules by name, so a forward that changes them cannot be traced
    faithfully, whether the change is put back or not.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = dict(model.named_modules())
        self.root_attributes = set(vars(model))
        self.registered = {
            path: {kind: dict(getattr(module, kind)) for kind in _REGISTERED} for path, module in self.modules.items()
        }
        self.tensor_attributes = {
            id(tensor): (tensor, dict(vars(tensor)))
            for module in self.modules.values()
            for tensor in (*module._parameters.values(), *module._buffers.values())
            if tensor is not None
        }
        self.containers: dict[int, tuple[Any, list]] = {}
        attributes = [vars(module) for module in self.modules.values()]
        for attrs in attributes:
            self.containers[id(attrs)] = (attrs, list(attrs.items()))
        # the registered dicts are restored from ``registered``: nothing in them to walk (tensors, modules)
        self._record([value for attrs in attributes for key, value in attrs.items() if key not in _REGISTERED])

    def _record(self, values: list[Any]) -> None:
        containers = self.containers
        while values:
            value = values.pop()
            if isinstance(value, _CONTAINERS):
                if id(value) in containers:
                    continue
                if not value:  # most are: a module's hook dicts
                    containers[id(value)] = (value, [])
                    continue
                contents = _contents(value)
                containers[id(value)] = (value, contents)
                values.extend(value.values() if isinstance(value, dict) else contents)
            elif isinstance(value, tuple):  # immutable, but it may hold containers
                values.extend(value)

    def added_to_root(self) -> set[str]:
        return set(vars(self.model)) - self.root_attributes

    def registered_changes(self) -> list[tuple[str, str]]:
        """``(module path, what changed)`` for each parameter, buffer or submodule the forward
        added, removed or replaced, and each parameter or buffer whose Python attributes it changed."""
        changes: list[tuple[str, str]] = []
        for path, module in self.modules.items():
            prefix = f"{path}." if path else ""
            for kind, noun in _REGISTERED.items():
                before, now = self.registered[path][kind], getattr(module, kind)
                for name in dict.fromkeys([*before, *now]):
                    if name not in now:
                        changes.append((path, f"removed {noun} `{prefix}{name}`"))
                    elif name not in before:
                        changes.append((path, f"added {noun} `{prefix}{name}`"))
                    elif now[name] is not before[name]:
                        changes.append((path, f"replaced {noun} `{prefix}{name}` by another object"))
                    elif kind != "_modules" and now[name] is not None:
                        changes += [(path, f"{what} of {noun} `{prefix}{name}`")
                                    for what in self._attribute_changes(now[name])]
        return changes

    def _attribute_changes(self, tensor: torch.Tensor) -> list[str]:
        _, before = self.tensor_attributes[id(tensor)]
        now = vars(tensor)
        added = [name for name in now if name not in before]
        changed = [name for name in before if name not in now or now[name] is not before[name]]
        return ([f"set Python attribute(s) {added}"] if added else []) + (
            [f"changed Python attribute(s) {changed}"] if changed else [])

    def restore(self) -> None:
        for container, contents in self.containers.values():
            if (container or contents) and not _unchanged(container, contents):
                _refill(container, contents)
        for path, module in self.modules.items():
            for kind, before in self.registered[path].items():
                now = getattr(module, kind)
                if not _unchanged(now, list(before.items())):
                    _refill(now, list(before.items()))
        for tensor, attributes in self.tensor_attributes.values():
            state = vars(tensor)
            if not _unchanged(state, list(attributes.items())):
                _refill(state, list(attributes.items()))


def _contents(container: Any) -> list:
    return list(container.items()) if isinstance(container, dict) else list(container)


def _unchanged(container: Any, contents: list) -> bool:
    """Same length and the very same objects (identity: never ``==``, which a Proxy answers with a Proxy)."""
    now = _contents(container)
    if len(now) != len(contents):
        return False
    if isinstance(container, dict):
        return all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(now, contents))
    return all(x is x0 for x, x0 in zip(now, contents))


def _refill(container: Any, contents: list) -> None:
    if isinstance(container, list):
        container[:] = contents
    else:
        container.clear()
        container.update(dict(contents) if isinstance(container, dict) else contents)


@contextlib.contextmanager
def python_state_kept(model: nn.Module) -> Iterator[None]:
    """Run a block that calls ``model``'s forward (another tracer, an exporter) and put back its
    Python state afterwards, registered state included."""
    state = PythonState(model)
    try:
        yield
    finally:
        state.restore()


def refuse_stale_proxies(model: nn.Module) -> None:
    """A Proxy in the model's state, left by an earlier trace (e.g. ``torch.fx.symbolic_trace``), would be
    read back by this one and wire a node of a dead graph into the new one."""
    found = proxies_in(model)
    if found:
        raise TraceError(
            f"{type(model).__name__} holds torch.fx Proxies left by an earlier trace, at {_listed(found)}; tracing "
            "would read them back and build a wrong graph. Fix: clear that state (empty the cache) or build the "
            "model again. (surgery.trace puts a model's state back after tracing; other tracers may not.)"
        )


def require_no_proxies_left(model: nn.Module) -> None:
    """After ``PythonState.restore`` only an object held by a module (not a container) can still hold a Proxy."""
    found = proxies_in(model)
    if not found:
        return
    path = found[0][0]
    fix = (f"keep module `{path}` opaque as a leaf ({advice.leaf(path)})" if path
           else f"move that code into a submodule kept opaque as a leaf ({advice.leaf()})")
    raise TraceError(
        f"tracing left torch.fx Proxies in {type(model).__name__}'s state, at {_listed(found)}: the forward stores "
        f"traced values in an object whose state surgery cannot put back. Fix: {fix}, or keep the value in a dict "
        "or list attribute of the module, which tracing puts back."
    )


def _listed(found: list[tuple[str, str]]) -> str:
    return first_few([f"`{where}`" for _, where in found], ", ")


def first_few(items: list[str], separator: str, shown: int = 3) -> str:
    more = len(items) - shown
    return separator.join(items[:shown]) + (f" (and {more} more)" if more > 0 else "")


def proxies_in(model: nn.Module) -> list[tuple[str, str]]:
    """``(module path, where)`` for each torch.fx Proxy the modules' Python state holds: through containers,
    and one object deep."""
    found: list[tuple[str, str]] = []
    seen: set[int] = set()
    for path, module in model.named_modules():
        stack = [(value, (path, name), 1) for name, value in vars(module).items()
                 if name not in _REGISTERED and not (isinstance(value, _CONTAINERS) and not value)]
        while stack:
            value, steps, objects = stack.pop()
            if isinstance(value, fx.Proxy):
                found.append((path, _spelled(steps)))
            elif id(value) in seen:
                continue
            elif isinstance(value, dict):
                seen.add(id(value))
                stack += [(key, (*steps, " key ", key), objects) for key in value if isinstance(key, fx.Proxy)]
                stack += [(v, (*steps, "[", k), objects) for k, v in value.items()]
            elif isinstance(value, (list, tuple, set)):
                seen.add(id(value))
                stack += [(v, (*steps, "[", i), objects) for i, v in enumerate(value)]
            elif objects and _plain_object(value):
                seen.add(id(value))
                stack += [(v, (*steps, ".", name), objects - 1) for name, v in vars(value).items()]
    return sorted(found)


def _spelled(steps: tuple) -> str:
    """('blocks.0', 'cache', '[', 'cpu') -> "blocks.0.cache['cpu']"; only spelled for what is reported."""
    path, name, *rest = steps
    spelled = f"{path}.{name}" if path else name
    for how, key in zip(rest[::2], rest[1::2]):
        spelled += f"[{key!r}]" if how == "[" else f"{how}{key}" if how == "." else f"{how}{key!r}"
    return spelled


def _plain_object(value: Any) -> bool:
    """An instance with attributes of its own: not a module, tensor, class, Python module or function."""
    if isinstance(value, (nn.Module, torch.Tensor, type, types.ModuleType, types.FunctionType, types.MethodType)):
        return False
    return isinstance(getattr(value, "__dict__", None), dict)
