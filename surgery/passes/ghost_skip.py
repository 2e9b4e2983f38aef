"""Ghost skips (ToST's GSk): ``y + alpha * P(x)`` around every conv, optionally every Linear.

``x`` is the conv's input; ``y`` is the output of the norm layer that directly follows
the conv (or the conv itself when none does), i.e. before the activation, as in the
papers' modified ResNet block. ``P`` is the identity where shapes match; elsewhere a
stride-matched 1x1 conv + BatchNorm (``conv1x1``, the papers' reference), a
parameter-free pool + channel pad/fold (``parameter_free``), or no skip at all
(``none``: identity skips only). Shapes come from the shape propagation that
``surgery.compile`` runs on the example inputs. One ghost per call site.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from surgery.errors import NoTargetsError, SurgeryError
from surgery.ghosts import (
    ConvProjection,
    FeatureProjection,
    GhostSkip,
    LinearProjection,
    ParameterFreeProjection,
)
from surgery.graph import add_ghost, first_input, module_of, shape_of
from surgery.manifest import SkipRecord, ensure_manifest
from surgery.options import check_choice, check_number, check_patterns, check_subset

PROJECTIONS = ("conv1x1", "parameter_free", "none")
TARGETS = ("conv", "linear")

CONV_MODULE_DIMS = ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3))
CONV_FUNCTION_DIMS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
NORM_MODULES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
NORM_FUNCTIONS = (F.batch_norm, F.instance_norm, F.group_norm, F.layer_norm)


@dataclass(frozen=True)
class GhostSkipOptions:
    projection: str = "conv1x1"
    targets: tuple[str, ...] = ("conv",)
    alpha: float = 1.0
    exclude: tuple[str, ...] = ()  # fnmatch patterns over call sites, e.g. "fc", "layer4.*"

    def __post_init__(self):
        check_choice("ghost_skip", "projection", self.projection, PROJECTIONS)
        object.__setattr__(self, "targets", check_subset("ghost_skip", "targets", self.targets, TARGETS))
        object.__setattr__(self, "alpha", check_number("ghost_skip", "alpha", self.alpha))
        object.__setattr__(self, "exclude", check_patterns("ghost_skip", "exclude", self.exclude))


@dataclass
class _Site:
    node: fx.Node
    kind: str  # conv | linear
    name: str
    module: nn.Module | None
    dims: int = 0  # spatial dims of a conv


def ghost_skip(gm: fx.GraphModule, options: GhostSkipOptions = GhostSkipOptions()) -> fx.GraphModule:
    """Add a GhostSkip around every conv (and Linear, with ``targets: [conv, linear]``) call site."""
    manifest = ensure_manifest(gm)
    sites = [site for node in list(gm.graph.nodes) if (site := _site(gm, node, options.targets))]
    manifest.conv_sites = sum(1 for s in sites if s.kind == "conv")
    if not sites:
        raise NoTargetsError(_nothing_found(gm, options, manifest))
    added = 0
    for site in sites:
        if any(fnmatch.fnmatchcase(site.name, pattern) for pattern in options.exclude):
            manifest.skipped.append((site.name, "excluded by ghost_skip.exclude"))
            continue
        added += _add_skip(gm, site, options, manifest)
    if not added:
        raise NoTargetsError(
            f"ghost_skip found {len(sites)} {'/'.join(options.targets)} call sites in {manifest.model} "
            f"but added no skip: {manifest.skipped[:3]}. Loosen ghost_skip.exclude or the projection."
        )
    manifest.passes.append("ghost_skip")
    return gm


def _site(gm: fx.GraphModule, node: fx.Node, targets: tuple[str, ...]) -> _Site | None:
    module = module_of(gm, node)
    if "conv" in targets:
        for cls, dims in CONV_MODULE_DIMS:
            if isinstance(module, cls):
                return _Site(node, "conv", node.target, module, dims)
        if node.op == "call_function" and node.target in CONV_FUNCTION_DIMS:
            return _Site(node, "conv", node.name, None, CONV_FUNCTION_DIMS[node.target])
    if "linear" in targets:
        if isinstance(module, nn.Linear):
            return _Site(node, "linear", node.target, module)
        if node.op == "call_function" and node.target is F.linear:
            return _Site(node, "linear", node.name, None)
    return None


def _add_skip(gm: fx.GraphModule, site: _Site, options: GhostSkipOptions, manifest) -> int:
    x = first_input(site.node)
    anchor = _anchor(gm, site.node)
    xs, ys = shape_of(x), shape_of(anchor)
    if xs is None or ys is None:
        if not isinstance(x, fx.Node) or anchor.meta.get("tensor_meta") is not None:
            manifest.skipped.append((site.name, "input or output is not a single tensor"))
            return 0
        raise SurgeryError(
            f"ghost_skip needs tensor shapes on the graph (none on '{anchor.name}'); run it through "
            "surgery.compile(model, example_inputs, recipe), or call "
            "surgery.graph.propagate_shapes(gm, example_inputs) first."
        )
    projection = _projection(gm, site, xs, ys, options.projection)
    if isinstance(projection, str):  # why no skip fits
        manifest.skipped.append((site.name, projection))
        return 0
    label, module = projection
    ghost = GhostSkip(module, options.alpha).to(_factory(gm, site).get("device"))  # alpha on the conv's device
    target = add_ghost(gm, "skip", site.name, ghost)
    graph = gm.graph
    with graph.inserting_after(anchor):
        skip = graph.call_module(target, (anchor, x))
    anchor.replace_all_uses_with(skip, delete_user_cb=lambda user: user is not skip)
    skip.meta["tensor_meta"] = anchor.meta.get("tensor_meta")
    manifest.skips.append(SkipRecord(site.name, site.kind, target, label, anchor.name, xs, ys))
    return 1


def _anchor(gm: fx.GraphModule, conv: fx.Node) -> fx.Node:
    """The norm node that is the conv's only user, else the conv itself."""
    if len(conv.users) != 1:
        return conv
    (user,) = conv.users
    if first_input(user) is not conv:
        return conv
    module = module_of(gm, user)
    if isinstance(module, NORM_MODULES) and not _fused_activation(module):
        return user
    if user.op == "call_function" and user.target in NORM_FUNCTIONS:
        return user
    return conv


