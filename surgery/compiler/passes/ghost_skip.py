"""Ghost skips (ToST's GSk): ``y + alpha * P(x)`` around the spatial convs of the network body.

ToST adds a skip "from the input of each (3x3) convolution ... to their output before the
activation". ``x`` is the conv's input; ``y`` is the output of the norm layer that directly
follows the conv (or the conv itself when none does). ``P`` is the identity where shapes
match (``identity: false``: the projection there too, as ToST's code has it); elsewhere a
stride-matched 1x1 conv (``conv1x1``, the papers' reference; followed by
a BatchNorm exactly where the conv itself is followed by one, so no ghost normalizes values
the original does not), a parameter-free pool + channel pad/fold (``parameter_free``), or no
skip at all (``none``: identity skips only). Shapes come from the shape propagation that
``surgery.compile`` runs on the example inputs. One ghost per call site.

Which call sites are wrapped is decided from the graph and the shapes, never from names:
every site has one kind (``SITE_KINDS``, the first that applies), and ``targets`` lists the
kinds to wrap. The default, ``[conv]``, is ToST's placement: the spatial convs of the body.
A conv is ``pooled`` when it reads a globally pooled tensor (an SE gate, a conv head), which
the graph tells (``_pooled_tensors``), not its output's size: a body conv that runs on 1x1
maps at a small input is wrapped as it is at a large one.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from surgery import advice
from surgery.errors import NoTargetsError, SurgeryError
from surgery.compiler.ghosts import (
    ConvProjection,
    FeatureProjection,
    GhostSkip,
    LinearProjection,
    ParameterFreeProjection,
    add_ghost,
)
from surgery.fx.graph import first_input, module_of, shape_of
from surgery.fx.layers import layer_of
from surgery.compiler.manifest import SkipRecord, ensure_manifest
from surgery.fx.modes import EVAL, MODE_KEY, TRAIN
from surgery.compiler.options import check_choice, check_number, check_patterns, check_subset
from surgery.compiler.passes.registry import register

PROJECTIONS = ("conv1x1", "parameter_free", "none")

# A call site's kind: the first entry that applies (a conv is a stem before it is pooled or
# pointwise). ``ghost_skip.targets`` names the kinds to wrap; each value says what the kind is.
SITE_KINDS: dict[str, str] = {
    "stem": "reads a model input (no conv or Linear upstream)",
    "pooled": "reads a globally pooled tensor (SE gate, conv head after the global pool)",
    "pointwise": "a 1x1 conv (kernel 1 in every dimension)",
    "conv": "a spatial conv inside the network",
    "linear": "a Linear layer",
}
TARGETS = tuple(SITE_KINDS)
CONV_KINDS = tuple(kind for kind in SITE_KINDS if kind != "linear")

CONV_FUNCTION_DIMS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
NORM_MODULES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
NORM_FUNCTIONS = (F.batch_norm, F.instance_norm, F.group_norm, F.layer_norm)
# Global pools: an adaptive pool to one position, or one of these reductions over every spatial dim.
ADAPTIVE_POOL_MODULES = (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
ADAPTIVE_POOL_FUNCTIONS = (
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
)
REDUCTION_METHODS = ("mean", "amax", "sum")
REDUCTION_FUNCTIONS = (torch.mean, torch.amax, torch.sum)


@dataclass(frozen=True)
class GhostSkipOptions:
    projection: str = "conv1x1"
    targets: tuple[str, ...] = ("conv",)  # site kinds to wrap: conv stem pointwise pooled linear
    alpha: float = 1.0
    exclude: tuple[str, ...] = ()  # fnmatch patterns over call sites, e.g. "fc", "layer4.*"
    identity: bool = True  # the identity where shapes match (the paper's text); false: project there too (ToST's code)
    fill: float | None = None  # projection weights set to this constant (ToST's code: 1e-4); None: PyTorch's init

    def __post_init__(self):
        check_choice("ghost_skip", "projection", self.projection, PROJECTIONS)
        object.__setattr__(self, "targets", check_subset("ghost_skip", "targets", self.targets, TARGETS))
        object.__setattr__(self, "alpha", check_number("ghost_skip", "alpha", self.alpha))
        object.__setattr__(self, "exclude", check_patterns("ghost_skip", "exclude", self.exclude))
        if self.fill is not None:
            object.__setattr__(self, "fill", check_number("ghost_skip", "fill", self.fill))


@dataclass
class _Site:
    node: fx.Node
    kind: str  # one of SITE_KINDS
    name: str
    module: nn.Module | None
    dims: int = 0  # spatial dims of a conv

    @property
    def is_conv(self) -> bool:
        return self.kind in CONV_KINDS


@register("ghost_skip", GhostSkipOptions)
def ghost_skip(gm: fx.GraphModule, options: GhostSkipOptions = GhostSkipOptions()) -> fx.GraphModule:
    """Add a GhostSkip around every call site whose kind ``options.targets`` names."""
    manifest = ensure_manifest(gm)
    sites = _sites(gm)
    counted = _one_per_mode_pair(sites)
    manifest.conv_sites = sum(1 for s in counted if s.is_conv)
    targeted = [s for s in sites if s.kind in options.targets]
    manifest.untargeted = [(s.name, s.kind) for s in counted if s.kind not in options.targets and s.is_conv]
    if not targeted:
        raise NoTargetsError(_nothing_targeted(sites, options, manifest))
    added = 0
    twins: dict[str, tuple] = {}  # site -> (mode, shapes, ghost) of a skip at a one-mode node (surgery.fx.modes)
    for site in targeted:
        if any(fnmatch.fnmatchcase(site.name, pattern) for pattern in options.exclude):
            manifest.skipped.append((site.name, "excluded by ghost_skip.exclude"))
            continue
        added += _add_skip(gm, site, options, manifest, twins)
    if not added:
        raise NoTargetsError(
            f"ghost_skip found {len(targeted)} call sites of kinds {list(options.targets)} in {manifest.model} "
            f"but added no skip: {manifest.skipped[:3]}. Loosen ghost_skip.exclude or choose another projection."
        )
    manifest.passes.append("ghost_skip")
    return gm


# ------------------------------------------------------------------ which sites, of which kind


def _sites(gm: fx.GraphModule) -> list[_Site]:
    """Every conv and Linear call site, each with its kind, in graph order."""
    sites: list[_Site] = []
    downstream: set[fx.Node] = set()  # nodes some conv or Linear feeds, directly or not
    pooled = _pooled_tensors(gm)
    for node in gm.graph.nodes:
        fed = any(i in downstream for i in node.all_input_nodes)
        site = _layer_site(gm, node)
        if site is not None:
            if site.is_conv:
                site.kind = _conv_kind(gm, node, site, reads_input=not fed, reads_pooled=first_input(node) in pooled)
            sites.append(site)
        if fed or site is not None:
            downstream.add(node)
    return sites


def _one_per_mode_pair(sites: list[_Site]) -> list[_Site]:
    """The sites as the model has them: a layer after a branch on ``self.training`` is one node per mode
    (``surgery.fx.modes``), the k-th call of a module in eval mode the twin of its k-th in train mode (one
    ghost serves both: ``_twin_in_other_mode``), counted once."""
    calls: Counter = Counter()  # (site, mode): that mode's calls so far
    kept = []
    for site in sites:
        mode = site.node.meta.get(MODE_KEY)
        if mode is not None:
            calls[site.name, mode] += 1
            if calls[site.name, mode] <= calls[site.name, EVAL if mode == TRAIN else TRAIN]:
                continue
        kept.append(site)
    return kept


def site_kinds(gm: fx.GraphModule) -> list[str]:
    """The kind of every conv and Linear call site (shapes propagated: they tell a pooled conv)."""
    return [site.kind for site in _sites(gm)]


def _layer_site(gm: fx.GraphModule, node: fx.Node) -> _Site | None:
    module = module_of(gm, node)
    layer = layer_of(module)
    if layer is not None and layer.kind == "conv" and not layer.transposed:  # why not transposed: surgery.fx.layers
        return _Site(node, "conv", node.target, module, layer.dims)
    if node.op == "call_function" and node.target in CONV_FUNCTION_DIMS:
        return _Site(node, "conv", node.name, None, CONV_FUNCTION_DIMS[node.target])
    if layer is not None and layer.kind == "linear":
        return _Site(node, "linear", node.target, module)
    if node.op == "call_function" and node.target is F.linear:
        return _Site(node, "linear", node.name, None)
    return None


def _conv_kind(gm: fx.GraphModule, node: fx.Node, site: _Site, reads_input: bool, reads_pooled: bool) -> str:
    if reads_input:
        return "stem"
    if reads_pooled:
        return "pooled"
    if all(k == 1 for k in _kernel_size(gm, node, site)):
        return "pointwise"
    return "conv"


def _pooled_tensors(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes that hold a globally pooled tensor, from the graph alone (not from the input's size).

    A global pool's output is pooled, and so is what a conv or Linear computes from a pooled
    tensor (an SE gate's second conv reads its first), or any other op from pooled tensors alone
    (parameters aside) without spreading them over more values: an activation, a norm, a view,
    the sum of two pools. The SE's ``x * gate`` reads a feature map too, an upsampling or an
    ``expand`` spreads the values: neither is pooled.
    """
    pooled: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if _layer_site(gm, node) is not None:
            from_pooled = first_input(node) in pooled
        else:
            tensors = [i for i in node.all_input_nodes if i.op != "get_attr" and shape_of(i) is not None]
            output = shape_of(node)
            from_pooled = (
                bool(tensors) and all(i in pooled for i in tensors) and output is not None
                and math.prod(output) <= sum(math.prod(shape_of(i)) for i in tensors)
            )
        if from_pooled or _global_pool(gm, node):
            pooled.add(node)
    return pooled


