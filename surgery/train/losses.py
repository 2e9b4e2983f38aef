"""Training losses: cross-entropy with label smoothing, and distillation from a dense teacher.

Label smoothing (Szegedy et al. 2016) trains against ``y_ls = y (1 - a) + a / K`` instead
of one-hot labels (``spread: all``, the formula in ToST's text); ToST's released code puts ``a / (K - 1)``
on each wrong class and ``1 - a`` on the true one (``spread: others``,
``label-smoothening/train_ticket.py``), which is PyTorch's smoothing at ``a K / (K - 1)``. Knowledge distillation
(Hinton et al. 2015) is its learned counterpart: the targets are a frozen dense
teacher's softened outputs (Spending Your Winning Lottery Better, Sec. 4.6).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from surgery.errors import ConfigError, DataError


SPREADS = ("all", "others")  # a / K on every class (the paper), or a / (K - 1) on the wrong ones (ToST's code)


def check_label_smoothing(label_smoothing: float) -> float:
    """``label_smoothing`` as a float in [0, 1), or a ConfigError saying what to give instead."""
    if not _is_real(label_smoothing) or not 0.0 <= float(label_smoothing) < 1.0:
        raise ConfigError(
            f"label_smoothing {label_smoothing!r} is outside [0, 1): give the smoothing ratio a, "
            "e.g. 0.1 (0 turns smoothing off; 1 would erase the labels)."
        )
    return float(label_smoothing)


def main_and_auxiliary(output: Any) -> tuple[Tensor, list[Tensor]]:
    """The logits and any auxiliary logits of a model's output: a tensor, an output's ``logits`` entry (Hugging
    Face's ModelOutput, a dict subclass with attribute access), or (GoogLeNet and Inception v3
    in train mode) a tuple whose first element is the logits and whose others are logits of the same
    shape from auxiliary classifiers (``None`` where a head is switched off)."""
    if torch.is_tensor(output):
        return output, []
    logits = _logits_field(output)
    if torch.is_tensor(logits):
        return logits, []
    parts = list(output) if isinstance(output, (tuple, list)) else []
    if parts and torch.is_tensor(parts[0]):
        aux = [t for t in parts[1:] if t is not None]
        if all(torch.is_tensor(t) and t.shape == parts[0].shape for t in aux):
            return parts[0], aux
    described = type(output).__name__ + (f" of {[type(p).__name__ for p in parts]}" if parts else "")
    if isinstance(output, Mapping):
        described += f" with {', '.join(map(str, output)) or 'no entries'}"
    raise ConfigError(
        f"the model returned a {described}; training needs logits of shape (batch, classes), an output with a "
        "'logits' entry (Hugging Face's ModelOutput), or a tuple of the logits and auxiliary logits of that shape "
        "(GoogLeNet, Inception v3 in train mode). Wrap the model so its forward returns the logits."
    )


def _logits_field(output: Any) -> Any:
    """``output["logits"]`` of a mapping (a Hugging Face ModelOutput), ``output.logits`` of another object that
    is no tuple (a tuple's logits come first, with its auxiliary logits after them), else None."""
    if isinstance(output, Mapping):
        return output.get("logits")
    return None if isinstance(output, (tuple, list)) else getattr(output, "logits", None)


def with_auxiliary(aux_weight: float):
    """Cross-entropy of the logits plus ``aux_weight`` times each auxiliary head's (see
    ``main_and_auxiliary``): the objective LRsI steps on, as training does."""

    def loss(output: Any, targets: Tensor) -> Tensor:
        logits, auxiliary = main_and_auxiliary(output)
        total = F.cross_entropy(logits, targets)
        for aux in auxiliary:
            total = total + aux_weight * F.cross_entropy(aux, targets)
        return total

    return loss


def classification_loss(logits: Tensor, targets: Tensor, *, label_smoothing: float = 0.0, spread: str = "all") -> Tensor:
    """Mean cross-entropy against targets smoothed as ``y (1 - a) + a / K`` (``a = label_smoothing``;
    ``spread="others"``: ``1 - a`` on the true class and ``a / (K - 1)`` on each other one).

    ``logits`` is ``(N, K)`` (or ``(N, K, ...)``); ``targets`` holds class indices ``(N, ...)``
    or class probabilities shaped like ``logits``.
    """
    smoothing = check_label_smoothing(label_smoothing)
    _check_targets(logits, targets)
    return F.cross_entropy(logits, targets, label_smoothing=pytorch_smoothing(smoothing, logits.shape[1], spread))


def pytorch_smoothing(alpha: float, classes: int, spread: str = "all") -> float:
    """The ``label_smoothing`` of ``F.cross_entropy`` that spreads ``alpha`` as ``spread`` says: with
    ``a' = alpha K / (K - 1)``, PyTorch's ``a' / K`` on a wrong class is ``alpha / (K - 1)`` and its true
    class gets ``1 - alpha``."""
    if spread not in SPREADS:
        raise ConfigError(f"label_smoothing.spread '{spread}' is neither 'all' (a / K on every class, the paper's) "
                          "nor 'others' (a / (K - 1) on each wrong class, ToST's released code).")
    if spread == "all" or classes < 2:
        return alpha
    return min(alpha * classes / (classes - 1), 1.0)


class SmoothedCrossEntropy(nn.Module):
    """``classification_loss`` as a criterion for your own loop (``surgery.ToST(...).criterion``)."""

    def __init__(self, label_smoothing: float = 0.0, spread: str = "all"):
        super().__init__()
        self.label_smoothing, self.spread = check_label_smoothing(label_smoothing), spread
        pytorch_smoothing(self.label_smoothing, 2, spread)  # refuse an unknown spread now, not at the first step

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return classification_loss(logits, targets, label_smoothing=self.label_smoothing, spread=self.spread)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, spread={self.spread!r}"


def _check_targets(logits: Tensor, targets: Tensor) -> None:
    """Shape checks only (no values): reading values would synchronize with the GPU every step."""
    if logits.dim() < 2:
        raise DataError(
            f"logits have shape {tuple(logits.shape)}; a classifier's output is (batch, classes). "
            "Add the batch dimension (logits.unsqueeze(0)) or check what the model returns."
        )
    class_indices = tuple(targets.shape) == (logits.shape[0], *logits.shape[2:])
    probabilities = targets.is_floating_point() and targets.shape == logits.shape
    if not (class_indices or probabilities):
        raise DataError(
            f"targets of shape {tuple(targets.shape)} do not fit logits of shape {tuple(logits.shape)}: "
            f"give class indices of shape {(logits.shape[0], *logits.shape[2:])} "
            "or class probabilities shaped like the logits."
        )


class Distillation(nn.Module):
    """Knowledge distillation from a frozen dense teacher (Hinton et al. 2015).

    ``loss = (1 - weight) * CE(logits, targets) + weight * tau^2 * KL(p_teacher || p_student)``
    with both distributions softened by ``tau = temperature``; the ``tau^2`` keeps the soft
    term's gradients on the scale of the hard term's as ``tau`` changes.

    The teacher is frozen (``requires_grad_(False)``), kept in eval mode and run under
    ``no_grad`` on the student's inputs. It is deliberately *not* a submodule: a trainer
    holding this loss never puts the teacher's parameters into ``parameters()`` (so not
    into the student's optimizer) nor its tensors into ``state_dict()`` (so not into
    checkpoints), and ``.to()`` / ``.train()`` on this module leave it alone. It follows
    the inputs' device by itself on the first call; read it as ``.teacher``.
    """

    def __init__(self, teacher: nn.Module, *, temperature: float = 4.0, weight: float = 0.9):
        super().__init__()
        if not isinstance(teacher, nn.Module):
            raise ConfigError(
                f"Distillation's teacher is a {type(teacher).__name__}, not a torch.nn.Module; "
                "pass the trained dense model (e.g. the model the mask was pruned from)."
            )
        if not _is_real(temperature) or not math.isfinite(temperature) or temperature <= 0:
            raise ConfigError(
                f"distillation temperature {temperature!r} must be a positive number; "
                "Hinton et al. use 1-20, 4 is a common choice."
            )
        if not _is_real(weight) or not 0.0 <= float(weight) <= 1.0:
            raise ConfigError(
                f"distillation weight {weight!r} is outside [0, 1]: it mixes the hard-label loss (0) "
                "with the teacher's soft targets (1), e.g. 0.9."
            )
        self.temperature = float(temperature)
        self.weight = float(weight)
        teacher.requires_grad_(False)
        teacher.eval()
        # a tuple hides the teacher from nn.Module's registration (parameters, state_dict, to, train)
        self._frozen_teacher: tuple[nn.Module] = (teacher,)

    @property
    def teacher(self) -> nn.Module:
        return self._frozen_teacher[0]

    def extra_repr(self) -> str:
        return f"teacher={type(self.teacher).__name__}, temperature={self.temperature:g}, weight={self.weight:g}"

    def forward(self, logits: Tensor, targets: Tensor, inputs: Tensor, *, label_smoothing: float = 0.0,
                spread: str = "all") -> Tensor:
        hard = classification_loss(logits, targets, label_smoothing=label_smoothing, spread=spread)
        if self.weight == 0.0:
            return hard  # the teacher's forward would be wasted work
        teacher_logits = self.teacher_logits(inputs)
        if teacher_logits.shape != logits.shape:
            raise ConfigError(
                f"the teacher's output has shape {tuple(teacher_logits.shape)} but the student's logits have "
                f"shape {tuple(logits.shape)}; distill from a teacher trained on the same classes."
            )
        soft = soft_target_kl(logits, teacher_logits, self.temperature)
        return (1.0 - self.weight) * hard + self.weight * self.temperature**2 * soft

    @torch.no_grad()
    def teacher_logits(self, inputs: Tensor) -> Tensor:
        """The teacher's logits on ``inputs``, in eval mode, on the inputs' device."""
        teacher = self.teacher
        if teacher.training:
            teacher.eval()  # someone called teacher.train(); its BatchNorm statistics must not move
        device = _device_of(teacher)
        if device is not None and device != inputs.device:
            teacher.to(inputs.device)
        output = teacher(inputs)
        if not torch.is_tensor(output):
            raise ConfigError(
                f"the teacher returned a {type(output).__name__}, not a tensor of logits; wrap it in a module "
                "whose forward returns only the logits."
            )
        return output


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``KL(softmax(t / tau) || softmax(s / tau))`` summed over classes, averaged over the batch."""
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True)


def _device_of(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
