"""Layer-wise Re-scaled Initialization (LRsI): GradInit's learned scales, then folded into the weights.

ToST keeps a sparse mask's initialization and only re-scales each parameter tensor by a
learned scalar, following GradInit (Zhu et al. 2021) as the official ToST code does (its
``LRsI/gradinit_utils.py`` is GradInit's ``gradinit_utils.py``). With ``theta_i' = m_i * theta_i``
for every conv / Linear weight and bias and every norm layer's weight and bias:

    S  = two half-batches (h0, h1),  S~ = (h0, h2)          fresh data every iteration
                                                            (half_batches=False: whole batches, ToST's)
    g  = grad L(theta'; S)                                  (differentiable in m)
    if ||g||_2 > gamma:   minimize ||g||_2                  (GradInit's constraint step)
    else:                 minimize L(theta' - eta g / ||g||_2; S~) / eta

The step is GradInit's normalized SGD step, as in GradInit's published SGD runs and ToST's
README command (``normalize=False``: ``eta * g``, the default of both scripts' argparse). The
scales are updated by GradInit's Adam variant: each scale's gradient is clipped to
[-grad_clip, grad_clip]; the objective and the constraint keep their own first moments and
share the second; weights' scales stay >= min_scale, biases' >= 0.

The model runs as GradInit runs it: dropout and other train-only randomness off, BatchNorm
on batch statistics, its running statistics untouched (the model is evaluated at substituted
parameters with ``torch.func.functional_call`` on copies of its buffers). Nothing of the
model changes until the final fold, which multiplies each tensor in place (``original`` of a
masked weight, so masked zeros stay exactly zero and an optimizer built before keeps the same
parameter objects).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from surgery.errors import ConfigError, DataError, DivergedError
from surgery.compiler.ghosts import GHOSTS_ROOT
from surgery.fx.layers import LAYER_TYPES
from surgery.compiler.masks import direct_parameters

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

# GradInit's published SGD setting for CIFAR (launch/run_gradinit.sh:20-23, 36): gamma 1 with the
# normalized step, eta 0.1, scale learning rate 1e-3 (BN ResNets; 1e-1 for VGG-19 with BN), per-scale
# gradient clipping at 1, scales of weights kept >= 0.01, 390 iterations (an epoch of CIFAR-10 at
# batch 128). The argparse defaults of GradInit's train_cifar.py:58-73 and ToST's
# LRsI/train_ticket.py:33-48 differ: gamma inf and no normalization. ToST's README runs gamma 1,
# normalized, scale lr 1e-2, 180 iterations.
DEFAULT_ITERATIONS = 390  # iterations=None: len(batches) (the pipeline passes len(train_loader))
DEFAULT_SCALE_LR = 1e-3
DEFAULT_GRAD_NORM_BOUND = 1.0
DEFAULT_GRAD_CLIP = 1.0
DEFAULT_MIN_SCALE = 0.01
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
RNG_SEED = 0  # randomness left inside the procedure draws from a fixed, private stream

SCALED_MODULES = (*LAYER_TYPES, nn.modules.batchnorm._NormBase,
                  nn.GroupNorm, nn.LayerNorm)


@dataclass
class LRsIResult:
    """What ``lrsi`` learned and folded into the model."""

    scales: dict[str, float]  # parameter name (as in model.named_parameters()) -> learned scale
    loss_before: float  # loss on S~ after one simulated step on S from the unscaled init
    loss_after: float  # the same from the scaled init
    iterations: int
    constrained_iterations: int = 0  # iterations spent lowering ||g|| instead of the loss (GradInit's cs_count)
    seconds: float = 0.0  # wall time of the whole procedure


def lrsi(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    loss_fn: LossFn = F.cross_entropy,
    eta: float = 0.1,
    iterations: int | None = DEFAULT_ITERATIONS,
    scale_lr: float = DEFAULT_SCALE_LR,
    grad_norm_bound: float = DEFAULT_GRAD_NORM_BOUND,
    normalize: bool = True,
    min_scale: float = DEFAULT_MIN_SCALE,
    grad_clip: float = DEFAULT_GRAD_CLIP,
    half_batches: bool = True,
    on_iteration: Callable[[int, float], None] | None = None,
) -> LRsIResult:
    """Learn one scale per conv / Linear / norm weight and bias (GradInit) and multiply it in.

    ``model`` is a compiled ghosted ``GraphModule`` (masked weights are parametrized) or any
    ``nn.Module``. Ghost parameters are not scaled (they leave with the ghosts), but the
    simulated step moves every trainable parameter, ghosts included, because the real first
    step does.

    - ``batches``: ``(inputs, targets)`` pairs, e.g. the training DataLoader. Each iteration
      reads three fresh half-batches (1.5 batches; 3 batches with ``half_batches=False``); an
      iterable is re-iterated and a generator replayed when it runs out, so a short list works
      but repeats its data.
    - ``half_batches``: True splits each batch in two, so S and S~ hold one batch each
      (GradInit's loader serves half the training batch); False reads whole batches, so S and
      S~ hold two batches each (ToST hands GradInit its training loader).
    - ``eta``: the length of the simulated step, GradInit's eta: the training run's learning
      rate (ToST: 0.1).
    - ``iterations``: updates of the scales (GradInit: 390, an epoch of CIFAR-10 at batch 128);
      None: ``len(batches)``, one per batch of the loader.
    - ``scale_lr``: the scales' Adam learning rate (GradInit: 1e-3 for BN ResNets).
    - ``grad_norm_bound``: gamma; above it an iteration lowers ``||g||_2`` instead of the loss
      (GradInit: 1 with the normalized step; ``math.inf`` turns the constraint off).
    - ``normalize``: step ``eta * g / ||g||`` (GradInit's); False steps ``eta * g``.
    - ``min_scale``: the floor of every weight's scale (GradInit: 0.01); biases' floor is 0.
    - ``grad_clip``: each scale's gradient is clipped to [-grad_clip, grad_clip] (GradInit: 1).
    - ``on_iteration(i, objective)``: called after iteration ``i`` (1 .. iterations).

    The model's buffers, modes, gradients and the global RNG are left as they were; only the
    scaled tensors change. Deterministic for a fixed sequence of batches.
    """
    started = time.perf_counter()
    check_options(eta, iterations, scale_lr, grad_norm_bound, min_scale, grad_clip)
    _check_flags_and_callback(normalize, half_batches, on_iteration)
    iterations = _resolved_iterations(iterations, batches)
    scaled, biases = _tensors_to_scale(model)
    device = _device_of(model)
    stream = _batch_stream(batches, device)
    units = _half_batches(stream) if half_batches else stream

    problem = _OneStepProblem(model, list(scaled), loss_fn, eta, normalize)
    with _gradinit_mode(model, device):
        probe = _draw(units)
        ones = torch.ones(len(scaled), device=device)
        loss_before = problem.loss_after_step(ones, *probe)
        floors = torch.tensor([0.0 if name in biases else min_scale for name in scaled], device=device)
        scales, constrained = _learn_scales(
            problem, units, probe, iterations, scale_lr, grad_norm_bound, grad_clip, floors, on_iteration
        )
        loss_after = problem.loss_after_step(scales, *probe)
    learned = dict(zip(scaled, scales.tolist()))
    _fold(scaled, learned)
    return LRsIResult(learned, loss_before, loss_after, iterations, constrained, time.perf_counter() - started)


def _resolved_iterations(iterations: int | None, batches: object) -> int:
    """``iterations``, or one per batch of ``batches`` when None (GradInit's 390: CIFAR-10's batches at 128)."""
    if iterations is not None:
        return iterations
    try:
        count = len(batches)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            f"lrsi(iterations=None) runs one iteration per batch, but the batches ({type(batches).__name__}) "
            "have no len(); give iterations, e.g. iterations=390."
        ) from None
    if count < 1:
        raise ConfigError("lrsi got no batches; pass the training data, e.g. the train DataLoader.")
    return count


# ---------------------------------------------------------------------- learning


def _learn_scales(
    problem: _OneStepProblem,
    units: Iterator[Batch],
    first: tuple[Batch, Batch],
    iterations: int,
    scale_lr: float,
    grad_norm_bound: float,
    grad_clip: float,
    floors: Tensor,
    on_iteration: Callable[[int, float], None] | None,
) -> tuple[Tensor, int]:
    """GradInit's loop; returns the scales and how many iterations the norm constraint took."""
    scales = torch.ones(len(problem.scaled), device=floors.device, requires_grad=True)
    adam = _RescaleAdam(scales, scale_lr)
    batch, next_batch = first
    for iteration in range(1, iterations + 1):
        objective, constrained = problem.objective(scales, batch, next_batch, grad_norm_bound)
        value = float(objective.detach())
        if not math.isfinite(value):
            raise DivergedError(
                f"LRsI's objective became {value} at iteration {iteration}; the simulated SGD step blew up. "
                f"Lower eta (now {problem.eta:g}) or grad_norm_bound (now {grad_norm_bound:g})."
            )
        (gradient,) = torch.autograd.grad(objective, [scales])
        adam.step(gradient.clamp(-grad_clip, grad_clip), constrained, floors)
        if on_iteration is not None:
            on_iteration(iteration, value)
        if iteration < iterations:
            batch, next_batch = _draw(units)
    return scales.detach(), adam.constraint_steps


class _RescaleAdam:
    """GradInit's Adam on the scales: separate first moments for the objective and the
    constraint steps, one shared second moment, each step's bias corrections from its counts.
    (torch.optim.Adam keeps one first moment, so it cannot follow the two objectives apart.)"""

    def __init__(self, scales: Tensor, lr: float):
        self.scales, self.lr = scales, lr
        self.first = {False: torch.zeros_like(scales), True: torch.zeros_like(scales)}  # by constrained
        self.second = torch.zeros_like(scales)
        self.steps = {False: 0, True: 0}

    @property
    def constraint_steps(self) -> int:
        return self.steps[True]

    @torch.no_grad()
    def step(self, gradient: Tensor, constrained: bool, floors: Tensor) -> None:
        beta1, beta2 = ADAM_BETAS
        self.steps[constrained] += 1
        first = self.first[constrained].mul_(beta1).add_(gradient, alpha=1 - beta1)
        self.second.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        correction1 = 1 - beta1 ** self.steps[constrained]
        correction2 = 1 - beta2 ** (self.steps[False] + self.steps[True])
        denominator = (self.second / correction2).sqrt_().add_(ADAM_EPS)
        self.scales.sub_(self.lr / correction1 * first / denominator)
        torch.maximum(self.scales, floors, out=self.scales)


class _OneStepProblem:
    """The model as a function of its parameters, with ``scaled`` tensors multiplied by scales."""

    def __init__(self, model: nn.Module, scaled: list[str], loss_fn: LossFn, eta: float, normalize: bool):
        self.model, self.scaled, self.loss_fn = model, scaled, loss_fn
        self.eta, self.normalize = eta, normalize
        self.parameters = dict(model.named_parameters())
        self.trainable = [name for name, p in self.parameters.items() if p.requires_grad]
        self._is_trainable = frozenset(self.trainable)

    def objective(self, scales: Tensor, batch: Batch, next_batch: Batch, grad_norm_bound: float) -> tuple[Tensor, bool]:
        """GradInit's objective, differentiable in ``scales``; True when the norm constraint took it."""
        theta = self._parameters_at(scales)
        grads = self._gradient(theta, batch, create_graph=True)
        grad_norm = _norm(grads)
        if float(grad_norm.detach()) > grad_norm_bound:
            return grad_norm, True
        return self._loss(self._step(theta, grads, grad_norm), next_batch) / self.eta, False

    def loss_after_step(self, scales: Tensor, batch: Batch, next_batch: Batch) -> float:
        """The loss on ``next_batch`` after one simulated step on ``batch`` from the scaled tensors."""
        theta = self._as_leaves(self._parameters_at(scales))
        grads = self._gradient(theta, batch, create_graph=False)
        with torch.no_grad():
            return float(self._loss(self._step(theta, grads, _norm(grads)), next_batch))

    def _step(self, theta: dict[str, Tensor], grads: dict[str, Tensor], grad_norm: Tensor) -> dict[str, Tensor]:
        size = self.eta / grad_norm.clamp_min(1e-12) if self.normalize else self.eta
        return {name: (t - size * grads[name]) if name in grads else t for name, t in theta.items()}

    def _parameters_at(self, scales: Tensor) -> dict[str, Tensor]:
        """Every parameter as a tensor: scaled ones as ``m_i * theta_i``, the rest as leaves."""
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


def _norm(grads: dict[str, Tensor]) -> Tensor:
    return torch.sqrt(sum(g.square().sum() for g in grads.values()))


# ---------------------------------------------------------------------- the model


def _tensors_to_scale(model: nn.Module) -> tuple[dict[str, nn.Parameter], set[str]]:
    """``{named_parameters name: parameter}``: trainable weights and biases of conv, Linear and norm
    layers (GradInit's set), seen through mask parametrizations, ghosts excluded; and the biases' names."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"lrsi needs a torch.nn.Module, got a {type(model).__name__}.")
    names = {id(p): name for name, p in model.named_parameters()}
    found: dict[str, nn.Parameter] = {}
    biases: set[str] = set()
    for module_name, module in model.named_modules():
        parts = module_name.split(".")
        if parts[0] == GHOSTS_ROOT or "parametrizations" in parts or not isinstance(module, SCALED_MODULES):
            continue
        for attribute, param in direct_parameters(module, lambda name, p: name in ("weight", "bias")):
            if id(param) in names and param.requires_grad:
                found.setdefault(names[id(param)], param)
                if attribute == "bias":
                    biases.add(names[id(param)])
    if not found:
        raise ConfigError(
            f"{type(model).__name__} has no trainable conv, Linear or norm-layer weight for LRsI to re-scale; "
            "unfreeze them or turn LRsI off for this model."
        )
    return found, biases


@torch.no_grad()
def _fold(tensors: dict[str, nn.Parameter], scales: dict[str, float]) -> None:
    """Multiply each tensor by its scale in place: same parameter objects, masked zeros stay zero."""
    for name, tensor in tensors.items():
        tensor.mul_(scales[name])


@contextlib.contextmanager
def _gradinit_mode(model: nn.Module, device: torch.device) -> Iterator[None]:
    """GradInit's modes: eval (dropout off) with BatchNorm on batch statistics; a private seeded RNG.
    Every module's mode and the global RNG are restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.enable_grad():
        torch.default_generator.manual_seed(RNG_SEED)
        if cuda:
            torch.cuda.default_generators[cuda[0]].manual_seed(RNG_SEED)
        try:
            model.eval()
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()
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
    """Endless batches on ``device``: re-iterates an iterable, replays a one-shot iterator."""
    if not isinstance(batches, Iterable) or isinstance(batches, (Tensor, str, bytes)):
        raise ConfigError(
            f"lrsi's batches is a {type(batches).__name__}; give an iterable of (inputs, targets) pairs, "
            "e.g. the training DataLoader or [(x, y)]."
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


def _half_batches(stream: Iterator[Batch]) -> Iterator[Batch]:
    """Each batch as two halves (GradInit's loader serves half the training batch); a batch of one whole."""
    for inputs, targets in stream:
        half = len(inputs) // 2
        if half:
            yield inputs[:half], targets[:half]
            yield inputs[half:], targets[half:]
        else:
            yield inputs, targets


def _draw(units: Iterator[Batch]) -> tuple[Batch, Batch]:
    """GradInit's pair: S = (u0, u1) for the gradient, S~ = (u0, u2) to judge the step.

    GradInit's ``gradinit`` (gradinit_utils.py:176-182, 217-222; ToST's copy: LRsI/gradinit_utils.py
    177-183, 218-223) concatenates two draws of its loader for S and the first with a third for S~.
    GradInit's loader serves half batches (train_cifar.py:188-192), ToST's is the training loader
    itself (LRsI/train_ticket.py:176, 255): ``units`` are half-batches or whole batches accordingly.
    (Both read u2 only on iterations the norm bound does not take; here every iteration reads it.)"""
    try:
        h0, h1, h2 = next(units), next(units), next(units)
    except StopIteration:
        raise ConfigError(
            "lrsi got no batches; pass the training data, e.g. the train DataLoader or a list of "
            "(inputs, targets) pairs."
        ) from None
    return _cat(h0, h1), _cat(h0, h2)


def _cat(a: Batch, b: Batch) -> Batch:
    return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])


def _on_device(batch: object, device: torch.device) -> Batch:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(torch.is_tensor(t) for t in batch)):
        raise DataError(
            f"lrsi's batches must be (inputs, targets) pairs of tensors, got {_describe(batch)}; "
            "wrap the data so it yields (x, y), e.g. ((x, y) for x, y, *_ in loader)."
        )
    inputs, targets = batch
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


