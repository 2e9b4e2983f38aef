"""Ghost soft neurons (ToST's GSw): replace every ReLU, however it is spelled, by PSwish / Swish / Mish.

``kind`` names one of those, or, from Python, is an ``nn.Module`` class or a function that
builds one (``nn.SiLU``, ``functools.partial(nn.LeakyReLU, 0.2)``: timm's ``get_act_layer``
takes both forms too); each call site gets its own instance inside a ``ModuleActivation``
ghost, which de-ghosts like the others. Records name such a kind by its dotted name.

Spellings covered: ``nn.ReLU`` modules (also one instance called at several sites,
and ``inplace=True``), ``F.relu`` / ``F.relu_``, ``torch.relu`` / ``torch.relu_``,
``Tensor.relu`` / ``Tensor.relu_``. Other activations are left alone unless named in
``targets``. The ghost node keeps the original node's args and kwargs, so the
de-ghost pass restores the exact original node (same op, target, args, kwargs).
"""

from __future__ import annotations

import fnmatch
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from surgery.errors import RecipeError, did_you_mean
from surgery.compiler.ghosts import SOFT_ACTIVATIONS, ModuleActivation, SoftActivation, add_ghost
from surgery.fx.graph import device_of, first_input, module_of
from surgery.compiler.manifest import ActivationRecord, ensure_manifest
from surgery.compiler.options import check_number, check_patterns, check_subset, dotted_name
from surgery.compiler.passes.registry import register


@dataclass(frozen=True)
class _Spellings:
    modules: tuple[type[nn.Module], ...]
    functions: tuple = ()
    methods: tuple[str, ...] = ()


ACTIVATIONS: dict[str, _Spellings] = {
    "relu": _Spellings((nn.ReLU,), (F.relu, F.relu_, torch.relu, torch.relu_), ("relu", "relu_")),
    "relu6": _Spellings((nn.ReLU6,), (F.relu6,)),
    "leaky_relu": _Spellings((nn.LeakyReLU,), (F.leaky_relu, F.leaky_relu_)),
    "elu": _Spellings((nn.ELU,), (F.elu, F.elu_)),
    "gelu": _Spellings((nn.GELU,), (F.gelu,)),
    "silu": _Spellings((nn.SiLU,), (F.silu,)),
    "hardswish": _Spellings((nn.Hardswish,), (F.hardswish,)),
}


ActivationFactory = Callable[[], nn.Module]  # an nn.Module class, or a function that builds one
KIND_FORMS = "from Python it may also be an nn.Module class (e.g. nn.SiLU) or a function returning an nn.Module"


def check_kind(kind: str | ActivationFactory) -> None:
    """A ``RecipeError`` naming the accepted forms unless ``kind`` is a soft activation's name, or builds an
    ``nn.Module`` when called without arguments (tried once here, so a bad factory fails with the recipe)."""
    if isinstance(kind, str):
        if kind not in SOFT_ACTIVATIONS:
            raise RecipeError(f"soft_activation.kind = {kind!r} is not one of {list(SOFT_ACTIVATIONS)}."
                              + did_you_mean(kind, SOFT_ACTIVATIONS) + f" ({KIND_FORMS}.)")
        return
    built_activation(kind)


def built_activation(kind: ActivationFactory) -> nn.Module:
    """``kind()``, once it is an ``nn.Module``; anything else is a ``RecipeError`` naming the option."""
    if isinstance(kind, nn.Module):  # one instance cannot serve every site
        raise RecipeError(f"soft_activation.kind = {kind!r} is a module, not a class or factory; pass "
                          f"nn.{type(kind).__name__} or a function returning a new one (each site gets its own).")
    if not callable(kind):
        raise RecipeError(f"soft_activation.kind = {kind!r} is neither a name from {list(SOFT_ACTIVATIONS)} "
                          f"nor callable; {KIND_FORMS}.")
    try:
        activation = kind()
    except TypeError as error:  # it needs arguments
        raise RecipeError(f"soft_activation.kind = {dotted_name(kind)} cannot be called without arguments "
                          f"({error}); bind them first, e.g. functools.partial(nn.LeakyReLU, 0.2).") from error
    if not isinstance(activation, nn.Module) or isinstance(activation, SoftActivation):
        raise RecipeError(f"soft_activation.kind = {dotted_name(kind)} built a {type(activation).__name__}, not an "
                          f"activation nn.Module; {KIND_FORMS}.")
    return activation


