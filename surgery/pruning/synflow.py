"""SynFlow: iterative synaptic-flow pruning, data-free (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020).

On a copy of the model whose parameters and floating buffers are all replaced by their
absolute values (BatchNorm's running statistics too, as the original code does with the
whole state_dict), in eval mode (BatchNorm uses those statistics), an all-ones input
``x`` of shape ``(1, *input_shape)`` gives the synaptic flow ``R = sum(f(x))``; a
weight's score is ``|dR/dw * w|``. For linear layers and positive-homogeneous
activations ``R = 1^T |W_L| ... |W_1| 1`` and every layer's scores sum to ``R``
(conservation), which is why iterating avoids layer collapse: a layer's last weights
hold its whole flow and rank high. That argument covers the layers every path crosses; a
layer beside others (a residual block's 1x1 shortcut conv) carries only its share of the
flow, and at 99% and above SynFlow may prune it entirely, as the paper's algorithm does
(cifar:resnet18 at 99% keeps no weight in any of its three shortcuts; every other layer keeps
1,550 or more, so the network stays connected). Such a mask is refused unless ``allow_empty_layers``
(``collapse.check_masks``).

Iterated ``rounds`` times (default 100) on the paper's exponential schedule, so SynFlow is
the one scoring method given the budget (``register(..., iterative=True)``): its scores are
its verdict, 1 for the weights its last round keeps. After
round ``k`` of ``n`` the model keeps exactly ``round((1 - s)^(k/n) N)`` weights, ranked
globally by default (or per layer with the budget's distribution). Pruned weights are
zeroed in the copy before the next round and never come back. That is exactly
``rounds`` forward + backward passes of a batch of one and nothing else: ranking is
exact but never a full ``topk`` over millions of scores (which would cost as much as a
pass): a sampled bracket leaves a few elementwise passes, and a weight's survivors are
packed once half of it is pruned, so late rounds touch only what is alive.

Clamping activations (``nn.ReLU6``, ``nn.Hardtanh``) become ``nn.ReLU`` in the copy: an
all-ones input drives activations far past 6, where a clamp passes no gradient and
nothing before it would score (MobileNetV2).

Input shape (option ``input_shape``: one example's shape, e.g. ``(3, 224, 224)``, or the
whole input with its batch of one, ``(1, 3, 224, 224)``): if not given, the inputs' shape of
``batches`` when some are passed, else the first conv's ``in_channels`` at 32 per spatial
dimension (CIFAR size) or the first linear's ``in_features`` (first in registration order:
the stem). The size matters: at 32x32 a ResNet's last stage runs at 1x1, where only the
centre tap of a 3x3 kernel carries flow, so the outer taps score 0 and go first.

The copy runs in float64 (option ``dtype``): ``R`` multiplies the weight sums of every
layer: a ResNet-50 at initialization reaches 4e72 at 224x224, far past float32's 3e38. A
non-finite or zero ``R`` is a ``MaskError`` rather than NaN scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from surgery.errors import MaskError
from surgery.fx.graph import deepcopy_module
from surgery.pruning.budget import Budget, layer_counts, weights_of
from surgery.pruning.input_shape import example_shape
from surgery.pruning.registry import register
from surgery.pruning.snip import Batches, logits_of, reject_options

ROUNDS = 100  # the paper's default
SAMPLE = 1 << 14  # scores sampled to bracket a round's threshold
EXACT_BELOW = 1 << 18  # fewer scores than this: one plain topk is cheap enough


@register("synflow", scope="global", input_shape=True, flow=True, iterative=True,
          about="SynFlow (Tanaka et al. 2020): iterative data-free synaptic flow")
def score_synflow(
    model: nn.Module, names: list[str], *, budget: Budget, batches: Batches | None = None, seed: int = 0,
    rounds: int = ROUNDS, input_shape: Sequence[int] | None = None, dtype: torch.dtype | str = torch.float64,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """What ``rounds`` rounds of SynFlow towards ``budget`` keep, as scores: 1 kept, 0 pruned (ranking them
    under the same budget keeps exactly these). Deterministic: ``seed`` is unused; ``batches`` only give the shape."""
    reject_options("synflow", options, known=("rounds", "input_shape", "dtype"))
    keep: dict[str, torch.Tensor] = {}
    for keep in synflow_rounds(model, names, budget, rounds=rounds, input_shape=input_shape, dtype=dtype,
                               batches=batches):
        pass
    return {name: mask.cpu() for name, mask in keep.items()}


def synflow_rounds(
    model: nn.Module, names: list[str], budget: Budget, *, rounds: int = ROUNDS,
    input_shape: Sequence[int] | None = None, dtype: torch.dtype | str = torch.float64,
    batches: Batches | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the keep masks (on the model's device, updated in place) after each of the ``rounds`` rounds."""
    rounds = _checked_rounds(rounds)
    device = batches[0][0].device if batches else _device_of(model)
    dtype = _checked_dtype(dtype)
    ones = torch.ones((1, *example_shape(model, input_shape, batches)), dtype=dtype, device=device)
    net = linearized_copy(model, dtype, device)
    weights = _contiguous(weights_of(net, names))
    for p in net.parameters():  # only the prunable weights need gradients
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    alive = {name: AliveWeights(w) for name, w in weights.items()}
    kept: list[int] = []  # per group, what the last round kept: a count never grows (pruned weights stay out)
    for k in range(1, rounds + 1):
        grads = synflow_gradients(net, weights, ones, round_=k)
        with torch.no_grad():
            scores = {name: a.scores(grads[name]) for name, a in alive.items()}
            before = {name: a.mask.clone() for name, a in alive.items() if a.packed}
            targets = _round_targets(weights, budget, k, rounds)
            kept = [min(count, last) for (_, count), last in zip(targets, kept or [count for _, count in targets])]
            for (group, _), count in zip(targets, kept):
                keep_top([scores[n] for n in group], [alive[n].mask for n in group],
                         [alive[n].scratch for n in group], count)
            for name, a in alive.items():  # the next round sees the pruned network
                a.prune(before.get(name))
        yield {name: a.keep for name, a in alive.items()}


