"""IMP: iterative magnitude pruning, the lottery ticket procedure (Frankle & Carbin; Frankle et al.).

Round r trains the network under the mask of round r - 1 (round 1: dense), then prunes
``rate`` of the weights that remain by magnitude (global by default), so after round k
the sparsity is 1 - (1 - rate)^k; the last round stops exactly at the target. Before
every later round the weights rewind: to the initialization (``rewind: init``), or to
an early point of the dense round (``rewind: {epoch: E}`` or ``{step: S}``; the lottery
paper rewinds to epoch 33 of 180, about 18%). Every round's mask sparsity and accuracy
are recorded. Give ``sparsity`` and ``rounds`` (the rate follows) or ``rate`` (the
rounds follow, default rate 0.2); both together must be able to reach the target.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from surgery.errors import ConfigError
from surgery.hooks import TrainerView, TrainingHook
from surgery.pruning.budget import Budget, masks_from_scores, weights_of
from surgery.pruning.registry import StageResult, register

DEFAULT_RATE = 0.2


def imp_plan(target: float, rounds: int | None = None, rate: float | None = None) -> tuple[int, float]:
    """(rounds, rate) for ``target``; the sparsity after round r is min(target, 1 - (1 - rate)^r)."""
    if rate is not None and not 0.0 < rate < 1.0:
        raise ConfigError(f"imp rate={rate} is the fraction of remaining weights pruned per round, in (0, 1), e.g. 0.2.")
    if rounds is not None and rounds < 1:
        raise ConfigError(f"imp rounds={rounds}: prune in at least 1 round.")
    if target == 0:
        return 0, 0.0
    if rounds is not None and rate is not None:
        reached = 1 - (1 - rate) ** rounds
        if reached < target - 1e-9:
            raise ConfigError(
                f"imp: {rounds} rounds pruning {rate:g} of the remaining weights reach sparsity {reached:.4f}, short of "
                f"the target {target}; use {math.ceil(math.log(1 - target) / math.log(1 - rate))} rounds, or "
                f"rate {1 - (1 - target) ** (1 / rounds):.4f}, or give only one of the two."
            )
        return rounds, rate
    if rounds is not None:
        return rounds, 1 - (1 - target) ** (1 / rounds)
    rate = DEFAULT_RATE if rate is None else rate
    return math.ceil(math.log(1 - target) / math.log(1 - rate) - 1e-9), rate


def round_sparsity(r: int, rate: float, target: float) -> float:
    """The mask's sparsity after round ``r``: 1 - (1 - rate)^r, never past the target."""
    return min(target, 1 - (1 - rate) ** r)


class RewindPoint(TrainingHook):
    """Keeps the weights at the start of ``epoch`` or after ``step`` of a run (for rewinding to them)."""

    name = "rewind_point"

    def __init__(self, *, epoch: int | None = None, step: int | None = None):
        if (epoch is None) == (step is None):
            raise ConfigError("imp rewind: give exactly one of {epoch: E} or {step: S}, or use rewind: init.")
        self.epoch, self.step = epoch, step
        self.state: dict[str, torch.Tensor] | None = None

    def setup(self, trainer: TrainerView) -> None:
        limit = trainer.epochs if self.epoch is not None else trainer.epochs * trainer.steps_per_epoch
        point = self.epoch if self.epoch is not None else self.step
        if not 0 <= point < limit:
            raise ConfigError(f"imp rewind point {point} is outside the dense round's 0..{limit - 1} "
                              f"{'epochs' if self.epoch is not None else 'steps'}.")

    def _keep(self, trainer: TrainerView) -> None:
        self.state = {k: v.detach().cpu().clone() for k, v in trainer.module.state_dict().items()}

    def on_epoch_start(self, trainer: TrainerView) -> None:
        if self.epoch is not None and trainer.epoch == self.epoch:
            self._keep(trainer)

    def after_step(self, trainer: TrainerView) -> None:
        if self.step is not None and trainer.step == self.step:
            self._keep(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state.get("state")


def _rewind_hook(rewind: Any) -> RewindPoint | None:
    if rewind in (None, "init", 0):
        return None
    if isinstance(rewind, dict):
        unknown = set(rewind) - {"epoch", "step"}
        if unknown:
            raise ConfigError(f"imp rewind has no field {sorted(unknown)}; give {{epoch: E}} or {{step: S}}.")
        return RewindPoint(epoch=rewind.get("epoch"), step=rewind.get("step"))
    raise ConfigError(f"imp rewind={rewind!r}: use init, {{epoch: E}} (e.g. 33 of 180) or {{step: S}}.")


@register("imp", stage="before", scope="global", about="iterative magnitude pruning (lottery tickets) with rewinding")
def imp_masks(model: nn.Module, names: list[str], budget: Budget, *, train, rounds: int | None = None,
              rate: float | None = None, rewind: Any = "init", seed: int = 0) -> StageResult:
    """``train(model, masks, tag=, hooks=)`` trains one round and returns the trainer's result."""
    total_rounds, rate = imp_plan(budget.sparsity, rounds, rate)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    point = _rewind_hook(rewind)
    masks: dict[str, torch.Tensor] | None = None
    history = []
    for r in range(1, total_rounds + 1):
        net = copy.deepcopy(model)
        net.load_state_dict(start)
        hooks = [point] if point is not None and r == 1 else []
        result = train(net, masks, tag=f"imp-round{r}", hooks=hooks)
        if point is not None and r == 1:
            start = point.state
        trained = weights_of(result.model, names)
        sparsity = round_sparsity(r, rate, budget.sparsity)
        scores = {n: (w.detach() * (masks[n].to(w.device) if masks else 1)).abs() for n, w in trained.items()}
        masks = masks_from_scores(scores, Budget(sparsity, budget.scope, budget.distribution))
        final = result.history[-1] if result.history else {}
        history.append({"round": r, "trained_sparsity": round_sparsity(r - 1, rate, budget.sparsity),
                        "accuracy": final.get("test_acc", final.get("val_acc")), "sparsity": sparsity,
                        "mask": {n: m.clone() for n, m in masks.items()}})
    return StageResult(masks or {}, start, history)
