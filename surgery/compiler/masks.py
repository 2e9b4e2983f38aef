"""Binary weight masks: parametrization, validation, files, and imports from other formats.

A mask is a bool tensor keyed by parameter name (``layer1.0.conv1.weight``). It is
attached with ``torch.nn.utils.parametrize`` so the effective weight is ``w * mask``
in every forward; the stored weight is also zeroed where the mask is 0, so pruned
weights stay exactly zero under any optimizer (weight decay, momentum, Adam).
Removing the parametrization with ``leave_parametrized=True`` bakes the mask in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from surgery.compiler.ghosts import GHOSTS_ROOT
from surgery.compiler.weight_files import read_safetensors
from surgery.errors import MaskError, did_you_mean
from surgery.fx.graph import deepcopy_module
from surgery.fx.layers import PRUNABLE_KINDS
from surgery.version import __version__

PRUNABLE_CHOICES = (*PRUNABLE_KINDS, "all")
MASK_FILE_FORMAT = "tost-surgery-mask"  # the ``format`` metadata of every file save_masks writes (MaskMetadata)
SPARSE_THRESHOLD = 0.7  # export: a weight with at least this fraction of zeros is stored sparse (with sparse=True)


class Mask(nn.Module):
    """Parametrization ``w -> w * mask`` with a persistent bool ``mask`` buffer.

    ``order`` is the owner's parameter order when the mask was attached: baking
    puts the weight back in its place, so state_dict keys keep the original order.
    """

    def __init__(self, mask: torch.Tensor, order: tuple[str, ...] = ()):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.order = tuple(order)
        self.capture_grad = False  # RigL: keep dL/d(w * mask) at every position, pruned ones too
        self.dense_grad: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        masked = torch.where(self.mask, weight, 0)  # w * mask, without turning the mask into floats first
        if self.capture_grad and masked.requires_grad:
            masked.register_hook(self._keep_dense_grad)
        return masked

    def _keep_dense_grad(self, grad: torch.Tensor) -> None:
        grad = grad.detach()
        self.dense_grad = grad if self.dense_grad is None else self.dense_grad + grad


# ------------------------------------------------------------------ which weights


def prunable_weights(model: nn.Module, kinds: Iterable[str] = ("conv", "linear")) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of every prunable weight; ``all`` means every parameter with 2+ dims.

    Parameters of ghost modules are never prunable (they leave with the ghosts), nor are
    the model root's own parameters (``pos_embed``, ``cls_token``).
    """
    kinds = tuple(kinds)
    types = tuple(t for k in kinds if k != "all" for t in PRUNABLE_KINDS[k])
    found: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        parts = module_name.split(".")
        if not module_name or parts[0] == GHOSTS_ROOT or "parametrizations" in parts:
            continue  # the root's own parameters (pos_embed, cls_token) are not weights to prune
        if "all" in kinds:
            chosen = direct_parameters(module, lambda name, p: p.dim() >= 2)
        elif isinstance(module, types):
            chosen = direct_parameters(module, lambda name, p: name == "weight")
        else:
            continue
        for name, param in chosen:
            found[f"{module_name}.{name}" if module_name else name] = param
    return found


def direct_parameters(module: nn.Module, keep):
    """The module's own parameters that ``keep(name, param)``, seen through parametrizations."""
    params = dict(module.named_parameters(recurse=False))
    if parametrize.is_parametrized(module):
        params.update({name: plist.original for name, plist in module.parametrizations.items()})
    return [(name, p) for name, p in params.items() if keep(name, p)]


# ------------------------------------------------------------------- validation


