"""Training-only ("ghost") modules. Each knows how to leave the graph.

A ghost is inserted by a pass as a ``call_module`` node under ``gm._ghosts`` and
removed by the one generic de-ghost pass, which replaces the ghost's node with
whatever ``ghost.strip(node)`` returns. Strengths (alpha, beta) are buffers, so
schedules change them in place without retracing or recompiling.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from surgery.errors import GhostError

GHOSTS_ROOT = "_ghosts"  # every ghost lives under this submodule: one group, one delete


class Ghost(nn.Module):
    """Base of every training-only module."""

    def strip(self, node: fx.Node) -> fx.Node:
        """Return the node that replaces ``node`` (this ghost's call site) when ghosts leave."""
        raise NotImplementedError(f"{type(self).__name__} must say how it leaves the graph")


# --------------------------------------------------------------------------- skips


class GhostSkip(Ghost):
    """``y + alpha * P(x)``: a skip from a conv's input ``x`` to its (normed) output ``y``.

    ``P`` is ``None`` (identity) when shapes match, else a projection module.
    alpha = 0 makes the skip an exact pass-through of ``y``.
    """

    def __init__(self, projection: nn.Module | None = None, alpha: float = 1.0):
        super().__init__()
        self.projection = projection
        self.register_buffer("alpha", torch.tensor(float(alpha)))

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = x if self.projection is None else self.projection(x, y.shape)
        return torch.addcmul(y, p, self.alpha.to(y.dtype))

    def strip(self, node: fx.Node) -> fx.Node:
        return node.args[0]


def align_spatial(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Center-crop or zero-pad dims 2.. of ``x`` to ``shape`` (what a padded/valid conv did)."""
    if x.shape[2:] == shape[2:]:
        return x
    pads: list[int] = []
    for have, want in zip(reversed(x.shape[2:]), reversed(shape[2:])):
        before = (want - have) // 2
        pads += [before, want - have - before]
    return F.pad(x, pads)  # negative pads crop


def match_channels(x: torch.Tensor, channels: int, dim: int = 1) -> torch.Tensor:
    """Zero-pad ``dim`` up to ``channels``, or fold it down by averaging groups of channels."""
    have = x.shape[dim]
    if have == channels:
        return x
    moved = x.movedim(dim, -1)
    if have < channels:
        moved = F.pad(moved, (0, channels - have))
    else:  # channel c averages channels c, c + channels, c + 2 * channels, ... that exist
        groups = math.ceil(have / channels)
        summed = F.pad(moved, (0, groups * channels - have)).unflatten(-1, (groups, channels)).sum(-2)
        counts = torch.full((channels,), groups, dtype=moved.dtype, device=moved.device)
        counts[have - (groups - 1) * channels :] -= 1
        moved = summed / counts
    return moved.movedim(-1, dim)


class ConvProjection(nn.Module):
    """The papers' reference projection: a stride-matched 1x1 conv, followed by BatchNorm when
    ``norm`` (the pass asks for one exactly where the conv it skips is batch-normed, so the
    ghost never normalizes fewer values per channel than the original does)."""

    def __init__(
        self, dims: int, in_channels: int, out_channels: int, stride: tuple[int, ...], norm: bool = True, **factory: Any
    ):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        batch_norm = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
        self.conv = conv(in_channels, out_channels, 1, stride=stride, bias=False, **factory)
        self.norm = batch_norm(out_channels, **factory) if norm else None

    def forward(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        y = self.conv(x)
        if self.norm is not None:
            y = self.norm(y)
        return align_spatial(y, shape)


class ParameterFreeProjection(nn.Module):
    """Average pooling by the conv's stride, channel zero-padding or folding; no parameters."""

    def __init__(self, dims: int, out_channels: int, stride: tuple[int, ...]):
        super().__init__()
        self.dims = dims
        self.out_channels = out_channels
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if any(s > 1 for s in self.stride):
            pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[self.dims - 1]
            x = pool(x, self.stride, self.stride, ceil_mode=True)
        return align_spatial(match_channels(x, self.out_channels), shape)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, out_channels={self.out_channels}, stride={self.stride}"


class LinearProjection(nn.Module):
    """A bias-free Linear map between feature sizes (``projection: conv1x1`` for Linear targets)."""

    def __init__(self, in_features: int, out_features: int, **factory: Any):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False, **factory)

    def forward(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return self.linear(x)


class FeatureProjection(nn.Module):
    """Parameter-free: zero-pad or fold the last (feature) dim to the output size."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return match_channels(x, self.out_features, dim=-1)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}"


# --------------------------------------------------------------------- activations


class SoftActivation(Ghost):
    """Stands in for one activation node; ``strip`` recreates that node exactly.

    The ghost's node keeps the original node's args and kwargs (``inplace=True``
    included), so restoring it needs only the original op and target.
    ``rewired`` names nodes that read the input of an in-place original after it ran;
    the pass pointed them at this ghost, and ``strip`` points them back.
    """

    def __init__(self, original_op: str, original_target: Any, rewired: tuple[str, ...] = ()):
        super().__init__()
        self.original_op = original_op
        self.original_target = original_target
        self.rewired = tuple(rewired)

    def strip(self, node: fx.Node) -> fx.Node:
        graph = node.graph
        with graph.inserting_before(node):
            original = graph.create_node(self.original_op, self.original_target, node.args, node.kwargs)
        original.meta = dict(node.meta)
        if self.rewired:
            source = node.args[0] if node.args else node.kwargs["input"]
            for user in list(node.users):
                if user.name in self.rewired:
                    user.replace_input_with(node, source)
        return original

    @staticmethod
    def first_input(args: tuple, kwargs: dict) -> torch.Tensor:
        return args[0] if args else kwargs["input"]

    def extra_repr(self) -> str:
        target = self.original_target
        name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
        return f"replaces={self.original_op}:{name}"


class _PSwishFunction(torch.autograd.Function):
    """``x * sigmoid(beta * x)``, whose derivative in ``x`` is SiLU's derivative at ``z = beta * x``:
    sigmoid(z) (1 + z (1 - sigmoid(z))). The backward is therefore ``beta * x`` and one fused
    ``silu_backward`` kernel where autograd would chain five elementwise passes. That kernel has
    no derivative of its own, so when the backward is itself differentiated (``create_graph=True``:
    LRsI, GraSP) the same formula is spelled out in differentiable ops instead."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, beta)
        return torch.sigmoid(x * beta).mul_(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, beta = ctx.saved_tensors
        z = x * beta
        if torch.is_grad_enabled():  # create_graph=True
            s = torch.sigmoid(z)
            return grad * s * (1 + z * (1 - s)), None
        return torch.ops.aten.silu_backward(grad, z), None  # beta is a buffer: no gradient


class PSwish(SoftActivation):
    """Parametric Swish ``x * sigmoid(beta * x)``: linear (``x / 2``) at beta=0, ReLU as beta -> inf."""

    def __init__(self, original_op: str, original_target: Any, rewired: tuple[str, ...] = (), beta: float = 1.0):
        super().__init__(original_op, original_target, rewired)
        self.register_buffer("beta", torch.tensor(float(beta)))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = self.first_input(args, kwargs)
        return _PSwishFunction.apply(x, self.beta.to(x.dtype))


class Swish(SoftActivation):
    """Swish (SiLU), PSwish with beta fixed at 1."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return F.silu(self.first_input(args, kwargs))


class Mish(SoftActivation):
    """Mish ``x * tanh(softplus(x))``."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return F.mish(self.first_input(args, kwargs))


class ModuleActivation(SoftActivation):
    """A user's own soft activation (``soft_activation.kind``: an nn.Module class or a function that
    builds one, as timm's ``get_act_layer`` takes): ``activation`` runs on the original's input."""

    def __init__(self, original_op: str, original_target: Any, rewired: tuple[str, ...] = (), *,
                 activation: nn.Module):
        super().__init__(original_op, original_target, rewired)
        self.activation = activation

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.activation(self.first_input(args, kwargs))


SOFT_ACTIVATIONS: dict[str, type[SoftActivation]] = {"pswish": PSwish, "swish": Swish, "mish": Mish}


# ----------------------------------------------------------------- runtime helpers


def add_ghost(gm: fx.GraphModule, group: str, site: str, ghost: Ghost) -> str:
    """Register ``ghost`` as ``_ghosts.<group>.<name>`` (name unique, derived from ``site``)."""
    if not hasattr(gm, GHOSTS_ROOT):
        gm.add_module(GHOSTS_ROOT, nn.Module())
    root = getattr(gm, GHOSTS_ROOT)
    if not hasattr(root, group):
        root.add_module(group, nn.Module())
    container = getattr(root, group)
    base = re.sub(r"\W", "_", site) or "root"
    name, i = base, 1
    while hasattr(container, name):
        name, i = f"{base}_{i}", i + 1
    container.add_module(name, ghost)
    return f"{GHOSTS_ROOT}.{group}.{name}"


def ghosts(model: nn.Module) -> list[tuple[str, Ghost]]:
    """Every ghost module in ``model`` with its qualified name."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Ghost)]


def ghost_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that exist only for training (projection convs and norms): one group."""
    seen: dict[int, nn.Parameter] = {}
    for _, ghost in ghosts(model):
        for p in ghost.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


@torch.no_grad()
def set_ghost_strength(model: nn.Module, alpha: float | None = None, beta: float | None = None) -> int:
    """Set every GhostSkip's alpha and every PSwish's beta in place; returns how many ghosts changed.

    Buffers are filled in place: no retrace, no recompile, safe under torch.compile and DDP. Values
    must be finite and >= 0 (alpha scales a skip, beta is PSwish's sharpness); a model without
    ghosts is an error, since a schedule driving it would change nothing.
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise GhostError(f"set_ghost_strength: {name}={value!r} must be a finite number >= 0 "
                             "(alpha 1 -> 0 fades the skips, beta 1 -> 50 sharpens PSwish towards ReLU).")
    held = ghosts(model)
    if not held:
        raise GhostError(f"set_ghost_strength: {type(model).__name__} holds no ghosts; compile it with a recipe "
                         "that adds some (ghost_skip, soft_activation), e.g. surgery.compile(model, x).")
    changed = 0
    for _, ghost in held:
        if alpha is not None and isinstance(ghost, GhostSkip):
            ghost.alpha.fill_(alpha)
            changed += 1
        elif beta is not None and isinstance(ghost, PSwish):
            ghost.beta.fill_(beta)
            changed += 1
    return changed
