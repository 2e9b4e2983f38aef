"""Layer-wise Re-scaled Initialization (LRsI): learn one scale per weight tensor, then fold it in.

ToST keeps a sparse mask's initialization and only re-scales each weight tensor by a
learned scalar, following GradInit (Zhu et al. 2021): the scales are chosen so that the
first SGD step lowers the training loss the most. With ``theta_i' = m_i * theta_i``:

    g       = grad L(theta'; x, y)                      (differentiable in m)
    theta'' = theta' - lr * g                           (the trainer's first SGD step, simulated)
    minimize  L(theta''; x', y')   over m,   subject to   ||g||_2 <= grad_norm_bound

When the constraint is violated the iteration minimizes ``||g||_2`` instead (GradInit's
projection step). ``(x, y)`` is batch ``t`` and ``(x', y')`` batch ``t + 1`` of the cycled
batches, so the step is judged on data it was not computed from (the same batch when only
one is given). The scales are updated by Adam and clamped to ``>= min_scale``.

The model is evaluated at substituted parameters with ``torch.func.functional_call`` on
copies of its buffers: nothing of the model changes until the final fold, which multiplies
each weight in place (``original`` of a masked weight, so masked zeros stay exactly zero
and an optimizer built before keeps the same parameter objects).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from surgery.errors import ConfigError, DataError, DivergedError
from surgery.masks import prunable_weights

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

# Adam moves a scale by at most about scale_lr per iteration: 100 x 0.01 lets a scale
# travel ~1 (halve, double, or shrink to min_scale), which covers the mis-scalings a
# sparse mask causes. GradInit uses 390 iterations with 1e-3 (BN ResNets) to 1e-1 (VGG).
DEFAULT_ITERATIONS = 100
DEFAULT_SCALE_LR = 1e-2
# GradInit's constraint for SGD is on the l2 norm (l1 is its Adam variant), with gamma = 1
# for a step of fixed length eta. Our step is lr * g itself, so the bound caps the first
# step's length at lr * bound; 10 leaves default-initialized CIFAR ResNets unconstrained
# (their ||g||_2 is ~1-5) and stops the scales from running to an exploding step.
DEFAULT_GRAD_NORM_BOUND = 10.0
# Scale gradients are clipped like GradInit's, so one sharp iteration cannot swamp Adam's
# second-moment estimate and freeze the scales afterwards.
SCALE_GRAD_CLIP = 1.0
RNG_SEED = 0  # dropout inside the procedure draws from a fixed, private stream


@dataclass
class LRsIResult:
    """What ``lrsi`` learned and folded into the model."""

    scales: dict[str, float]  # parameter name (as in model.named_parameters()) -> learned scale
    loss_before: float  # loss after one simulated SGD step from the unscaled init
    loss_after: float  # loss after one simulated SGD step from the scaled init
    iterations: int
    constrained_iterations: int = 0  # iterations spent lowering ||g|| instead of the loss


def lrsi(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    loss_fn: LossFn = F.cross_entropy,
    lr: float = 0.1,
    iterations: int = DEFAULT_ITERATIONS,
    scale_lr: float = DEFAULT_SCALE_LR,
    grad_norm_bound: float = DEFAULT_GRAD_NORM_BOUND,
    min_scale: float = 0.01,
    on_iteration: Callable[[int, float], None] | None = None,
) -> LRsIResult:
    """Learn one scale per conv / linear weight (GradInit style) and multiply it into the weight.

    ``model`` is a compiled ghosted ``GraphModule`` (masked weights are parametrized) or any
    ``nn.Module``. Every conv / linear weight outside the ghosts (``prunable_weights``) that
    requires grad gets a scale; the simulated step moves every trainable parameter, ghosts
    and norms included, because the real first step does.

    - ``batches``: ``(inputs, targets)`` pairs, cycled when fewer than ``iterations + 1``;
      moved to the model's device. Iteration ``t`` takes its gradient on batch ``t`` and
      judges the step on batch ``t + 1``; ``loss_before`` / ``loss_after`` use batches 0 and 1.
    - ``lr``: the SGD learning rate of the training run (ToST: 0.1), i.e. the step simulated.
    - ``iterations``: Adam steps on the scales (default 100).
    - ``scale_lr``: Adam's learning rate for the scales (default 1e-2).
    - ``grad_norm_bound``: the largest ``||g||_2`` allowed before an iteration lowers the
      gradient norm instead of the loss (default 10; ``math.inf`` turns the constraint off).
    - ``min_scale``: scales are clamped to at least this after every update (GradInit's 0.01),
      so no layer can be switched off.
    - ``on_iteration(i, objective)``: called after iteration ``i`` (1 .. iterations).

    The model runs in train mode (BatchNorm on batch statistics) but its buffers, modes,
    gradients and RNG state are left as they were; only the scaled weights change.
    Deterministic for a fixed sequence of batches.
    """
    _check_options(lr, iterations, scale_lr, grad_norm_bound, min_scale, on_iteration)
    weights = _weights_to_scale(model)
    device = _device_of(model)
    stream = _batch_stream(batches, device)
    probe = (_first_batch(stream), next(stream))

    problem = _OneStepProblem(model, list(weights), loss_fn, lr)
    with _untouched_model(model, device):
        ones = torch.ones(len(weights), device=device)
        loss_before = problem.loss_after_step(ones, *probe)
        scales, constrained = _learn_scales(
            problem, stream, probe, iterations, scale_lr, grad_norm_bound, min_scale, on_iteration
        )
        loss_after = problem.loss_after_step(scales, *probe)
    learned = dict(zip(weights, scales.tolist()))
    _fold(weights, learned)
    return LRsIResult(learned, loss_before, loss_after, iterations, constrained)


# ---------------------------------------------------------------------- learning


def _learn_scales(
    problem: _OneStepProblem,
    stream: Iterator[Batch],
    first_pair: tuple[Batch, Batch],
    iterations: int,
    scale_lr: float,
    grad_norm_bound: float,
    min_scale: float,
    on_iteration: Callable[[int, float], None] | None,
) -> tuple[Tensor, int]:
    """Adam on the scales for ``iterations`` steps; returns the scales and the constrained count."""
    scales = torch.ones(len(problem.scaled), device=first_pair[0][0].device, requires_grad=True)
    optimizer = torch.optim.Adam([scales], lr=scale_lr)
    batch, next_batch = first_pair
    constrained = 0
    for iteration in range(1, iterations + 1):
        objective, was_constrained = problem.objective(scales, batch, next_batch, grad_norm_bound)
        value = float(objective.detach())
        if not math.isfinite(value):
            raise DivergedError(
                f"LRsI's objective became {value} at iteration {iteration}; the simulated SGD step blew up. "
                f"Lower lr (now {problem.lr:g}) or grad_norm_bound (now {grad_norm_bound:g})."
            )
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_([scales], SCALE_GRAD_CLIP)
        optimizer.step()
        with torch.no_grad():
            scales.clamp_(min=min_scale)
        constrained += was_constrained
        if on_iteration is not None:
            on_iteration(iteration, value)
        if iteration < iterations:
            batch, next_batch = next_batch, next(stream)
    return scales.detach(), constrained


class _OneStepProblem:
    """The model as a function of its parameters, with ``scaled`` weights multiplied by scales."""

    def __init__(self, model: nn.Module, scaled: list[str], loss_fn: LossFn, lr: float):
        self.model = model
        self.scaled = scaled
        self.loss_fn = loss_fn
        self.lr = lr
        self.parameters = dict(model.named_parameters())
        self.trainable = [name for name, p in self.parameters.items() if p.requires_grad]
        self._is_trainable = frozenset(self.trainable)

    def objective(self, scales: Tensor, batch: Batch, next_batch: Batch, grad_norm_bound: float) -> tuple[Tensor, bool]:
        """GradInit's objective, differentiable in ``scales``; True when the norm constraint bound."""
        theta = self._parameters_at(scales)
        grads = self._gradient(theta, batch, create_graph=True)
        grad_norm = torch.sqrt(sum(g.square().sum() for g in grads.values()))
        if float(grad_norm.detach()) > grad_norm_bound:
            return grad_norm, True
        return self._loss(_sgd_step(theta, grads, self.lr), next_batch), False

    def loss_after_step(self, scales: Tensor, batch: Batch, next_batch: Batch) -> float:
        """The loss on ``next_batch`` after one SGD step on ``batch`` from the scaled weights."""
        theta = self._as_leaves(self._parameters_at(scales))
        grads = self._gradient(theta, batch, create_graph=False)
        with torch.no_grad():
            return float(self._loss(_sgd_step(theta, grads, self.lr), next_batch))

    def _parameters_at(self, scales: Tensor) -> dict[str, Tensor]:
        """Every parameter as a tensor: scaled weights as ``m_i * theta_i``, the rest as leaves."""
        theta = self._as_leaves(self.parameters)
        for index, name in enumerate(self.scaled):
            theta[name] = theta[name].detach() * scales[index].to(theta[name].dtype)
        return theta

    def _as_leaves(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Detached copies; the trainable ones are leaves the simulated step differentiates."""
        return {name: t.detach().requires_grad_(name in self._is_trainable) for name, t in tensors.items()}

    def _gradient(self, theta: dict[str, Tensor], batch: Batch, create_graph: bool) -> dict[str, Tensor]:
        loss = self._loss(theta, batch)
        if not math.isfinite(float(loss.detach())):
            raise DivergedError(
                f"the loss on a batch is {float(loss.detach())} before any step: the model or the data produce "
                "non-finite values. Check the inputs (NaNs?) and the model's initialization."
            )
        names = self.trainable
        grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=create_graph, allow_unused=True)
        return {n: torch.zeros_like(theta[n]) if g is None else g for n, g in zip(names, grads)}

    def _loss(self, theta: dict[str, Tensor], batch: Batch) -> Tensor:
        # fresh copies of the buffers: BatchNorm's running statistics update those, not the model's
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        inputs, targets = batch
        loss = self.loss_fn(functional_call(self.model, {**theta, **buffers}, (inputs,)), targets)
        if not torch.is_tensor(loss) or loss.dim() != 0:
            raise ConfigError(
                f"lrsi's loss_fn returned {_describe(loss)}, not a scalar tensor; give a loss with "
                "mean reduction, e.g. torch.nn.functional.cross_entropy."
            )
        return loss


def _sgd_step(theta: dict[str, Tensor], grads: dict[str, Tensor], lr: float) -> dict[str, Tensor]:
    return {name: (t - lr * grads[name]) if name in grads else t for name, t in theta.items()}


# ---------------------------------------------------------------------- the model


def _weights_to_scale(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{named_parameters name: parameter}`` of every trainable conv / linear weight, ghosts excluded."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"lrsi needs a torch.nn.Module, got a {type(model).__name__}.")
    names = {id(p): name for name, p in model.named_parameters()}
    weights = {names[id(p)]: p for p in prunable_weights(model).values() if id(p) in names}
    if not weights:
        raise ConfigError(
            f"{type(model).__name__} has no conv or linear weight for LRsI to re-scale; "
            "turn LRsI off for this model (it re-scales nn.Conv*d and nn.Linear weights only)."
        )
    trainable = {name: p for name, p in weights.items() if p.requires_grad}
    if not trainable:
        raise ConfigError(
            f"every conv / linear weight of {type(model).__name__} is frozen (requires_grad=False), so "
            "LRsI has nothing to re-scale; unfreeze them or turn LRsI off."
        )
    return trainable


@torch.no_grad()
def _fold(weights: dict[str, nn.Parameter], scales: dict[str, float]) -> None:
    """Multiply each weight by its scale in place: same parameter objects, masked zeros stay zero."""
    for name, weight in weights.items():
        weight.mul_(scales[name])


@contextlib.contextmanager
def _untouched_model(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Train mode and a private seeded RNG inside; every module's mode and the RNG restored after."""
    modes = [(m, m.training) for m in model.modules()]
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.enable_grad():
        torch.default_generator.manual_seed(RNG_SEED)
        if cuda:
            torch.cuda.default_generators[cuda[0]].manual_seed(RNG_SEED)
        try:
            model.train()
            yield
        finally:
            for module, training in modes:
                module.training = training


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ---------------------------------------------------------------------- batches


def _batch_stream(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """Endless batches on ``device``: re-iterates an iterable, caches a one-shot iterator."""
    if not isinstance(batches, Iterable) or isinstance(batches, (Tensor, str, bytes)):
        raise ConfigError(
            f"lrsi's batches is a {type(batches).__name__}; give an iterable of (inputs, targets) pairs, "
            "e.g. a DataLoader or [(x, y)]."
        )
    if isinstance(batches, Iterator):  # a generator can be read once: keep what it yields
        seen: list[Batch] = []
        for batch in batches:
            batch = _on_device(batch, device)
            seen.append(batch)
            yield batch
        while seen:
            yield from seen
        return
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield _on_device(batch, device)
        if empty:
            return


def _first_batch(stream: Iterator[Batch]) -> Batch:
    try:
        return next(stream)
    except StopIteration:
        raise ConfigError(
            "lrsi got no batches; pass the training data, e.g. the train DataLoader or a list of "
            "(inputs, targets) pairs (a few batches are enough, they are cycled)."
        ) from None


def _on_device(batch: object, device: torch.device) -> Batch:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(torch.is_tensor(t) for t in batch)):
        raise DataError(
            f"lrsi's batches must be (inputs, targets) pairs of tensors, got {_describe(batch)}; "
            "wrap the data so it yields (x, y), e.g. ((x, y) for x, y, *_ in loader)."
        )
    inputs, targets = batch
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


# ---------------------------------------------------------------------- options


def _check_options(
    lr: float,
    iterations: int,
    scale_lr: float,
    grad_norm_bound: float,
    min_scale: float,
    on_iteration: Callable[[int, float], None] | None,
) -> None:
    checks = [
        ("lr", lr, _positive(lr) and math.isfinite(lr), "the training run's SGD learning rate, e.g. 0.1"),
        ("iterations", iterations, _whole(iterations) and iterations >= 1, "a whole number of updates >= 1, e.g. 100"),
        ("scale_lr", scale_lr, _positive(scale_lr) and math.isfinite(scale_lr), "Adam's step size, e.g. 0.01"),
        ("grad_norm_bound", grad_norm_bound, _positive(grad_norm_bound), "a bound > 0, e.g. 10 (math.inf: none)"),
        ("min_scale", min_scale, _positive(min_scale) and min_scale <= 1.0, "a floor in (0, 1], e.g. 0.01"),
    ]
    for option, value, ok, wanted in checks:
        if not ok:
            raise ConfigError(f"lrsi option {option}={value!r} is out of range; give {wanted}.")
    if on_iteration is not None and not callable(on_iteration):
        raise ConfigError(
            f"lrsi's on_iteration is a {type(on_iteration).__name__}, not a callable; "
            "pass a function (iteration, objective) -> None, or None."
        )


def _positive(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _describe(value: object) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value[:3])})"
    return f"a {type(value).__name__}"