# ---------------------------------------------------------------------- options


def check_options(
    eta: float,
    iterations: int | None,
    scale_lr: float,
    grad_norm_bound: float,
    min_scale: float,
    grad_clip: float = DEFAULT_GRAD_CLIP,
    prefix: str = "",
) -> None:
    """A ConfigError naming the first option out of range (``prefix``: where a config keeps them)."""
    checks = [
        ("eta", eta, _positive(eta) and math.isfinite(eta), "the training run's learning rate, e.g. 0.1"),
        ("iterations", iterations, iterations is None or (_whole(iterations) and iterations >= 1),
         "a whole number of updates >= 1, e.g. 390, or None (null in a config): one per batch of the training data"),
        ("scale_lr", scale_lr, _positive(scale_lr) and math.isfinite(scale_lr), "Adam's step size, e.g. 0.001"),
        ("grad_norm_bound", grad_norm_bound, _positive(grad_norm_bound), "a bound > 0, e.g. 1 (math.inf: none)"),
        ("min_scale", min_scale, _positive(min_scale) and min_scale <= 1.0, "a floor in (0, 1], e.g. 0.01"),
        ("grad_clip", grad_clip, _positive(grad_clip), "a clip > 0, e.g. 1 (math.inf: none)"),
    ]
    for option, value, ok, wanted in checks:
        if not ok:
            raise ConfigError(f"lrsi option {prefix}{option}={value!r} is out of range; give {wanted}.")


def _check_flags_and_callback(normalize: object, half_batches: object, on_iteration: object) -> None:
    for flag, value in (("normalize", normalize), ("half_batches", half_batches)):
        if not isinstance(value, bool):
            raise ConfigError(f"lrsi's {flag} is {value!r}; give True or False.")
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
