"""How a mask can empty a network, and the one place each way is handled.

**Norm layers at gamma = 0.** timm's ResNets start each residual block's last norm at
gamma = 0 (``zero_init_last``; torchvision's ``zero_init_residual=True`` too). Every conv
of such a branch then gets a zero gradient and zero synaptic flow, so SNIP, GraSP and
SynFlow score it 0 and a global ranking empties it. The papers' networks start every norm
at gamma = 1, so ``find_masks`` scores the methods that score through the network
(``register(..., flow=True)``) under ``norms_at_one``: a norm weight that is 0 everywhere
is 1 while the finder runs and is restored bit for bit after; only the mask changes. A
weight that is 0 in part only is a learned value and is left alone.

**Empty layers and cut paths.** ``check_masks`` lists every prunable layer a mask keeps no
weight of and asks ``cuts_every_path`` whether the mask disconnects the input from the
output; either is a ``MaskError`` unless ``allow_empty_layers`` (then a ``MaskWarning``).
A global ranking can empty a layer; a layer-wise budget keeps at least one weight per
layer (``budget.layer_counts``), so it cannot (it can still, rarely, cut every path).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from surgery.errors import MaskError
from surgery.hooks import TrainerView, TrainingHook
from surgery.compiler.masks import mask_parametrizations
from surgery.fx.graph import deepcopy_module
from surgery.fx.layers import layer_of
from surgery.pruning.budget import weights_of
from surgery.pruning.input_shape import example_shape

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,  # BatchNorm1-3d, SyncBatchNorm, the lazy ones, timm's BatchNormAct2d
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,  # timm's GroupNormAct
    nn.LayerNorm,  # timm's and torchvision's LayerNorm2d
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
SHOWN = 10  # layers named in a message; the rest are counted


class MaskWarning(UserWarning):
    """A mask finder's note: norm weights scored at 1, empty layers let through, a path check skipped."""


# ------------------------------------------------------------------ norms at gamma = 0


def zero_norm_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: weight}`` of every norm layer whose affine weight is 0 everywhere."""
    found = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if isinstance(module, NORM_TYPES) else None
        if weight is not None and not weight.is_meta and weight.numel() and not weight.detach().any():
            found[f"{name}.weight" if name else "weight"] = weight
    return found


@contextlib.contextmanager
def norms_at_one(model: nn.Module, method: str, enabled: bool = True) -> Iterator[list[str]]:
    """Run a finder with every all-zero norm weight of ``model`` at 1; restore each bit for bit after."""
    zeros = zero_norm_weights(model) if enabled else {}
    saved = {name: w.detach().clone() for name, w in zeros.items()}
    try:
        with torch.no_grad():
            for w in zeros.values():
                w.fill_(1.0)
        yield list(zeros)
    finally:
        with torch.no_grad():
            for name, w in zeros.items():
                w.copy_(saved[name])
    if zeros:
        warnings.warn(
            f"mask method '{method}' scored {len(zeros)} norm layers that start at gamma = 0 ({_names(list(zeros))}) "
            "as if they started at gamma = 1, as the papers' networks do: at 0 their branches get no gradient or "
            "flow and would be emptied. The model's weights are unchanged.",
            MaskWarning, stacklevel=3,
        )


# ------------------------------------------------------------------ empty layers, cut paths


@dataclass(frozen=True)
class PathCheck:
    cut: bool | None  # True: no path from input to output survives; None: the check could not run
    detail: str = ""  # cut: the first layer left without signal; None: why the check was skipped


def empty_layers(masks: Mapping[str, torch.Tensor]) -> list[str]:
    return [name for name, mask in masks.items() if not bool(mask.any())]


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], *, what: str, cause: str, allow: bool,
                can_allow: bool, example: torch.Tensor | None) -> list[str]:
    """Refuse (``MaskError``) or, with ``allow``, warn about a mask that empties a layer or cuts every
    path; returns the empty layers. ``what`` names the mask, ``cause`` says how it came to be."""
    empty = empty_layers(masks)
    path = cuts_every_path(model, masks, example)
    if not empty and not path.cut:
        if path.cut is None:
            warnings.warn(f"{what}: the check that the mask leaves a path from input to output was skipped: "
                          f"{path.detail}.", MaskWarning, stacklevel=3)
        return empty
    found = _what_is_wrong(what, empty, len(masks), path)
    if allow:
        warnings.warn(f"{found}; let through (allow_empty_layers).", MaskWarning, stacklevel=3)
        return empty
    raise MaskError(f"{found}. Cause: {cause}. Fix: {_fix(can_allow)}")


def _what_is_wrong(what: str, empty: list[str], total: int, path: PathCheck) -> str:
    text = f"{what} keeps no weight in {len(empty)} of {total} prunable layers: {_names(empty)}" if empty else \
        f"{what} keeps weights in every layer but"
    if path.cut:
        where = f"; the first kept layer left without signal is '{path.detail}'" if path.detail else ""
        return text + ("; and" if empty else "") + (
            " cuts every path from the input to the output (the kept weights give an all-zero output on an all-ones "
            f"input{where}): the network outputs a constant")
    if path.cut is False:
        return text + ("; other paths still connect the input to the output (a residual skip beside an emptied branch "
                       "or shortcut)")
    return text + f" (whether a path from input to output survives is unknown: {path.detail})"


def _fix(can_allow: bool) -> str:
    dense = "keep layers dense (mask.dense_first / mask.dense_last, mask.exclude)"
    if not can_allow:  # a layer-wise budget: allow_empty_layers is refused for it
        return f"lower the sparsity, try another seed, or {dense}."
    return (f"lower the sparsity, rank each layer alone (mask.scope: layer, --scope layer), or {dense}; or, if empty "
            "layers are intended, set mask.allow_empty_layers: true (--allow-empty-layers, find_masks(..., "
            "allow_empty_layers=True)): SynFlow's paper, for one, lets a 1x1 shortcut collapse at >= 99% sparsity, "
            "as its algorithm allows.")


def _names(names: Sequence[str]) -> str:
    more = f" (and {len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def cuts_every_path(model: nn.Module, masks: Mapping[str, torch.Tensor], example: torch.Tensor | None) -> PathCheck:
    """Whether ``masks`` leave no path from ``example`` (an all-ones input) to the output.

    A copy holds the masks as its conv / linear weights, ones as every other weight, zeros as
    biases; norms are identities and every layer's output is made 0/1 (nonzero -> 1), so values
    neither overflow nor cancel: an all-zero output means every path is cut. Should the dense
    network give zeros too (a normalization this copy does not see), the check does not apply.
    """
    if example is None:
        return PathCheck(None, "no input shape is known (give batches, input_shape or example_input)")
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return PathCheck(None, "the model's weights are on the meta device")
    try:
        net, dead = _connectivity_copy(model, masks)
        ones = example.to(next(iter(net.parameters()), example).device)
        with torch.no_grad():
            if not _all_zero(net(ones)):
                return PathCheck(False)
            emptied = set(empty_layers(masks))  # listed already: the first live layer the signal misses says more
            first = next((name for name in dead if name not in emptied), "")
            for w in weights_of(net, masks).values():
                w.fill_(1.0)
            if _all_zero(net(ones)):
                return PathCheck(None, "even the dense network gives an all-zero output on an all-ones input here")
    except Exception as error:  # any model: one that cannot run this way is skipped, not failed
        return PathCheck(None, f"the model does not run on an all-ones input of shape {tuple(example.shape)} "
                               f"({type(error).__name__}: {str(error)[:200]})")
    return PathCheck(True, first)


def _connectivity_copy(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> tuple[nn.Module, list[str]]:
    """The check's copy (see ``cuts_every_path``) and the list its layers append to when their output is all 0."""
    net = deepcopy_module(model).float().eval()
    with torch.no_grad():
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            if tensor.is_floating_point():  # biases (and running means) 0: a constant would fake a path
                leaf = name.rsplit(".", 1)[-1]
                tensor.fill_(0.0 if "bias" in leaf or leaf == "running_mean" else 1.0)
        for name, w in weights_of(net, masks).items():
            w.copy_(masks[name].to(w))
    for parent in list(net.modules()):  # LayerNorm / GroupNorm subtract the mean: a constant input would vanish
        for child_name, child in list(parent.named_children()):
            if isinstance(child, NORM_TYPES):
                setattr(parent, child_name, nn.Identity())
    dead: list[str] = []
    for name, module in net.named_modules():
        module._forward_hooks.clear()  # the user's hooks (counters, feature taps) are not run by a check
        if layer_of(module) is not None:
            module.register_forward_hook(_binarizer(f"{name}.weight" if name else "weight", dead))
    return net, dead