def _fused_activation(norm: nn.Module) -> bool:
    """A norm that also applies an activation (timm's BatchNormAct2d): the skip must go before it."""
    act = getattr(norm, "act", None)
    return isinstance(act, nn.Module) and not isinstance(act, nn.Identity)


def _projection(gm, site: _Site, xs, ys, mode: str) -> tuple[str, nn.Module | None] | str:
    if xs == ys:
        return "identity", None
    if len(xs) != len(ys) or xs[0] != ys[0]:
        return f"input {xs} and output {ys} differ in rank or batch"
    if mode == "none":
        return f"shapes differ ({xs} -> {ys}) and projection is 'none'"
    factory = _factory(gm, site)
    if site.kind == "linear":
        if xs[:-1] != ys[:-1]:
            return f"Linear input {xs} and output {ys} differ beyond the feature dim"
        if mode == "conv1x1":
            return "linear", LinearProjection(xs[-1], ys[-1], **factory)
        return "parameter_free", FeatureProjection(ys[-1])
    if len(xs) != site.dims + 2:
        return f"unbatched input {xs}"
    stride = _stride(site, xs, ys)
    if mode == "conv1x1":
        return "conv1x1", ConvProjection(site.dims, xs[1], ys[1], stride, **factory)
    return "parameter_free", ParameterFreeProjection(site.dims, ys[1], stride)


def _stride(site: _Site, xs, ys) -> tuple[int, ...]:
    """The conv's own stride, else the one its shapes imply."""
    stride: Any = getattr(site.module, "stride", None)
    if stride is None and site.node.op == "call_function":
        stride = site.node.args[3] if len(site.node.args) > 3 else site.node.kwargs.get("stride", 1)
    if isinstance(stride, int):
        stride = (stride,) * site.dims
    if isinstance(stride, (tuple, list)) and all(isinstance(s, int) for s in stride):
        return tuple(stride)
    return tuple(max(1, math.ceil(i / o)) for i, o in zip(xs[2:], ys[2:]))


def _factory(gm: fx.GraphModule, site: _Site) -> dict[str, Any]:
    """device and dtype for a new projection: the conv's weight's, else the model's."""
    weight = getattr(site.module, "weight", None)
    if not torch.is_tensor(weight):
        weight = next(gm.parameters(), None)
    if weight is None:
        return {}
    return {"device": weight.device, "dtype": weight.dtype}


def _nothing_found(gm: fx.GraphModule, options: GhostSkipOptions, manifest) -> str:
    what = " or ".join({"conv": "Conv1d/2d/3d", "linear": "Linear"}[t] for t in options.targets)
    hidden = [u for u in manifest.unreached if u.what == "conv"]
    message = f"ghost_skip found no {what} in {manifest.model}: there is nothing to add skips around."
    if hidden:
        leaves = sorted({u.inside for u in hidden})
        message += f" {len(hidden)} convs hide inside leaf modules ({', '.join(leaves[:5])}); trace through them."
    if options.targets == ("conv",):
        message += " Use ghost_skip: {targets: [conv, linear]} to wrap Linear layers, or drop ghost_skip from the recipe."
    else:
        message += " Drop ghost_skip from the recipe."
    return message
