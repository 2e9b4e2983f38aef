"""Schedules: how alpha (ghost skips), beta (PSwish), label smoothing and the learning rate move.

A ``Schedule`` maps progress ``t`` in [0, 1] over its span to a value; ``linear`` is the
pipeline paper's ``v_t = v_0 (1 - t/T) + v_end t/T`` (alpha_t = alpha_0 (1 - t/T) with
``end: 0``, beta_t with ``end: beta_max``, ls_t with ``end: 0``). ``GhostPlan`` puts the
ghost schedules on the training timeline: they run from the first step to the step
just before the ghosts are removed (by default right before the first LR decay, as in
ToST), reaching their end values exactly there; ``LRSchedule`` gives the learning-rate
factor at a (fractional) epoch. Everything is a pure function of (epoch, step), so a
resumed run recomputes the same values without storing schedule state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from surgery.errors import ConfigError, did_you_mean

SCHEDULE_KINDS = ("linear", "cosine", "step", "constant")
LR_KINDS = ("step", "cosine", "constant")
STEPPING = ("step", "epoch")
REMOVAL = ("gradual", "abrupt")
FIRST_DECAY = "first_decay"
NEVER = "never"
DECAY_FRACTIONS = (0.5, 0.75)  # ToST's step decays: epochs 90 and 135 of 180


def scaled_milestones(epochs: int) -> list[int]:
    """The step decays of an ``epochs`` run: at 50% and 75% of it, rounded down to whole epochs.

    Every run of 2+ epochs decays before its last epoch; at 2 epochs both fractions fall on
    epoch 1 and it decays once; a 1-epoch run has no decay (its only epoch is epoch 0).
    """
    return sorted({int(epochs * f) for f in DECAY_FRACTIONS} - {0})


def _unknown(what: str, name: Any, known: Sequence[str]) -> ConfigError:
    return ConfigError(f"unknown {what} '{name}'." + did_you_mean(str(name), known) + f" Known: {list(known)}.")


@dataclass(frozen=True)
class Schedule:
    """``kind`` from ``start`` to ``end`` over a span; ``steps`` stairs for ``step``."""

    kind: str = "linear"
    start: float = 1.0
    end: float = 0.0
    steps: int = 4

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise _unknown("schedule kind", self.kind, SCHEDULE_KINDS)
        if self.kind == "step" and int(self.steps) < 1:
            raise ConfigError(f"a step schedule needs steps >= 1 stairs, not {self.steps}.")

    def at(self, t: float) -> float:
        """The value at progress ``t`` (clamped to [0, 1])."""
        t = min(max(t, 0.0), 1.0)
        if self.kind == "constant":
            return self.start
        if self.kind == "cosine":
            t = (1 - math.cos(math.pi * t)) / 2
        elif self.kind == "step":
            t = math.floor(t * self.steps) / self.steps
        return self.start + (self.end - self.start) * t

    @classmethod
    def parse(cls, spec: Any, *, name: str, default: Schedule | None = None) -> Schedule:
        """A number (constant), a mapping ``{kind, start, end, steps}``, or a Schedule."""
        if isinstance(spec, Schedule):
            return spec
        if spec is None:
            return default if default is not None else cls("constant", 0.0, 0.0)
        if isinstance(spec, bool) or not isinstance(spec, (int, float, Mapping)):
            raise ConfigError(f"{name} schedule must be a number or a mapping like {{kind: linear, start: 1, end: 0}}, not {spec!r}.")
        if not isinstance(spec, Mapping):
            return cls("constant", float(spec), float(spec))
        known = ("kind", "start", "end", "steps")
        for key in spec:
            if key not in known:
                raise ConfigError(f"{name} schedule has no field '{key}'." + did_you_mean(str(key), known) + f" Fields: {list(known)}.")
        base = default or cls()
        values = {"kind": spec.get("kind", base.kind), "start": spec.get("start", base.start), "steps": spec.get("steps", base.steps)}
        values["end"] = spec.get("end", values["start"] if values["kind"] == "constant" else base.end)
        try:
            return cls(str(values["kind"]), float(values["start"]), float(values["end"]), int(values["steps"]))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{name} schedule {dict(spec)} has a non-numeric value: {error}.") from error

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "start": self.start, "end": self.end}
        if self.kind == "step":
            out["steps"] = self.steps
        return out


@dataclass(frozen=True)
class Clock:
    """Where training is: ``epoch`` (0-based), ``batch`` within it, of ``steps_per_epoch``."""

    epoch: int
    batch: int
    steps_per_epoch: int

    @property
    def step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.batch

    @property
    def fractional_epoch(self) -> float:
        return self.epoch + self.batch / max(self.steps_per_epoch, 1)


def progress(clock: Clock, span_epochs: int, per: str) -> float:
    """Progress in [0, 1] over the first ``span_epochs`` epochs; exactly 1 at the span's last step (or epoch)."""
    if per == "epoch":
        return clock.epoch / max(span_epochs - 1, 1)
    return clock.step / max(span_epochs * clock.steps_per_epoch - 1, 1)