def _binarizer(name: str, dead: list[str]):
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not torch.is_tensor(output):
            return None
        on = output.ne(0).to(output.dtype)
        if not on.any():
            dead.append(name)
        return on

    return hook


def _all_zero(output: Any) -> bool:
    tensors = [t for t in tree_flatten(output)[0] if torch.is_tensor(t) and t.is_floating_point()]
    if not tensors:
        raise TypeError(f"the model returned {type(output).__name__}, no floating tensor")
    return not any(bool(t.ne(0).any()) for t in tensors)


def path_input(model: nn.Module, example: torch.Tensor | None = None, batches=None,
               input_shape: Sequence[int] | None = None) -> torch.Tensor | None:
    """An all-ones input of one example for the path check: shaped like ``example``, else the batches'
    inputs, else SynFlow's ``input_shape`` or its stem default (None when no shape is known)."""
    if example is None and batches:
        example = batches[0][0]
    if example is not None:
        one = example[:1]
        return torch.ones_like(one, dtype=torch.float32 if one.is_floating_point() else one.dtype)
    try:
        return torch.ones((1, *example_shape(model, input_shape, None)))
    except MaskError:
        return None


# ------------------------------------------------------------------ during training: the masks at the end


class EmptyLayerCheck(TrainingHook):
    """``check_masks`` on the masks a ``during`` method ends with (runs after the method's own hooks)."""

    name = "empty_layer_check"
    changes_mask = False

    def __init__(self, model: nn.Module, names: Sequence[str], *, what: str, cause: str, allow: bool, can_allow: bool,
                 example: torch.Tensor | None):
        self.model, self.names, self.example = model, list(names), example
        self.what, self.cause, self.allow, self.can_allow = what, cause, allow, can_allow

    def on_train_end(self, trainer: TrainerView) -> None:
        found = mask_parametrizations(trainer.module)
        masks = {n: found[n][0].mask.detach().cpu() for n in self.names if n in found}
        check_masks(self.model, masks, what=self.what, cause=self.cause, allow=self.allow, can_allow=self.can_allow,
                    example=self.example)