def validate_masks(
    masks: Mapping[str, torch.Tensor], model: nn.Module, kinds: Iterable[str] = ("conv", "linear")
) -> dict[str, torch.Tensor]:
    """Check names, shapes and values; return the masks as bool tensors on each weight's device."""
    weights = prunable_weights(model, kinds)
    all_params = dict(model.named_parameters())
    checked: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if name in all_params and "." not in name:
            raise MaskError(
                f"mask '{name}' names a parameter of the model's top-level module; only weights inside "
                "submodules (convs, linears, ...) can be masked. Drop it from the mask."
            )
        if name not in weights:
            if name in all_params or _unparametrized(name) in weights:
                raise MaskError(
                    f"mask '{name}' names a parameter that is not prunable with prunable={list(kinds)}; "
                    "drop it from the mask or widen prunable (e.g. prunable: [conv, linear] or [all])."
                )
            raise MaskError(
                f"mask '{name}' matches no parameter of {type(model).__name__}."
                + did_you_mean(name, weights)
                + " Mask keys are parameter names as in model.state_dict() (e.g. 'layer1.0.conv1.weight')."
            )
        weight = weights[name]
        mask = torch.as_tensor(mask)
        require_same_shape(name, mask, weight)
        checked[name] = _as_binary(name, mask).to(weight.device)
    return checked


def _unparametrized(name: str) -> str:
    return name.replace(".parametrizations.", ".").removesuffix(".original")