def _global_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An adaptive pool to one position, or a mean/amax/sum over every spatial dim (keepdim or not)."""
    module = module_of(gm, node)
    if isinstance(module, ADAPTIVE_POOL_MODULES):
        return _one_position(module.output_size)
    if node.op == "call_function" and node.target in ADAPTIVE_POOL_FUNCTIONS:
        return _one_position(node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size"))
    reduction = (node.op == "call_method" and node.target in REDUCTION_METHODS) or (
        node.op == "call_function" and node.target in REDUCTION_FUNCTIONS
    )
    if not reduction:
        return False
    shape = shape_of(first_input(node))
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in dims):
        return False
    return set(range(2, len(shape))) <= {d % len(shape) for d in dims}


def _one_position(output_size: Any) -> bool:
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
    return all(s == 1 for s in sizes)


def _kernel_size(gm: fx.GraphModule, node: fx.Node, site: _Site) -> tuple[int, ...]:
    if site.module is not None:
        return tuple(site.module.kernel_size)
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    shape = shape_of(weight)
    return tuple(shape[2:]) if shape is not None else (0,)  # unknown: not pointwise


# ------------------------------------------------------------------ one skip


def _add_skip(gm: fx.GraphModule, site: _Site, options: GhostSkipOptions, manifest, twins: dict[str, tuple]) -> int:
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
            "surgery.fx.graph.propagate_shapes(gm, example_inputs) first."
        )
    projection = _projection(gm, site, xs, ys, options.projection, options.identity)
    if isinstance(projection, str):  # why no skip fits
        manifest.skipped.append((site.name, projection))
        return 0
    label, module = projection
    if module is not None and options.fill is not None:
        _fill_weights(module, options.fill)
    target = _twin_in_other_mode(site, (xs, ys), twins)
    if target is None:
        ghost = GhostSkip(module, options.alpha).to(_factory(gm, site).get("device"))  # alpha on the conv's device
        target = add_ghost(gm, "skip", site.name, ghost)
        manifest.skips.append(SkipRecord(site.name, site.kind, target, label, anchor.name, xs, ys))
        if MODE_KEY in site.node.meta:
            twins[site.name] = (site.node.meta[MODE_KEY], (xs, ys), target)
    graph = gm.graph
    with graph.inserting_after(anchor):
        skip = graph.call_module(target, (anchor, x))
    anchor.replace_all_uses_with(skip, delete_user_cb=lambda user: user is not skip)
    skip.meta["tensor_meta"] = anchor.meta.get("tensor_meta")
    return 1


def _twin_in_other_mode(site: _Site, shapes: tuple, twins: dict[str, tuple]) -> str | None:
    """The ghost already added where the other mode's program calls the same module on the same shapes.

    In a model with one program per mode (``surgery.fx.modes``), a layer after a branch on ``self.training``
    is one node per mode (its input differs); one ghost for both keeps its projection trained in both."""
    mode = site.node.meta.get(MODE_KEY)
    twin = twins.get(site.name)
    if mode is None or twin is None or twin[0] == mode or twin[1] != shapes:
        return None
    del twins[site.name]  # one node of each mode: a third call of the module gets its own ghost
    return twin[2]


def _norm_after(gm: fx.GraphModule, conv: fx.Node) -> fx.Node | None:
    """The norm node that is the conv's only user and reads it as its input, else None."""
    if len(conv.users) != 1:
        return None
    (user,) = conv.users
    if first_input(user) is not conv:
        return None
    if isinstance(module_of(gm, user), NORM_MODULES):
        return user
    if user.op == "call_function" and user.target in NORM_FUNCTIONS:
        return user
    return None