class AliveWeights:
    """One weight of the copy during SynFlow: its full keep mask, and the entries still in the running.

    Once half of a weight is pruned its surviving entries are packed (positions and values),
    so a round costs in proportion to the weights alive rather than to the layer's size.
    Pruned entries are zeroed in the copy and score exactly 0, as ``keep_top`` expects.
    """

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.detach().view(-1)  # aliases the copy's (contiguous) weight
        self.keep = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        self.index: torch.Tensor | None = None  # positions of the packed entries; None: all, unpacked
        self._use(self.weight, self.keep.view(-1))

    @property
    def packed(self) -> bool:
        return self.index is not None

    def _use(self, values: torch.Tensor, mask: torch.Tensor) -> None:
        self.values, self.mask = values, mask  # the entries in the running: weights and which are kept
        self.scratch = (torch.empty_like(mask), torch.empty_like(mask))

    def scores(self, grad: torch.Tensor) -> torch.Tensor:
        """``|dR/dw * w| = |dR/dw| * w`` of the entries in the running (the copy's weights are >= 0)."""
        flat = grad.reshape(-1)  # the round's own gradient: free to overwrite
        picked = torch.index_select(flat, 0, self.index) if self.packed else flat
        return picked.abs_().mul_(self.values)

    def prune(self, before: torch.Tensor | None) -> None:
        """Zero the entries ``keep_top`` just dropped (``before``: the packed mask before it); pack at half."""
        if not self.packed:
            self.weight.masked_fill_(~self.mask, 0.0)
        else:
            dropped = torch.logical_xor(before, self.mask, out=before)
            gone = torch.index_select(self.index, 0, dropped.nonzero().squeeze(1))
            self.weight.index_fill_(0, gone, 0.0)
            self.keep.view(-1).index_fill_(0, gone, False)
            self.values.masked_fill_(dropped, 0.0)
        if 2 * int(self.mask.count_nonzero()) < self.mask.numel():
            survivors = self.mask.nonzero().squeeze(1)
            self.index = survivors if self.index is None else torch.index_select(self.index, 0, survivors)
            self._use(torch.index_select(self.weight, 0, self.index), torch.ones_like(self.index, dtype=torch.bool))


def exponential_density(sparsity: float, k: int, rounds: int) -> float:
    """The fraction kept after round ``k`` of ``rounds``: ``(1 - s)^(k/n)``, reaching ``1 - s`` at ``k = n``."""
    return (1.0 - sparsity) ** (k / rounds)


# ------------------------------------------------------------------ the copy and its scores