def _as_binary(name: str, mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    if mask.is_meta:
        return mask.to(torch.bool)
    bad = mask[(mask != 0) & (mask != 1)]
    if bad.numel():
        examples = ", ".join(f"{v:g}" for v in bad.flatten()[:3].tolist())
        raise MaskError(
            f"mask '{name}' holds values other than 0 and 1 ({examples}, ...); masks are binary: "
            "threshold scores first, e.g. mask = scores > t."
        )
    return mask.to(torch.bool)


# --------------------------------------------------------------------- attaching


def require_same_shape(name: str, mask: torch.Tensor, weight: torch.Tensor) -> None:
    if tuple(mask.shape) != tuple(weight.shape):
        raise MaskError(f"mask '{name}' has shape {tuple(mask.shape)} but the parameter has shape "
                        f"{tuple(weight.shape)}; was the mask made for another model or num_classes?")


def owner_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


@torch.no_grad()
def attach_mask(model: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Parametrize parameter ``name`` as ``w * mask`` and zero its stored pruned entries."""
    module, attr = owner_of(model, name)
    if parametrize.is_parametrized(module, attr):
        existing = module.parametrizations[attr]
        for p in existing:
            if isinstance(p, Mask):
                p.mask.copy_(mask)
                existing.original.mul_(mask)
                return
    require_same_shape(name, mask, getattr(module, attr))
    own_class(module)
    # unsafe: skip torch's check that the parametrization keeps shape and dtype (it computes w * mask twice);
    # a mask of the weight's shape keeps both
    parametrize.register_parametrization(module, attr, Mask(mask, _parameter_order(module)), unsafe=True)
    module.parametrizations[attr].original.mul_(mask)


def _parameter_order(module: nn.Module) -> tuple[str, ...]:
    """The module's parameter names in registration order, including those already masked."""
    if parametrize.is_parametrized(module):
        for plist in module.parametrizations.values():
            for p in plist:
                if isinstance(p, Mask) and p.order:
                    return p.order
    return tuple(module._parameters)


def masked_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{param_name: mask}`` for every parameter currently masked in ``model``."""
    return {name: mask.mask for name, (mask, _) in mask_parametrizations(model).items()}


def mask_parametrizations(model: nn.Module) -> dict[str, tuple[Mask, nn.Parameter]]:
    """``{param_name: (its Mask, the stored original weight)}``: what dynamic mask methods edit."""
    found: dict[str, tuple[Mask, nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, Mask):
                    found[f"{module_name}.{attr}" if module_name else attr] = (p, plist.original)
    return found


@torch.no_grad()
def bake_masks(model: nn.Module, *, zeroed: frozenset[int] = frozenset()) -> int:
    """Remove every Mask parametrization, leaving ``w * mask`` as a plain parameter.

    The parameter object keeps its identity (``remove_parametrizations`` uses ``set_``),
    so an optimizer holding it keeps its state. Returns how many weights were baked.
    ``zeroed``: ids of stored weights already zero where masked (``baked_copy`` wrote them so).
    """
    baked = 0
    for module_name, module in list(model.named_modules()):
        if not parametrize.is_parametrized(module):
            continue
        own_class(module)
        for attr in list(module.parametrizations.keys()):
            plist = module.parametrizations[attr]
            if not any(isinstance(p, Mask) for p in plist):
                continue
            if not all(isinstance(p, Mask) for p in plist):
                raise MaskError(
                    f"'{module_name}.{attr}' carries other parametrizations besides its mask "
                    f"({[type(p).__name__ for p in plist]}); remove those before de-ghosting."
                )
            order = plist[0].order
            if id(plist.original) not in zeroed:
                for mask in plist:  # w * mask in place: the stored weight becomes the plain parameter as it is
                    plist.original.masked_fill_(~mask.mask, 0)
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            _restore_order(module._parameters, order)
            baked += 1
    return baked


@torch.no_grad()
def baked_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its masks baked: each masked weight written once, as ``where(mask, w, 0)``,
    rather than copied and then zeroed (a large model's bake is bound by memory traffic); masks are not
    copied, since baking drops them."""
    memo: dict[int, object] = {}
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for plist in module.parametrizations.values():
            if len(plist) == 1 and isinstance(plist[0], Mask):
                original, mask = plist.original, plist[0].mask
                written = torch.where(mask, original, original.new_zeros(()), out=torch.empty_like(original))
                memo[id(original)] = nn.Parameter(written, requires_grad=original.requires_grad)
                memo[id(mask)] = mask
    copied = deepcopy_module(model, memo)
    bake_masks(copied, zeroed=frozenset(id(p) for p in memo.values() if isinstance(p, nn.Parameter)))
    return copied


def own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before properties are added or removed.

    ``parametrize`` makes one class per module, but ``copy.deepcopy`` shares it between
    copies (compile's copy, an EMA model): changing one copy would change the other too.
    """
    if not parametrize.is_parametrized(module):
        return
    cls = type(module)
    members = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, members)


def _restore_order(params: dict[str, nn.Parameter | None], order: tuple[str, ...]) -> None:
    """``remove_parametrizations`` re-registers the weight last; put every name back in ``order``."""
    for name in [n for n in order if n in params] + [n for n in params if n not in order]:
        params[name] = params.pop(name)


# ------------------------------------------------------------------------ files


@dataclass(frozen=True)
class MaskMetadata:
    """What a mask file says about its masks: its safetensors metadata, typed; None is "not recorded".

    On disk every entry is a string (a str field as it is, any other value as JSON), so any safetensors
    reader sees it; ``save_masks`` writes it and ``MaskMetadata.read`` checks it for every reader.
    ``extra`` holds the other entries as stored, e.g. ASNI's ``asni.centroids`` and ``asni.signs``.
    """

    method: str | None = None  # the mask method that made the masks ("file": given as a file)
    model: str | None = None  # the spec of the model they were made for
    seed: int | None = None
    target_sparsity: float | None = None
    sparsity: float | None = None  # achieved over the masked weights (save_masks computes it)
    scope: str | None = None  # the budget's scope: global or layer
    distribution: str | None = None  # the layer budgets: uniform, erk, ...
    options: dict[str, Any] | None = None  # the method's own options
    round: int | None = None  # the pruning round (IMP) that made them
    trained: bool | None = None  # the masks a training run ended with
    dense: dict[str, list[int]] | None = None  # prunable weights left dense on purpose: {name: shape}
    format: str | None = None  # MASK_FILE_FORMAT (save_masks sets it)
    version: str | None = None  # the tost-surgery version that wrote the file (save_masks sets it)
    extra: dict[str, str] = field(default_factory=dict)

    def updated(self, **entries: object) -> MaskMetadata:
        """A copy with keyword entries set: the fields by name, any other name into ``extra``."""
        known = {k: v for k, v in entries.items() if k in _FIELD_TYPES}
        extra = {k: _as_text(v) for k, v in entries.items() if k not in _FIELD_TYPES}
        return dataclasses.replace(self, **known, extra={**self.extra, **extra})

    @classmethod
    def read(cls, stored: Mapping[str, str], path: object = "the mask file") -> MaskMetadata:
        """The record a file's metadata holds; a field that does not decode as its type is a ``MaskError``."""
        known = {k: _decoded(k, text, path) for k, text in stored.items() if k in _FIELD_TYPES}
        return cls(**known, extra={k: text for k, text in stored.items() if k not in _FIELD_TYPES})

    def strings(self) -> dict[str, str]:
        """The entries as stored: recorded fields, then ``extra``."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**{k: _as_text(v) for k, v in fields.items() if v is not None}, **self.extra}


_FIELD_TYPES = {name: hint for name, hint in typing.get_type_hints(MaskMetadata).items() if name != "extra"}


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _decoded(name: str, text: str, path: object) -> object:
    """``text`` as field ``name``'s type: a str field's as it is, any other's JSON (``null``: not recorded)."""
    kind = next(t for t in typing.get_args(_FIELD_TYPES[name]) if t is not type(None))
    if kind is str:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    wanted = typing.get_origin(kind) or kind
    accepted = (int, float) if wanted is float else wanted
    if value is None or (isinstance(value, accepted) and (wanted is bool or not isinstance(value, bool))):
        return value
    raise MaskError(f"'{path}' has unreadable '{name}' metadata {text!r} (not {wanted.__name__}); write the file "
                    f"with save_masks(masks, path, {name}=...)" + (", e.g. dense=dense_weights(model, masks)."
                                                                    if name == "dense" else "."))


def save_masks(masks: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: MaskMetadata | None = None,
               **entries: object) -> Path:
    """Write masks as safetensors (bool tensors) with their ``MaskMetadata``: ``metadata`` and/or its fields as
    keywords (method, target_sparsity, model, seed...; other names go into ``extra``), plus the achieved
    ``sparsity`` and the software ``version``. Give ``dense=dense_weights(model, masks)`` when the masks leave
    prunable weights dense on purpose: a file must otherwise cover them all."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {name: torch.as_tensor(m).to(torch.bool).contiguous().cpu() for name, m in masks.items()}
    given = (metadata or MaskMetadata()).updated(**entries)
    record = dataclasses.replace(
        given, format=given.format or MASK_FILE_FORMAT, version=given.version or __version__,
        sparsity=given.sparsity if given.sparsity is not None else round(overall_sparsity(tensors), 6))
    MaskMetadata.read(record.strings(), path)  # a file save_masks writes always reads back
    save_file(tensors, str(path), metadata=record.strings())
    _usual_permissions(path)
    return path


def _usual_permissions(path: Path) -> None:
    """safetensors writes files as 0600; give mask files the mode the user's umask asks for."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load_masks(
    path: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    partial: bool = False,
    spec: str | None = None,
    kinds: Iterable[str] = ("conv", "linear"),
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a mask file: ``(masks, metadata)``, the metadata as stored (checked; ``MaskMetadata.read`` types it).

    With ``model``, check that the masks belong to it (``check_masks_fit``): every mask names one of its
    weights with the same shape and, unless ``partial``, every prunable weight (``kinds``) has a mask or
    is one the file says it leaves dense. With ``spec`` (the model's spec), warn when the file was made
    for another model spec.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"mask file '{path}' does not exist; write one with surgery.compiler.masks.save_masks(...).")
    try:
        masks, metadata = read_safetensors(path)
    except Exception as error:
        raise MaskError(f"'{path}' is not a readable safetensors mask file: {error}") from error
    record = MaskMetadata.read(metadata, path)
    if spec is not None and record.model and record.model != spec:
        warnings.warn(f"mask file '{path}' was made for {record.model}, not for {spec}.", stacklevel=2)
    if model is not None:
        made_for = f" (made for {record.model})" if record.model else ""
        check_masks_fit(masks, model, source=f"mask file '{path}'{made_for}", kinds=kinds, dense=record.dense or {},
                        partial=partial)
    return masks, metadata


def dense_weights(model: nn.Module, masks: Mapping[str, torch.Tensor],
                  kinds: Iterable[str] = ("conv", "linear")) -> dict[str, list[int]]:
    """``{name: shape}`` of the model's prunable weights the masks leave dense (a mask file's ``dense``)."""
    return {name: list(w.shape) for name, w in prunable_weights(model, kinds).items() if name not in masks}


def dense_in(metadata: Mapping[str, str], path: object = "the mask file") -> dict[str, list[int]]:
    """The weights a mask file says it leaves dense on purpose (its ``dense`` metadata), by name with shape."""
    return MaskMetadata.read(metadata, path).dense or {}


def is_mask_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file save_masks wrote (its ``format`` metadata says so)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == MASK_FILE_FORMAT
    except (SafetensorError, OSError):  # not safetensors at all: not a mask file
        return False


def check_masks_fit(
    masks: Mapping[str, torch.Tensor],
    model: nn.Module,
    *,
    source: str = "the masks",
    kinds: Iterable[str] = ("conv", "linear"),
    dense: Iterable[str] = (),
    partial: bool = False,
) -> None:
    """Raise a MaskError listing every mask whose name the model lacks or whose shape differs and,
    unless ``partial``, every prunable weight (``kinds``) with no mask that ``dense`` does not name."""
    shapes = {name: tuple(p.shape) for name, p in _all_weights(model).items()}
    unknown = [name for name in masks if name not in shapes]
    different = [f"{name}: {tuple(m.shape)} in the file, {shapes[name]} in the model"
                 for name, m in masks.items() if name in shapes and tuple(m.shape) != shapes[name]]
    prunable = prunable_weights(model, kinds)
    dense = set(dense)
    missing = [] if partial else [name for name in prunable if name not in masks and name not in dense]
    if not unknown and not different and not missing:
        return
    lines = [f"{source} does not fit {type(model).__name__}:"]
    if unknown:
        lines.append(f"  {len(unknown)} names the model does not have: " + _some(unknown))
    if different:
        lines.append(f"  {len(different)} shapes differ: " + "; ".join(different[:8]) + (" ..." if len(different) > 8 else ""))
    if missing:
        lines.append(f"  {len(missing)} of the model's {len(prunable)} prunable weights have no mask: " + _some(missing))
    lines.append("Make the mask for this model (surgery prune MODEL ...), or build the model the mask was made for "
                 "(same architecture and --num-classes)."
                 + (" To leave the weights without a mask dense, pass --partial-masks (Python: partial=True)."
                    if missing and not unknown and not different else ""))
    raise MaskError("\n".join(lines))


def _some(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def _all_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter by its plain name, masked ones included (``x.weight``, not ``...original``)."""
    return {_unparametrized(name): p for name, p in model.named_parameters()}


# ---------------------------------------------------------------------- imports


def masks_from_prune(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks from ``torch.nn.utils.prune``'s ``<name>_mask`` buffers (``weight_mask`` ...)."""
    masks: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer_name.endswith("_mask") and hasattr(module, buffer_name[: -len("_mask")] + "_orig"):
                param = buffer_name[: -len("_mask")]
                masks[f"{module_name}.{param}" if module_name else param] = buffer.to(torch.bool)
    return masks


def remove_prune_reparametrization(model: nn.Module) -> int:
    """Undo ``torch.nn.utils.prune`` on every module (weights become plain parameters)."""
    from torch.nn.utils import prune

    removed = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
                removed += 1
    return removed


def masks_from_zeros(
    state: nn.Module | Mapping[str, torch.Tensor], kinds: Iterable[str] = ("conv", "linear")
) -> dict[str, torch.Tensor]:
    """Masks from weights whose exact zeros mark pruned entries (only weights holding a zero).

    ``state`` is a model (its prunable weights are read) or a state_dict (every tensor
    with 2+ dims is read).
    """
    if isinstance(state, nn.Module):
        tensors = {n: p.detach() for n, p in prunable_weights(state, kinds).items()}
    else:
        tensors = {n: t for n, t in state.items() if torch.is_tensor(t) and t.dim() >= 2}
    return {n: t != 0 for n, t in tensors.items() if not t.is_meta and bool((t == 0).any())}


def weight_sparsity(model: nn.Module, kinds: Iterable[str] = ("conv", "linear")) -> float:
    """Fraction of exact zeros over the model's prunable weights."""
    weights = [w.detach() for w in prunable_weights(model, kinds).values()]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def overall_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.count_nonzero()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0
