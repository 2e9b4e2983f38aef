"""Capacity-matched arms: plain sparse training at the sparsity whose final model holds as many parameters as
another arm's.

An arm that keeps dense ghost parameters to the end (ToST's released code keeps a 1x1 conv + BN jump beside
every 3x3 conv) holds more than its mask: comparing it with plain training at the same mask sparsity measures
capacity as much as training. A sweep asks for the fair control with a ``mask.sparsity`` value that names what
to match instead of a number:

- ``{match: tost-official}`` (or ``{match: {recipe: tost-official, ghosts.remove_at: never}}``): the arm of this
  sweep made of this cell's fields with those set; the cell then trains at the sparsity whose final model holds
  as many trainable parameters (``record.holdings``) as that arm's at its own sparsity;
- ``{parameters: N}``: as many as N.

The sparsity is computed from the model (built as the run builds it, the arm compiled to count the ghost
parameters it keeps), before anything runs. Every parameter outside the mask's budget is dense in both arms, so
the counts are equal when the plain arm keeps ``round((1 - s) * budget) + kept ghost parameters`` of the budget:
exactly so under a global budget, within each layer's rounding under a layer-wise one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from surgery.compiler.driver import compile as compile_model
from surgery.compiler.manifest import manifest_of
from surgery.compiler.presets import is_preset
from surgery.errors import SweepError
from surgery.pruning.budget import prunable_for
from surgery.train.config import RunConfig
from surgery.train.pipeline import build, example_batch, load_data

FIELD = "mask.sparsity"
KINDS = ("match", "parameters")


@dataclass(frozen=True)
class Matched:
    """A plain arm sized to a target: its sparsity and the counts behind it."""

    sparsity: float
    trainable: int  # the target: trainable parameters of the final model
    budget: int  # weights the mask's budget covers
    kept: int  # of them, the weights the plain arm keeps
    arm: dict[str, Any] | None  # the fields of the arm matched (None: a count given as such)
    arm_kept: int = 0  # the arm's mask weights
    arm_ghosts: int = 0  # the arm's ghost parameters left at the end

    def explanation(self) -> str:
        what = (f"as {_fields_text(self.arm)} keeps ({self.arm_kept:,} mask weights + {self.arm_ghosts:,} ghost "
                "parameters)") if self.arm is not None else "as asked"
        return (f"sparsity {self.sparsity:.5f}: {self.kept:,} of {self.budget:,} weights, {self.trainable:,} trainable "
                f"parameters {what}")


def is_target(field: str, value: Any) -> bool:
    """Whether a grid value asks for a capacity-matched sparsity rather than giving one."""
    return field == FIELD and isinstance(value, Mapping)


def target_problem(value: Mapping[str, Any]) -> str | None:
    """What is wrong with a ``{match: ARM}`` / ``{parameters: N}`` value, in words; None when it is well formed."""
    usage = "give {match: RECIPE}, {match: {FIELD: VALUE, ...}} or {parameters: N}"
    if len(value) != 1 or next(iter(value)) not in KINDS:
        return f"a sparsity to compute has one key, match or parameters; {usage}."
    (kind, wanted), = value.items()
    if kind == "parameters" and (isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1):
        return "parameters must be a positive count of trainable parameters."
    if kind == "match" and not (is_preset(wanted) or (isinstance(wanted, Mapping) and wanted)):
        return ("match names the arm to match by its recipe preset or by its fields ({recipe: tost-official, "
                f"ghosts.remove_at: never}}); {usage}.")
    return None


def arm_fields(cell: Mapping[str, Any], value: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of the arm a ``{match: ...}`` value in ``cell`` names: the cell's, with the match's set."""
    wanted = value["match"]
    fields = {f: v for f, v in cell.items() if f != FIELD}
    fields.update({"recipe": wanted} if isinstance(wanted, str) else dict(wanted))
    return fields


def matched_sparsity(config: RunConfig, target: Mapping[str, Any], *, arm: RunConfig | None = None) -> Matched:
    """The sparsity at which plain training of ``config``'s model holds as many trainable parameters as ``arm``
    (a ``{match: ...}`` target: the arm's run config) or as ``target['parameters']``; a ``SweepError`` names
    the range plain training can reach when nothing in [0, 1) does."""
    dataset = load_data(config, hold_out=False)
    model = build(config, dataset)
    total = sum(p.numel() for p in model.parameters())
    budget = sum(w.numel() for w in _budget(config, model).values())
    if arm is None:
        trainable, arm_kept, ghosts, fields = int(target["parameters"]), 0, 0, None
        kept = trainable - (total - budget)
    else:
        arm_kept = round((1 - arm.mask.sparsity) * budget)
        ghosts = kept_ghost_parameters(arm, model, dataset)
        wanted = target["match"]
        fields = dict(wanted) if isinstance(wanted, Mapping) else {"recipe": wanted}
        kept = arm_kept + ghosts
        trainable = total - budget + kept
    if not 1 <= kept <= budget:
        low, high = total - budget + 1, total
        asked = f"{_fields_text(fields)} holds {trainable:,}" if fields is not None else f"{trainable:,} were asked"
        raise SweepError(f"no sparsity in [0, 1) reaches {trainable:,} trainable parameters "
                         f"({asked}): plain training of {config.model.spec} holds between {low:,} (one weight kept) "
                         f"and {high:,} (dense). Match a sparser arm, or give parameters in that range.")
    return Matched(1 - kept / budget, trainable, budget, kept, fields, arm_kept, ghosts)


def kept_ghost_parameters(arm: RunConfig, model: Any, dataset: Any) -> int:
    """The ghost parameters ``arm``'s final model keeps: all its recipe adds when it never removes them, else 0."""
    if not keeps_ghosts(arm):
        return 0
    ghosted = compile_model(copy.deepcopy(model), example_batch(dataset), arm.recipe_object())
    return manifest_of(ghosted).ghost_parameters


def keeps_ghosts(config: RunConfig) -> bool:
    """Whether a run of ``config`` ends with its ghosts in the model (``ghosts.remove_at: never``, or an epoch it
    never reaches)."""
    if not any(name in ("ghost_skip", "soft_activation") for name, _ in config.recipe_object().passes):
        return False
    remove_at = config.ghost_plan().remove_at
    return remove_at == "never" or (isinstance(remove_at, int) and remove_at >= config.train.epochs)


def _budget(config: RunConfig, model: Any) -> dict[str, Any]:
    m = config.mask
    return prunable_for(model, m.prunable, dense_first=m.dense_first, dense_last=m.dense_last, exclude=m.exclude)


def _fields_text(fields: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{f}={v}" for f, v in (fields or {}).items())
