"""ZerO initialization: every conv / linear weight built from zeros and ones (Zhao et al. 2022).

Zhao, Schäfer and Anandkumar, "ZerO Initialization: Initializing Neural Networks with only
Zeros and Ones", Algorithm 1, for a weight matrix ``W`` of shape ``(out, in)`` (PyTorch's
``y = W x``):

    out == in    W = I                                     (identity)
    out <  in    W = I*  = (I_out | 0)                     (partial identity: the first out inputs pass)
    out >  in    W = c I* H_m I*,  m = ceil(log2(out)),    (Hadamard: the first out rows and in
                 c = 2^(-(m-1)/2)                           columns of H_m, times c)

``H_m`` is Sylvester's Hadamard matrix, ``H_0 = [1]``, ``H_m = [[H, H], [H, -H]]`` of size
``2^m``; its entry ``(i, j)`` is ``(-1)^popcount(i & j)``, which is how it is computed here (only
the ``out x in`` corner, never the whole ``2^m x 2^m`` matrix). A growing layer gets the
Hadamard because a partial identity would leave ``out - in`` output rows at zero, and rows
that start equal stay equal under gradient descent (the paper's "training degeneracy",
Theorem 1); the Hadamard's rows are distinct from the start.

**Where the two papers differ.**

- The pruning-pipeline paper's Algorithm 1 writes ``W^(l) in R^{n_l x n_{l+1}}`` with ``n_0``
  the input dimension, i.e. rows = fan-in, and puts the Hadamard on ``n_l > n_{l+1}``
  (fan-in > fan-out) with ``m = ceil(log2(n_l))``. Read literally that is the *shrinking*
  layer; it is ZerO's algorithm with ZerO's ``P_l x Q_l`` (out x in) renamed to
  ``n_l x n_{l+1}``, which flips which layers get the Hadamard. We follow ZerO (and the ZerO
  authors' code): Hadamard for growing layers, partial identity for shrinking ones. Its
  constant ``c = 2^(-(m-1)/2)`` is the same as ZerO's.
- ZerO's published MNIST notebook scales the Hadamard by ``2^(-m/2)`` (orthonormal rows);
  the paper's Algorithm 1 says ``2^(-(m-1)/2)``, a factor sqrt(2) larger. We use the paper's.
- For convolutions ZerO puts the matrix on the kernel's center tap (the pipeline paper's
  "only initializing the diagonal"); every other tap is zero, so the conv starts as the
  1x1 map of the matrix. An even kernel size ``k`` uses tap ``k // 2``. Grouped convs get
  the ``(out / groups) x (in / groups)`` matrix once per group (depthwise: the identity).

**Residual branches.** ZerO starts each residual block as the identity by zeroing the last
layer of its branch. With ``zero_residual_branches`` the model's FX graph is searched for
``add`` nodes (``+``, ``+=``, ``torch.add``, ``Tensor.add``) that join a shortcut and a
branch: of the add's two inputs, traced back to their nearest common ancestor (the block
input), the shortcut passes through at most one conv / linear (identity, or a projection
like ResNet's ``downsample``) and the branch through strictly more. The branch's last conv
or linear (walking back from the add through norms, activations, dropout, layer scales,
reshapes and ghosts) is set to all zeros; its norm keeps weight 1, bias 0, and projection
shortcuts keep their ZerO matrix. Adds of two equally deep paths are not residual joins.

Biases of conv / linear layers become 0; norm layers get weight 1, bias 0. Every other
parameter (layer-scale gammas, embeddings, ghost modules' own weights) is left as it is.
Masks are respected: on a compiled, masked ``GraphModule`` the values are written into the
mask parametrization's ``original`` and multiplied by the mask, so pruned entries stay
exactly zero (a kept set that misses the identity's diagonal is the mask's choice).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from surgery.errors import ConfigError, TraceError
from surgery.compiler.ghosts import GHOSTS_ROOT, Ghost
from surgery.fx.layers import LAYER_TYPES, PRUNABLE_KINDS, layer_of
from surgery.compiler.masks import Mask
from surgery.fx.tracing import trace

IDENTITY, PARTIAL_IDENTITY, HADAMARD = "identity", "partial_identity", "hadamard"

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.GroupNorm,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add, torch.Tensor.add, torch.Tensor.add_)
_ADD_METHODS = ("add", "add_", "__add__", "__iadd__")
# Ops that mix features the way a layer does: walking back through them would skip a layer.
_LAYER_FUNCTIONS = (
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    F.linear, F.bilinear, torch.matmul, torch.mm, torch.bmm, torch.einsum, operator.matmul,
)  # fmt: skip
_LAYER_METHODS = ("matmul", "mm", "bmm", "__matmul__")


@dataclass
class ZerOResult:
    """Which weights (parameter names, as in the plain model's state_dict) got what."""

    identity: list[str] = field(default_factory=list)
    partial_identity: list[str] = field(default_factory=list)
    hadamard: list[str] = field(default_factory=list)
    zeroed_residual: list[str] = field(default_factory=list)  # last layer of a residual branch: all zeros
    norms: list[str] = field(default_factory=list)  # norm modules reset to weight 1, bias 0

    def __len__(self) -> int:
        return len(self.identity) + len(self.partial_identity) + len(self.hadamard) + len(self.zeroed_residual)


# ----------------------------------------------------------------------- matrices


def hadamard_corner(rows: int, cols: int, m: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The top-left ``rows x cols`` corner of Sylvester's ``H_m``: entry ``(-1)^popcount(i & j)``."""
    if not (1 <= rows <= 2**m and 1 <= cols <= 2**m):
        raise ValueError(f"a {rows} x {cols} corner does not fit H_{m} ({2**m} x {2**m})")
    overlap = torch.arange(rows).unsqueeze(1) & torch.arange(cols).unsqueeze(0)
    parity = torch.zeros_like(overlap)
    for bit in range(m):
        parity ^= (overlap >> bit) & 1
    return (1 - 2 * parity).to(dtype)


def zero_matrix(out_features: int, in_features: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """ZerO's ``out x in`` matrix (Algorithm 1): identity, partial identity, or scaled Hadamard."""
    return _matrix_and_kind(out_features, in_features, dtype)[0]


def matrix_kind(out_features: int, in_features: int) -> str:
    """``"identity"``, ``"partial_identity"`` (out < in) or ``"hadamard"`` (out > in)."""
    if out_features == in_features:
        return IDENTITY
    return PARTIAL_IDENTITY if out_features < in_features else HADAMARD


def _matrix_and_kind(out_features: int, in_features: int, dtype: torch.dtype) -> tuple[Tensor, str]:
    kind = matrix_kind(out_features, in_features)
    if kind != HADAMARD:
        return torch.eye(out_features, in_features, dtype=dtype), kind
    m = math.ceil(math.log2(out_features))
    c = 2.0 ** (-(m - 1) / 2)
    return c * hadamard_corner(out_features, in_features, m, dtype=dtype), kind


def zero_weight(module: nn.Module, shape: torch.Size, dtype: torch.dtype) -> tuple[Tensor, str]:
    """The ZerO weight of a conv (matrix on the center tap, per group) or linear layer.

    A transposed conv stores ``(in, out / groups, ...)``: it gets the transpose of the
    ``out x in`` matrix, so it maps channels exactly as a conv of the same sizes does.
    """
    layer = layer_of(module)
    if layer.kind == "linear":
        return _matrix_and_kind(shape[0], shape[1], dtype)
    groups = module.groups
    if layer.transposed:
        matrix, kind = _matrix_and_kind(shape[1], shape[0] // groups, dtype)
        matrix = matrix.T
    else:
        matrix, kind = _matrix_and_kind(shape[0] // groups, shape[1], dtype)
    weight = torch.zeros(shape, dtype=dtype)
    center = tuple(k // 2 for k in shape[2:])
    weight[(slice(None), slice(None), *center)] = matrix.repeat(groups, 1)
    return weight, kind


# ---------------------------------------------------------------------- the model


@torch.no_grad()
def zero_init(
    model: nn.Module,
    *,
    zero_residual_branches: bool = True,
    prunable: Iterable[str] = ("conv", "linear"),
) -> ZerOResult:
    """Apply ZerO in place to every conv / linear weight of ``model``; returns what each got.

    ``model`` is a plain ``nn.Module`` (traced with ``surgery.trace`` to find residual
    branches) or a compiled ``GraphModule`` (its own graph is used; ghosts are skipped and
    masked weights stay exactly zero where pruned). ``prunable`` picks the layer kinds
    initialized (``conv``, ``linear``; a mask config's ``all`` means both);
    ``zero_residual_branches`` zeroes the last of those layers in every residual branch.
    Norm layers get weight 1, bias 0; conv / linear biases 0.
    """
    kinds = _check_kinds(prunable)
    types = tuple(t for kind in kinds for t in PRUNABLE_KINDS[kind])
    residual_ends = set(residual_branch_ends(model)) if zero_residual_branches else set()
    result = ZerOResult()
    for path, module in _model_modules(model):
        if isinstance(module, types):
            _init_layer(path, module, zero=path in residual_ends, result=result)
        elif isinstance(module, NORM_TYPES):
            _reset_norm(path, module, result)
    return result


def _init_layer(path: str, module: nn.Module, *, zero: bool, result: ZerOResult) -> None:
    weight = _stored(module, "weight")
    name = _join(path, "weight")
    if zero:
        _write(module, "weight", torch.zeros_like(weight))
        result.zeroed_residual.append(name)
    else:
        value, kind = zero_weight(module, weight.shape, weight.dtype)
        _write(module, "weight", value.to(weight.device))
        getattr(result, kind).append(name)
    if module.bias is not None:
        _write(module, "bias", torch.zeros_like(_stored(module, "bias")))


def _reset_norm(path: str, module: nn.Module, result: ZerOResult) -> None:
    touched = False
    for attr, value in (("weight", 1.0), ("bias", 0.0)):
        if getattr(module, attr, None) is not None:
            _write(module, attr, torch.full_like(_stored(module, attr), value))
            touched = True
    if touched:
        result.norms.append(path)


def _model_modules(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """Every module outside the ghosts and the parametrization containers."""
    for path, module in model.named_modules():
        parts = path.split(".")
        if parts[0] == GHOSTS_ROOT or "parametrizations" in parts:
            continue
        yield path, module


def _stored(module: nn.Module, attr: str) -> Tensor:
    """The tensor that holds ``attr``: a mask parametrization's ``original``, else the parameter."""
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


def _write(module: nn.Module, attr: str, value: Tensor) -> None:
    """Copy ``value`` into ``attr`` in place (same parameter object), then re-apply its masks."""
    if not parametrize.is_parametrized(module, attr):
        getattr(module, attr).copy_(value)
        return
    plist = module.parametrizations[attr]
    if not all(isinstance(p, Mask) for p in plist):
        raise ConfigError(
            f"'{type(module).__name__}.{attr}' carries parametrizations other than a mask "
            f"({[type(p).__name__ for p in plist]}); ZerO can only write plain or masked weights. "
            "Remove them first, or initialize before registering them."
        )
    plist.original.copy_(value)
    for mask in plist:
        plist.original.mul_(mask.mask)


def _check_kinds(prunable: Iterable[str]) -> tuple[str, ...]:
    kinds = (prunable,) if isinstance(prunable, str) else tuple(prunable)
    if "all" in kinds:  # a mask's "all" prunes any 2-D+ weight; ZerO has matrices for conv / linear only
        kinds = tuple(PRUNABLE_KINDS)
    unknown = [k for k in kinds if k not in PRUNABLE_KINDS]
    if unknown or not kinds:
        raise ConfigError(
            f"zero_init's prunable={list(kinds)!r} names {unknown or 'nothing'}; ZerO defines matrices for "
            f"{list(PRUNABLE_KINDS)} layers only: give a subset of those, e.g. ('conv', 'linear')."
        )
    return kinds


def _join(path: str, attr: str) -> str:
    return f"{path}.{attr}" if path else attr


# --------------------------------------------------------------- residual branches


def residual_branch_ends(model: nn.Module) -> list[str]:
    """Module paths of the last conv / linear of every residual branch, in graph order.

    A ``GraphModule`` is read as it is (ghosts included, walked through); any other model
    is traced with ``surgery.trace``. See the module docstring for what counts as residual.
    """
    gm = model if isinstance(model, fx.GraphModule) else _trace_for_branches(model)
    graph = _Graph(gm)
    ends: list[str] = []
    for node in gm.graph.nodes:
        if not _is_add(node):
            continue
        branch = graph.residual_branch(node)
        end = graph.last_layer(branch) if branch is not None else None
        if end is not None and end not in ends:
            ends.append(end)
    return ends


def _trace_for_branches(model: nn.Module) -> fx.GraphModule:
    try:
        return trace(model)
    except TraceError as error:
        raise TraceError(
            f"{error}\nZerO traces the model only to find its residual branches; "
            "zero_init(model, zero_residual_branches=False) initializes it without."
        ) from error


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ADD_FUNCTIONS
    return node.op == "call_method" and node.target in _ADD_METHODS


class _Graph:
    """The graph's data flow: which nodes carry activations, their order, layer counts along paths."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.order = {node: i for i, node in enumerate(gm.graph.nodes)}
        self.data = self._data_nodes()

    def _data_nodes(self) -> set[fx.Node]:
        """Nodes computed from the inputs; parameters, buffers and constants derived from them are not."""
        data: set[fx.Node] = set()
        for node in self.gm.graph.nodes:
            if node.op == "placeholder" or any(n in data for n in node.all_input_nodes):
                data.add(node)
        return data

    def inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if n in self.data]

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def is_layer(self, node: fx.Node) -> bool:
        return isinstance(self.module(node), LAYER_TYPES)

    def ancestors(self, node: fx.Node) -> set[fx.Node]:
        """``node`` and every data node it depends on."""
        seen, stack = {node}, [node]
        while stack:
            for parent in self.inputs(stack.pop()):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    def residual_branch(self, add: fx.Node) -> fx.Node | None:
        """The branch input of a residual ``add``, or None when the add joins no shortcut and branch."""
        inputs = self.inputs(add)
        if len(inputs) != 2 or inputs[0] is inputs[1]:
            return None
        lineage = [self.ancestors(n) for n in inputs]
        common = lineage[0] & lineage[1]
        if not common:
            return None
        block_input = max(common, key=self.order.__getitem__)
        depths = [self.layers_on_longest_path(block_input, n, anc) for n, anc in zip(inputs, lineage)]
        shortcut, branch = sorted(range(2), key=depths.__getitem__)
        if depths[shortcut] <= 1 and depths[branch] > depths[shortcut]:
            return inputs[branch]
        return None

    def layers_on_longest_path(self, source: fx.Node, target: fx.Node, ancestors: set[fx.Node]) -> int:
        """The most conv / linear nodes on any path ``source -> target`` (``source`` excluded)."""
        depth = {source: 0}
        for node in sorted(ancestors, key=self.order.__getitem__):
            reached = [depth[p] for p in self.inputs(node) if p in depth]
            if node is not source and reached:
                depth[node] = max(reached) + self.is_layer(node)
        return depth[target]

    def last_layer(self, node: fx.Node) -> str | None:
        """Walk back from ``node`` through norms, activations and reshapes to a conv / linear."""
        while node is not None:
            if self.is_layer(node):
                return node.target
            node = self._pass_through(node)
        return None

    def _pass_through(self, node: fx.Node) -> fx.Node | None:
        """The one data input a value-preserving node passes on, or None where the walk must stop."""
        module = self.module(node)
        if isinstance(module, Ghost):  # a skip's or soft activation's main input comes first
            main = node.args[0] if node.args else None
            return main if isinstance(main, fx.Node) else None
        if module is not None and any(p.dim() >= 2 for p in module.parameters()):
            return None  # a leaf that holds a layer of its own (attention, a user block)
        if node.op == "call_function" and node.target in _LAYER_FUNCTIONS:
            return None
        if node.op == "call_method" and node.target in _LAYER_METHODS:
            return None
        if node.op not in ("call_module", "call_function", "call_method"):
            return None
        inputs = self.inputs(node)
        return inputs[0] if len(inputs) == 1 else None
