"""Small helpers the graph passes share: module lookup, ghost naming, shapes, inputs."""

from __future__ import annotations

import contextlib
import copy
import io
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.immutable_collections import immutable_dict, immutable_list
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils._pytree import tree_leaves, tree_map

from surgery.errors import ShapePropagationError
from surgery.fx.meta_values import memoized


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node calls, else None."""
    if node.op != "call_module":
        return None
    return gm.get_submodule(node.target)


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The output shape shape-propagation recorded for ``node`` (None if not a single tensor)."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def first_input(node: fx.Node) -> Any:
    """The first (data) argument of a call node: ``args[0]`` or ``kwargs['input']``."""
    if node.args:
        return node.args[0]
    return node.kwargs.get("input")


def as_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)


def scalar_loss(output: Any) -> torch.Tensor:
    """A loss that touches every floating output tensor (models may return tuples or dicts)."""
    return sum(t.float().mean() for t in tree_leaves(output) if torch.is_tensor(t) and t.is_floating_point())


def device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def inputs_on(device: torch.device, inputs: Sequence[Any]) -> tuple:
    """Move example tensors to the model's device (meta models get meta inputs), those inside
    lists and dicts too (a detector's images and targets)."""
    return tuple(tree_map(lambda x: x.to(device) if torch.is_tensor(x) else x, list(inputs)))


@contextlib.contextmanager
def in_mode(training: bool, *modules: nn.Module) -> Iterator[None]:
    """Temporarily ``.train(training)`` the modules, restoring each submodule's own flag afterwards."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.train(training)
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def eval_mode(*modules: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Temporarily put modules in eval mode, restoring each submodule's own flag afterwards."""
    return in_mode(False, *modules)


@torch.no_grad()
def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """Record every node's output shape in ``node.meta['tensor_meta']``.

    Runs in eval mode without grad so BatchNorm statistics are not touched. Shapes without arithmetic
    first (a large model's forward at full size costs more than the rest of a compile): on meta tensors,
    else on fake tensors of the model's device (a tensor the forward makes itself, ``torch.arange(n)``,
    is one there too); for real where both fail (an op without a meta kernel, a leaf that reads values).
    ShapeProp prints the traceback of a failing node itself; that print is held back, since the error
    raised here chains the same exception (``surgery --debug`` shows it), and whatever else the run
    wrote to stderr (warnings) passes through when it succeeds.
    """
    held = io.StringIO()
    try:
        with eval_mode(gm), contextlib.redirect_stderr(held):
            if not _propagated_without_data(gm, example_inputs):
                device = device_of(gm)  # a meta model's run is the meta run: memoized as that one is
                _ShapeProp(gm, memoize=device.type == "meta").propagate(*inputs_on(device, example_inputs))
    except Exception as error:
        cause = root_cause(error)
        raise ShapePropagationError(
            f"running the traced {type(gm).__name__} on the example inputs failed: {type(cause).__name__}: {cause}\n"
            f"Check that the example inputs ({_describe_inputs(example_inputs)}) fit the model "
            "(count, shape, dtype). On the meta device, a leaf module whose forward needs real "
            "values cannot run: use a real device."
        ) from error
    sys.stderr.write(held.getvalue())


def _propagated_without_data(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> bool:
    if device_of(gm).type == "meta":
        return False  # the real run is the meta run
    for attempt in (_propagate_on_meta, _propagate_on_fake):
        held = io.StringIO()  # ShapeProp prints a failing node's traceback: not a failure here
        try:
            with contextlib.redirect_stderr(held):
                attempt(gm, example_inputs)
        except Exception:
            continue
        sys.stderr.write(held.getvalue())
        return True
    return False


def _propagate_on_meta(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    state = {f"gm.{name}": torch.empty_like(t, device="meta") for name, t in _state(gm)}
    torch.func.functional_call(_Propagation(gm, memoize=True), state, inputs_on(torch.device("meta"), example_inputs))


def _propagate_on_fake(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    mode = FakeTensorMode(allow_non_fake_inputs=True)  # a tensor constant of the graph joins as it is

    def fake(value: Any) -> Any:
        return mode.from_tensor(value) if torch.is_tensor(value) else value

    state = {f"gm.{name}": fake(t) for name, t in _state(gm)}
    with mode:
        torch.func.functional_call(_Propagation(gm), state, tuple(tree_map(fake, list(example_inputs))))


def _state(gm: fx.GraphModule) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers, a tied one once (``functional_call`` ties its other names to it)."""
    return [*gm.named_parameters(), *gm.named_buffers()]


class _Propagation(nn.Module):
    """Shape propagation as a module call, so ``functional_call`` can hand it meta or fake parameters and buffers."""

    def __init__(self, gm: fx.GraphModule, memoize: bool = False):
        super().__init__()
        self.gm, self.memoize = gm, memoize

    def forward(self, *inputs: Any) -> None:
        _ShapeProp(self.gm, self.memoize).propagate(*inputs)


class _ShapeProp(ShapeProp):
    """ShapeProp handing calls plain lists and dicts: fx stores a node's constant arguments as immutable
    containers, and a wrapped function that edits its list argument in place (torchvision's video Swin
    clamps its window size so) would fail here though the generated code, which rebuilds them, runs.
    On meta tensors (``memoize``), each op's value is shared with the tracer's (``surgery.fx.meta_values``)."""

    def __init__(self, gm: fx.GraphModule, memoize: bool = False):
        super().__init__(gm)
        self.memoize = memoize

    def fetch_args_kwargs_from_env(self, n: fx.Node):
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        return _mutable(args), _mutable(kwargs)

    def call_function(self, target, args, kwargs):
        return self._run("call_function", target, args, kwargs, super().call_function)

    def call_method(self, target, args, kwargs):
        return self._run("call_method", target, args, kwargs, super().call_method)

    def call_module(self, target, args, kwargs):
        return self._run("call_module", target, args, kwargs, super().call_module)

    def _run(self, kind, target, args, kwargs, run):
        if not self.memoize:
            return run(target, args, kwargs)
        return memoized(kind, target, args, kwargs, self.module, lambda: run(target, args, kwargs))


def _mutable(value: Any) -> Any:
    """fx's immutable containers as plain ones; any other value as it is, so a node's output that is a dict
    or list subclass (a Hugging Face ``ModelOutput``, an ``OrderedDict`` with attribute access) stays one."""
    if isinstance(value, immutable_list):
        return [_mutable(v) for v in value]
    if isinstance(value, immutable_dict):
        return {k: _mutable(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(_mutable(v) for v in value)
    return value


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from`` chain: what actually went wrong."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _describe_inputs(inputs: Sequence[Any]) -> str:
    return ", ".join(f"{tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else repr(x) for x in inputs)


def deepcopy_module(module: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """``copy.deepcopy`` that also copes with what models carry around; ``memo``: objects' copies made already.

    * tensors left as plain attributes by autograd (``torch.nn.utils.prune`` leaves
      ``weight = weight_orig * weight_mask`` with a grad_fn) cannot be deep-copied:
      they are copied detached;
    * ``GraphModule.__deepcopy__`` re-adds the root's children by ``named_children()``,
      which drops a module's second name (``self.shared = self.conv``): re-attached.
    """
    clone = copy.deepcopy(module, {**detached_attributes(module), **(memo or {})})
    for name, child in module._modules.items():
        if name not in clone._modules and child is not None:
            first = next(n for n, c in module._modules.items() if c is child)
            clone._modules[name] = clone._modules[first]
    for name in module._modules:  # keep the original order: it names shared parameters
        clone._modules[name] = clone._modules.pop(name)
    return clone


def detached_attributes(module: nn.Module) -> dict[int, torch.Tensor]:
    """A deepcopy memo mapping every non-leaf tensor attribute to a detached copy, also those held in a list
    or dict attribute (RAFT's correlation block keeps its last forward's pyramid as a list). Parameters are
    leaves and submodules are walked on their own: neither is looked into."""
    return {
        id(t): t.detach().clone()
        for sub in module.modules()
        for name, value in vars(sub).items()
        if name not in _NO_TENSOR_ATTRIBUTES and not _empty_container(value)
        for t in tree_leaves(value)
        if torch.is_tensor(t) and not t.is_leaf
    }


_NO_TENSOR_ATTRIBUTES = {"_parameters", "_modules", "training"}


def _empty_container(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple, set)) and not value  # most of a module's: its hook dicts