def linearized_copy(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """An eval-mode copy in ``dtype`` on ``device`` whose parameters and floating buffers are ``|.|``,
    with clamping activations (ReLU6, Hardtanh) made ReLUs."""
    net = deepcopy_module(model).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.is_floating_point():
                tensor.abs_()
    _unclamp_activations(net)
    return net


def _unclamp_activations(net: nn.Module) -> None:
    """Swap ``nn.ReLU6`` / ``nn.Hardtanh`` modules for ``nn.ReLU``: an all-positive input drives every
    activation far past 6, where a clamp's gradient is 0 and no flow would reach the layers before it
    (MobileNetV2 would score nothing but its head). Module swaps keep a GraphModule's graph valid."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Hardtanh):  # ReLU6 is a Hardtanh
                setattr(parent, name, nn.ReLU())


def synflow_gradients(
    net: nn.Module, weights: dict[str, torch.Tensor], ones: torch.Tensor, *, round_: int = 1
) -> dict[str, torch.Tensor]:
    """``dR/dw`` for ``R = sum(net(ones))``: one forward and one backward pass."""
    flow = _flow(net(ones))
    value = float(flow.detach())
    if not math.isfinite(value):
        raise MaskError(
            f"SynFlow's objective R = sum(f(1)) is {value} at round {round_} in {ones.dtype}: it overflowed; "
            "keep dtype=torch.float64 (the default) or give a smaller input_shape."
        )
    if value == 0.0:
        raise MaskError(
            f"SynFlow's objective R = sum(f(1)) is 0 at round {round_}: no path from the input to the output "
            "carries flow any more (a layer collapsed: give more rounds or a lower sparsity), or the output "
            "never depended on the prunable weights (an activation that saturates on large inputs)."
        )
    grads = torch.autograd.grad(flow, list(weights.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(weights, grads))  # a weight the output never uses (an aux head in eval mode) scores 0


def synflow_scores(net: nn.Module, weights: dict[str, torch.Tensor], ones: torch.Tensor) -> dict[str, torch.Tensor]:
    """One round's scores ``|dR/dw * w|`` on a linearized copy (what each round ranks)."""
    grads = synflow_gradients(net, weights, ones)
    return {name: (grads[name] * w.detach()).abs() for name, w in weights.items()}


# ------------------------------------------------------------------ one round's pruning


def _round_targets(
    weights: dict[str, torch.Tensor], budget: Budget, k: int, rounds: int
) -> list[tuple[list[str], int]]:
    """The groups ranked together after round ``k`` and how many each keeps: all layers (global) or each one."""
    density = exponential_density(budget.sparsity, k, rounds)
    sizes = {name: w.numel() for name, w in weights.items()}
    if budget.scope == "global":
        return [(list(weights), round(density * sum(sizes.values())))]
    now = budget if k == rounds else Budget(1.0 - density, "layer", budget.distribution)
    counts = layer_counts({name: tuple(w.shape) for name, w in weights.items()}, now)
    return [([name], counts[name]) for name in weights]


def keep_top(
    scores: list[torch.Tensor], keep: list[torch.Tensor], scratch: list[tuple[torch.Tensor, torch.Tensor]], count: int
) -> None:
    """Shrink the masks ``keep`` (in place) to exactly the ``count`` highest ``scores`` among the kept entries.

    Pruned entries must score 0, kept ones >= 0; ``scratch`` holds two flat bool buffers per
    tensor. With many scores, a random sample first brackets the threshold, ``[lo, hi]``:
    every score above ``hi`` stays and only the few inside are ranked exactly, so a round
    costs a few elementwise passes instead of a ``topk`` over all scores. When the count
    reaches the zero scores (a 32x32 input leaves the outer taps of a 3x3 kernel at 1x1
    resolution without flow), every positive score stays plus the first kept zeros by
    position. A bracket that misses (a skewed sample) falls back to one exact ``topk``.
    """
    total = sum(s.numel() for s in scores)
    if total < EXACT_BELOW or not 0 < count < total:
        return _keep_top_exact(scores, keep, count)
    flat = [s.view(-1) for s in scores]
    lo, hi = _bracket(flat, total, count)
    lo = max(lo, torch.finfo(flat[0].dtype).tiny)  # never into the zeros: the pruned score 0
    above = [torch.gt(s, hi, out=buf) for s, (buf, _) in zip(flat, scratch)]
    inside = [torch.logical_xor(torch.ge(s, lo, out=buf), a, out=buf) for s, a, (_, buf) in zip(flat, above, scratch)]
    n_above = sum(int(a.count_nonzero()) for a in above)
    where = [m.nonzero().squeeze(1) for m in inside]
    values = torch.cat([torch.index_select(s, 0, i) for s, i in zip(flat, where)])
    if n_above <= count <= n_above + values.numel():
        chosen = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
        chosen[torch.topk(values, count - n_above, sorted=False).indices] = True
        for mask, a, i, pick in zip(keep, above, where, chosen.split([i.numel() for i in where])):
            mask.view(-1).copy_(a)
            mask.view(-1)[i[pick]] = True
    elif count > n_above + values.numel() and lo == torch.finfo(flat[0].dtype).tiny:
        _keep_positive_and_first_zeros(keep, above, inside, count - n_above - values.numel())
    else:
        _keep_top_exact(scores, keep, count)


def _keep_positive_and_first_zeros(
    keep: list[torch.Tensor], above: list[torch.Tensor], inside: list[torch.Tensor], zeros: int
) -> None:
    """Keep every positive score (``above | inside``) and the first ``zeros`` kept entries that score 0."""
    positive = [torch.logical_or(a, i, out=a) for a, i in zip(above, inside)]
    zero_kept = [torch.logical_and(torch.logical_not(p, out=i), m.view(-1), out=i)
                 for p, i, m in zip(positive, inside, keep)]
    for mask, p, z in zip(keep, positive, zero_kept):
        first = z.nonzero().squeeze(1)[:zeros]
        zeros -= first.numel()
        mask.view(-1).copy_(p)
        mask.view(-1)[first] = True


def _keep_top_exact(scores: list[torch.Tensor], keep: list[torch.Tensor], count: int) -> None:
    flat = torch.cat([torch.where(mask, s, -1.0).flatten() for s, mask in zip(scores, keep)])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.topk(flat, min(max(count, 0), flat.numel()), sorted=False).indices] = True
    for mask, part in zip(keep, chosen.split([m.numel() for m in keep])):
        mask.copy_(part.view(mask.shape))