# ------------------------------------------------------------------ learning rate


@dataclass(frozen=True)
class LRSchedule:
    """Factor on the base learning rate: ``step`` (x gamma at each milestone epoch, the ToST
    default 90/135 of 180), ``cosine`` (half a cosine from 1 to 0 at the end, OptG) or
    ``constant``; optional linear warmup. ``delta`` is ASNI's stretch of the cosine,
    (1 + cos(pi e / ((1 + delta) E))) / 2, which ends at a small positive rate instead of 0.
    (ASNI prints eta_0 cos(pi e / ((1 + delta) E)); taken literally that turns negative after
    about half the run, so we read it as the annealing it names, which is what the authors' own
    code computes: see docs/fidelity.md, ASNI.)"""

    kind: str = "step"
    milestones: tuple[int, ...] = (90, 135)
    gamma: float = 0.1
    warmup_epochs: int = 0
    delta: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in LR_KINDS:
            raise _unknown("learning-rate schedule", self.kind, LR_KINDS)
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"lr_schedule milestones {list(self.milestones)} must be increasing epochs, e.g. [90, 135].")
        if self.delta is not None and self.delta <= 0:
            raise ConfigError(f"lr_schedule delta {self.delta} must be > 0 (ASNI uses 0.06 on CIFAR), or omitted.")

    def factor(self, epoch: float, total_epochs: int) -> float:
        """The factor at fractional ``epoch`` of ``total_epochs``."""
        if self.warmup_epochs and epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        if self.kind == "step":
            return self.gamma ** sum(1 for m in self.milestones if int(epoch) >= m)
        if self.kind == "cosine":
            stretch = 1 + (self.delta or 0.0)
            return (1 + math.cos(math.pi * epoch / (stretch * total_epochs))) / 2
        return 1.0

    def first_decay(self, total_epochs: int) -> int:
        """The epoch of the first LR decay: the first milestone (step), else half-way (cosine, constant)."""
        if self.kind == "step" and self.milestones:
            return int(self.milestones[0])
        return max(total_epochs // 2, 1)

    def check(self, total_epochs: int) -> None:
        late = [m for m in self.milestones if m >= total_epochs] if self.kind == "step" else []
        if late:
            fix = (f"leave lr_schedule.milestones out to decay at 50% and 75% of the run "
                   f"({scaled_milestones(total_epochs)})" if total_epochs > 1 else
                   "a 1-epoch run has no decay: leave lr_schedule.milestones out or set it to []")
            raise ConfigError(
                f"lr_schedule milestones {late} are at or after the last epoch ({total_epochs} epochs): "
                f"they would never apply; {fix}."
            )


# ------------------------------------------------------------------ ghosts on the timeline


@dataclass(frozen=True)
class GhostPlan:
    """alpha and beta over time and when the ghosts leave.

    ``remove_at``: ``first_decay`` (default: the epoch of the LR schedule's first decay),
    an epoch number (the ghosts are stripped before that epoch starts), or ``never``
    (the keep-forever ablation: ghosts stay at their start strength to the end).
    ``removal: abrupt`` holds alpha and beta at their start values until removal (the
    abrupt-removal ablation); ``gradual`` (default) moves them to their end values.
    """

    alpha: Schedule = field(default_factory=lambda: Schedule("linear", 1.0, 0.0))
    beta: Schedule = field(default_factory=lambda: Schedule("linear", 1.0, 50.0))
    per: str = "step"
    remove_at: int | str = FIRST_DECAY
    removal: str = "gradual"

    def __post_init__(self) -> None:
        for name, schedule in (("alpha", self.alpha), ("beta", self.beta)):
            if min(schedule.start, schedule.end) < 0:  # what set_ghost_strength refuses, caught before training
                raise ConfigError(f"ghosts.{name} runs from {schedule.start:g} to {schedule.end:g}; it must stay >= 0.")
        if self.per not in STEPPING:
            raise _unknown("ghost schedule stepping 'per'", self.per, STEPPING)
        if self.removal not in REMOVAL:
            raise _unknown("ghost removal", self.removal, REMOVAL)
        if isinstance(self.remove_at, str) and self.remove_at not in (FIRST_DECAY, NEVER):
            raise ConfigError(
                f"ghosts remove_at '{self.remove_at}' is neither an epoch number nor '{FIRST_DECAY}' or '{NEVER}'."
            )

    def removal_epoch(self, lr: LRSchedule, total_epochs: int) -> int | None:
        """The epoch before which the ghosts are stripped (``None``: never); checked against the run."""
        if self.remove_at == NEVER:
            return None
        epoch = lr.first_decay(total_epochs) if self.remove_at == FIRST_DECAY else int(self.remove_at)
        if not 1 <= epoch <= total_epochs:
            raise ConfigError(
                f"ghosts remove_at={self.remove_at} resolves to epoch {epoch}, outside a run of {total_epochs} "
                f"epochs: the ghosts would be removed after the run ends. Pick an epoch in 1..{total_epochs}, "
                f"'{FIRST_DECAY}' or '{NEVER}'."
            )
        return epoch

    def strength(self, clock: Clock, removal_epoch: int | None) -> dict[str, float]:
        """alpha and beta at ``clock`` while the ghosts are in."""
        removal_step = None if removal_epoch is None else removal_epoch * clock.steps_per_epoch
        return self.strength_at_step(clock.step, removal_step, clock.steps_per_epoch)

    def strength_at_step(self, step: int, removal_step: int | None, steps_per_epoch: int = 1) -> dict[str, float]:
        """alpha and beta before ``step`` (0-based) runs, the ghosts leaving before ``removal_step``
        (``None``: never); the end values are reached on the step just before it (``per: step``) or
        in the epoch just before it (``per: epoch``)."""
        if removal_step is None or self.removal == "abrupt":
            return {"alpha": self.alpha.start, "beta": self.beta.start}
        if self.per == "epoch":
            span_epochs = math.ceil(removal_step / steps_per_epoch)
            t = (step // steps_per_epoch) / max(span_epochs - 1, 1)
        else:
            t = step / max(removal_step - 1, 1)
        return {"alpha": self.alpha.at(t), "beta": self.beta.at(t)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha.to_dict(), "beta": self.beta.to_dict(), "per": self.per,
            "remove_at": self.remove_at, "removal": self.removal,
        }


@dataclass(frozen=True)
class SmoothingPlan:
    """Label smoothing over its own span (``epochs``, default the whole run), then held at its end value."""

    schedule: Schedule = field(default_factory=lambda: Schedule("constant", 0.0, 0.0))
    epochs: int | None = None
    per: str = "epoch"

    def __post_init__(self) -> None:
        for value in (self.schedule.start, self.schedule.end):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"label smoothing {value} is outside [0, 1): it is the weight of the uniform target, e.g. 0.1.")
        if self.per not in STEPPING:
            raise _unknown("label smoothing stepping 'per'", self.per, STEPPING)

    def at(self, clock: Clock, total_epochs: int) -> float:
        return self.schedule.at(progress(clock, self.epochs or total_epochs, self.per))