def _anchor(gm: fx.GraphModule, conv: fx.Node) -> fx.Node:
    """Where the skip lands: the norm right after the conv, else the conv itself."""
    norm = _norm_after(gm, conv)
    if norm is None or _fused_activation(module_of(gm, norm)):
        return conv
    return norm


def _batch_normed(gm: fx.GraphModule, conv: fx.Node) -> bool:
    """True when a BatchNorm (fused with an activation or not) directly normalizes the conv's output."""
    norm = _norm_after(gm, conv)
    if norm is None:
        return False
    return isinstance(module_of(gm, norm), nn.modules.batchnorm._BatchNorm) or norm.target is F.batch_norm


def _fused_activation(norm: nn.Module | None) -> bool:
    """A norm that also applies an activation (timm's BatchNormAct2d): the skip must go before it."""
    act = getattr(norm, "act", None)
    return isinstance(act, nn.Module) and not isinstance(act, nn.Identity)


def _projection(gm, site: _Site, xs, ys, mode: str, identity: bool = True) -> tuple[str, nn.Module | None] | str:
    if xs == ys and (identity or mode != "conv1x1"):  # a parameter-free projection of equal shapes is the identity
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
        norm = _batch_normed(gm, site.node)
        return "conv1x1", ConvProjection(site.dims, xs[1], ys[1], stride, norm=norm, **factory)
    return "parameter_free", ParameterFreeProjection(site.dims, ys[1], stride)