def _bracket(scores: list[torch.Tensor], total: int, count: int) -> tuple[float, float]:
    """Two sampled (flat) scores bracketing the ``count``-th highest, 4 binomial sigmas away from it."""
    picks = torch.randint(total, (SAMPLE,), generator=torch.Generator().manual_seed(0)).sort().values
    starts = torch.tensor([0] + [s.numel() for s in scores]).cumsum(0)
    bounds = torch.searchsorted(picks, starts).tolist()  # the picks falling in each score tensor
    sample = torch.cat([
        s[(picks[a:b] - start).to(s.device)] for s, a, b, start in zip(scores, bounds, bounds[1:], starts.tolist())
    ]).sort().values
    q = 1.0 - count / total  # the threshold's quantile from below
    margin = 4.0 * math.sqrt(SAMPLE * q * (1.0 - q)) + 8.0
    lo, hi = math.floor(q * SAMPLE - margin), math.ceil(q * SAMPLE + margin)
    return (float(sample[lo]) if lo >= 0 else -math.inf), (float(sample[hi]) if hi < SAMPLE else math.inf)


def _flow(output: Any) -> torch.Tensor:
    """``R``: the sum of the output; of every tensor in it when it is a dict (a segmentation model's
    ``{"out": ...}``, a detection backbone's feature maps), since flow reaches each of them."""
    if isinstance(output, Mapping):
        return sum(t.sum() for t in output.values() if torch.is_tensor(t))
    return logits_of(output).sum()


# ------------------------------------------------------------------ options


def _checked_rounds(rounds: int) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise MaskError(f"synflow rounds={rounds!r} must be a positive integer (the paper uses 100).")
    return rounds


def _checked_dtype(dtype: torch.dtype | str) -> torch.dtype:
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise MaskError(f"synflow dtype {dtype!r} is not a floating dtype; use torch.float64 (default) or float32.")
    return resolved


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    if tensor is not None and tensor.is_meta:
        raise MaskError("the model's weights are on the meta device; SynFlow scores real weights: load or "
                        "initialize them first (e.g. model.to_empty(device='cpu') and an init).")
    return tensor.device if tensor is not None else torch.device("cpu")


def _contiguous(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The copy's weights, made contiguous (channels_last ones) so that flat views alias them."""
    for w in weights.values():
        if not w.is_contiguous():
            w.data = w.data.contiguous()
    return weights