@dataclass(frozen=True)
class SoftActivationOptions:
    kind: str | ActivationFactory = "pswish"
    beta: float = 1.0  # PSwish's starting beta; schedules move it
    targets: tuple[str, ...] = ("relu",)
    exclude: tuple[str, ...] = ()  # fnmatch patterns over sites (module paths or node names)

    def __post_init__(self):
        check_kind(self.kind)
        object.__setattr__(self, "beta", check_number("soft_activation", "beta", self.beta, minimum=0))
        if self.kind != "pswish" and self.beta != 1.0:
            raise RecipeError(
                f"soft_activation.beta applies to kind 'pswish' only ({dotted_name(self.kind)} has no beta to set); "
                "drop beta or use kind: pswish."
            )
        object.__setattr__(self, "targets", check_subset("soft_activation", "targets", self.targets, ACTIVATIONS))
        object.__setattr__(self, "exclude", check_patterns("soft_activation", "exclude", self.exclude))


@register("soft_activation", SoftActivationOptions)
def soft_activation(gm: fx.GraphModule, options: SoftActivationOptions = SoftActivationOptions()) -> fx.GraphModule:
    """Replace each targeted activation call site by a soft-activation ghost."""
    manifest = ensure_manifest(gm)
    spellings = [ACTIVATIONS[t] for t in options.targets]
    found = 0
    for node in list(gm.graph.nodes):
        module = module_of(gm, node)
        if not any(_matches(node, module, s) for s in spellings):
            continue
        found += 1
        site = node.target if node.op == "call_module" else node.name
        if any(fnmatch.fnmatchcase(site, p) for p in options.exclude):
            manifest.skipped.append((site, "excluded by soft_activation.exclude"))
            continue
        _replace(gm, node, module, site, options, manifest)
    if not found:
        warnings.warn(
            f"soft_activation found no {'/'.join(options.targets)} in {manifest.model}; nothing was "
            "replaced. Name other activations in soft_activation.targets (e.g. [relu, gelu]).",
            stacklevel=2,
        )
    manifest.passes.append("soft_activation")
    return gm


def _matches(node: fx.Node, module: nn.Module | None, spellings: _Spellings) -> bool:
    if module is not None:
        return isinstance(module, spellings.modules)
    if node.op == "call_function":
        return any(node.target is f for f in spellings.functions)
    return node.op == "call_method" and node.target in spellings.methods


def _ghost(node: fx.Node, rewired: list[fx.Node], options: SoftActivationOptions) -> SoftActivation:
    original = (node.op, node.target, tuple(u.name for u in rewired))
    if not isinstance(options.kind, str):
        return ModuleActivation(*original, activation=built_activation(options.kind))
    extra = {"beta": options.beta} if options.kind == "pswish" else {}
    return SOFT_ACTIVATIONS[options.kind](*original, **extra)


def _replace(gm, node: fx.Node, module, site: str, options, manifest) -> None:
    graph = gm.graph
    x = first_input(node)
    rewired = _later_readers(node, x) if _is_inplace(node, module) else []
    target = add_ghost(gm, "act", site, _ghost(node, rewired, options).to(device_of(gm)))
    with graph.inserting_before(node):
        replacement = graph.call_module(target, node.args, node.kwargs)
    replacement.meta = dict(node.meta)
    node.replace_all_uses_with(replacement)
    for user in rewired:  # they read x after the in-place original had activated it
        user.replace_input_with(x, replacement)
    graph.erase_node(node)
    manifest.activations.append(ActivationRecord(site, _describe(node, module), target, dotted_name(options.kind)))


def _is_inplace(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return bool(getattr(module, "inplace", False))
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name.endswith("_"):
        return True
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return False
    return bool(bound.arguments.get("inplace", False))


def _later_readers(node: fx.Node, x) -> list[fx.Node]:
    """Nodes after an in-place activation that read its input (and so saw the activated value)."""
    if not isinstance(x, fx.Node) or len(x.users) < 2:
        return []
    readers, current = [], node.next
    while current.op != "root":
        if current in x.users:
            readers.append(current)
        current = current.next
    return readers


def _describe(node: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return f"nn.{type(module).__name__}({module.extra_repr()})"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    fn = node.target
    prefix = "F" if getattr(fn, "__module__", "") == "torch.nn.functional" else "torch"
    return f"{prefix}.{fn.__name__}"
