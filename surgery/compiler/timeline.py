"""The ghosts of a model being trained, on a timeline of steps: their strength, their removal.

One piece that both ``surgery.ToST`` (the user's own loop) and the trainer's ghost hook
(``surgery.train.ghost_schedule.GhostSchedule``) drive:
``apply(step)`` sets alpha and beta from a ``GhostPlan`` for the step about to run, ``due(step)``
says the removal step has come, and ``remove()`` strips the ghosts in place
(``deghost(inplace=True, keep_masks=True)``) and takes the ghost parameters out of the attached
optimizer with their state, so every other parameter keeps its identity and its momentum.
``attach(optimizer)`` puts the ghost parameters in a param group of their own (named
``ghosts``), which is what lets them leave cleanly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from surgery.errors import ToSTError
from surgery.compiler.ghosts import GhostSkip, PSwish, ghost_parameters, ghosts, set_ghost_strength
from surgery.compiler.passes.deghost import deghost
from surgery.compiler.schedules import GhostPlan

GHOST_GROUP = "ghosts"
DRIVEN = {"alpha": GhostSkip, "beta": PSwish}  # each strength and the ghost kind that holds it


class GhostTimeline:
    """``model``'s ghosts over a run: stripped before step ``removal_step`` (``None``: never)."""

    def __init__(self, model: nn.Module, plan: GhostPlan, removal_step: int | None, steps_per_epoch: int = 1):
        self.model, self.plan = model, plan
        self.removal_step, self.steps_per_epoch = removal_step, steps_per_epoch
        held = ghosts(model)
        self.ghosted = bool(held)
        self.drives = {name: any(isinstance(g, kind) for _, g in held) for name, kind in DRIVEN.items()}
        self.optimizer: torch.optim.Optimizer | None = None

    def strength(self, step: int) -> dict[str, float | None]:
        """alpha and beta for the step about to run (``None``: no ghost of that kind, or none left)."""
        if not self.ghosted:
            return {name: None for name in DRIVEN}
        values = self.plan.strength_at_step(step, self.removal_step, self.steps_per_epoch)
        return {name: values[name] if self.drives[name] else None for name in DRIVEN}

    def apply(self, step: int) -> dict[str, float | None]:
        """Set the ghosts' strength for ``step`` (in place: no retrace); returns the values."""
        values = self.strength(step)
        if self.ghosted:
            set_ghost_strength(self.model, **values)
        return values

    def due(self, step: int) -> bool:
        """The ghosts are still in and ``step`` is at or past the removal step."""
        return self.ghosted and self.removal_step is not None and step >= self.removal_step

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Check ``optimizer`` trains this model and give the ghost parameters a group of their own."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not held & {id(p) for p in self.model.parameters()}:
            raise ToSTError(
                "the optimizer holds none of the ghosted model's parameters (was it built from the original "
                "model?); build it from tost.model.parameters(), then call tost.attach(optimizer)."
            )
        leaving = ghost_parameters(self.model) if self.ghosted else []
        missing = [p for p in leaving if id(p) not in held]
        if missing:
            raise ToSTError(
                f"the optimizer leaves out {len(missing)} of the {len(leaving)} ghost parameters (the skips' "
                "projections), which would then never train; build it from tost.model.parameters()."
            )
        separate_group(optimizer, leaving)
        self.optimizer = optimizer

    def remove(self) -> int:
        """Strip the ghosts in place (masks stay attached); returns how many parameters left."""
        leaving = ghost_parameters(self.model)
        deghost(self.model, inplace=True, keep_masks=True)
        if self.optimizer is not None:
            drop_group(self.optimizer, leaving)
        self.ghosted = False
        return sum(p.numel() for p in leaving)


def separate_group(optimizer: torch.optim.Optimizer, parameters: Iterable[nn.Parameter]) -> None:
    """Move ``parameters`` into one param group named ``ghosts`` (appended last, so an LR scheduler's
    per-group lists keep their order when it leaves), with the hyper-parameters of the group the
    first of them came from. Their optimizer state, keyed by parameter, is untouched."""
    moving = list(parameters)
    ids = {id(p) for p in moving}
    groups = optimizer.param_groups
    if not ids or any(g.get("name") == GHOST_GROUP and {id(p) for p in g["params"]} == ids for g in groups):
        return
    source = next(g for g in groups if any(id(p) in ids for p in g["params"]))
    for group in groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    groups[:] = [g for g in groups if g["params"]]
    optimizer.add_param_group({**{k: v for k, v in source.items() if k != "params"}, "params": moving, "name": GHOST_GROUP})


def drop_group(optimizer: torch.optim.Optimizer, parameters: Iterable[nn.Parameter]) -> None:
    """Take the ghost group and the state of ``parameters`` out of ``optimizer``."""
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g.get("name") != GHOST_GROUP]
    for p in parameters:
        optimizer.state.pop(p, None)