def _fill_weights(projection: nn.Module, value: float) -> None:
    """ToST's jumps start as ``conv_jump.weight.data.fill_(0.0001)`` (``resnet_modified.py``); their
    BatchNorm keeps PyTorch's init."""
    with torch.no_grad():
        for layer in projection.modules():
            if layer_of(layer) is not None:
                layer.weight.fill_(value)


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


# ------------------------------------------------------------------ nothing to wrap


def _nothing_targeted(sites: list[_Site], options: GhostSkipOptions, manifest) -> str:
    """Why no site was targeted: which kinds the model has, the option that re-includes each, and the
    layers leaf modules hide (a leafed model can show only its head's Linear while its convs sit in leaves)."""
    hidden = _hidden_in_leaves(manifest)
    if sites:
        counts = {kind: sum(1 for s in sites if s.kind == kind) for kind in SITE_KINDS}
        found = "; ".join(
            f"{n} {kind} ({SITE_KINDS[kind]}): add '{kind}' to ghost_skip.targets to wrap"
            f" {'it' if n == 1 else 'them'}"
            for kind, n in counts.items() if n
        )
        return (
            f"ghost_skip's targets {list(options.targets)} leave nothing to wrap in {manifest.model}: it has no "
            f"{' or '.join(options.targets)} call site. It has {found}.{hidden} Or drop ghost_skip from the recipe."
        )
    message = f"ghost_skip found no Conv1d/2d/3d or Linear in {manifest.model}: there is nothing to add skips around."
    return message + hidden + " Drop ghost_skip from the recipe."


HIDDEN_LEAVES_NAMED = 5  # leaf modules named in a NoTargetsError


def _hidden_in_leaves(manifest) -> str:
    """' N convs and M Linear layers hide inside leaf modules: which, and how to reach them', or ''."""
    hidden = [u for u in manifest.unreached if u.what in ("conv", "linear")]
    if not hidden:
        return ""
    per_leaf: dict[str, list] = {}
    for u in hidden:
        per_leaf.setdefault(u.inside, []).append(u)
    amount = _layers(hidden, " and ", "Linear layer")
    leaves = [f"'{leaf}' ({_layers(units, ', ', 'Linear')})" for leaf, units in list(per_leaf.items())[:HIDDEN_LEAVES_NAMED]]
    more = f" and {len(per_leaf) - HIDDEN_LEAVES_NAMED} more" if len(per_leaf) > HIDDEN_LEAVES_NAMED else ""
    first = next(iter(per_leaf))
    return (
        f" {amount} {'hides' if len(hidden) == 1 else 'hide'} inside {len(per_leaf)} leaf module{'s' if len(per_leaf) > 1 else ''} of {manifest.model}, "
        f"where no pass can see them: {', '.join(leaves)}{more}. To reach them, make such a module traceable and stop "
        f"keeping it a leaf (drop '{first}' or its class from {advice.leaf_setting()}), or compile "
        f"a part that traces with {advice.part_setting()} (without the leaf, the whole model's TraceError lists any)."
    )


def _count(n: int, what: str) -> str:
    return "" if not n else f"{n} {what}{'s' if n > 1 else ''}"


def _layers(units: list, joint: str, linear: str) -> str:
    """'3 convs and 1 Linear layer' for a list of Unreached."""
    convs = sum(1 for u in units if u.what == "conv")
    return joint.join(part for part in (_count(convs, "conv"), _count(len(units) - convs, linear)) if part)
