"""ToST in your own training loop: the paper's four tweaks, or any preset of ``surgery.compiler.presets``.

    tost = surgery.ToST(model, x, "tost", masks=masks, total_steps=len(loader) * epochs,
                        remove_at_epoch=90, steps_per_epoch=len(loader))
    tost.lrsi(loader, lr=0.1)            # LRsI: GradInit's scales learned on your loader, folded in
    criterion = tost.criterion           # cross-entropy with the preset's label smoothing (0.1)
    optimizer = torch.optim.SGD(tost.model.parameters(), lr=0.1, momentum=0.9)
    tost.attach(optimizer)
    for x, y in ...:
        loss = criterion(tost.model(x), y); optimizer.zero_grad(); loss.backward(); optimizer.step()
        tost.step()          # alpha / beta for the next step; de-ghosts in place at the removal step
    clean = tost.finish()    # ghosts gone, masks baked, verified against ``model``

``compile(model, x, "tost")`` is the graph part alone (ghost skips + PSwish); ``ToST`` adds the
schedules and removal, LRsI (``lrsi``) and the smoothing (``criterion``) the preset names. With
``"tost-official"`` the ghosts stay to the end (the released code's), so ``finish`` bakes the
masks into the ghosted model and verifies nothing against the original (``architecture`` says so).

The schedules are surgery.compiler.schedules' ``GhostPlan`` and the removal is surgery.compiler.timeline's, the same
the trainer uses; ``state_dict()`` / ``load_state_dict()`` carry the step and whether the ghosts
left, so a resumed loop computes what an uninterrupted one would.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from surgery.compiler.driver import compile
from surgery.compiler.ghosts import ghosts
from surgery.compiler.masks import bake_masks
from surgery.compiler.passes.deghost import deghost
from surgery.compiler.presets import is_preset
from surgery.compiler.recipe import Recipe, refuse_unknown_preset
from surgery.compiler.schedules import NEVER, GhostPlan, LRSchedule, Schedule, scaled_milestones
from surgery.compiler.timeline import GhostTimeline
from surgery.compiler.verify import VerifyReport
from surgery.compiler.verify import verify as verify_against
from surgery.errors import ToSTError
from surgery.init.lrsi import LRsIResult, lrsi
from surgery.train.config import RunConfig
from surgery.train.losses import SmoothedCrossEntropy


@dataclass(frozen=True)
class Removal:
    """What ``tost.step()`` returns at the removal step. A wrapper made outside ``tost.ddp()`` (DDP,
    torch.compile) still holds the ghost parameters then: rebuild it."""

    step: int  # steps run before the ghosts left
    parameters: int  # ghost parameters that left the model and the optimizer
    rewrapped: bool  # the DDP wrapper ``tost.ddp()`` made was rebuilt: use ``tost.net`` from now on

    def __str__(self) -> str:
        wrapper = "; the DDP wrapper was rebuilt: call tost.net from now on" if self.rewrapped else ""
        return f"ghosts removed after step {self.step}: {self.parameters} ghost parameters left the model and the optimizer{wrapper}"


class ToST:
    """A compiled (ghosted, masked) model on a training timeline of ``total_steps`` steps.

    ``recipe``: a preset name (``surgery.compiler.presets``: ``tost``, ``tost-official``, ...), whose passes,
    ghost schedules, removal, LRsI settings and label smoothing this object follows, or passes
    (a ``Recipe``, a mapping, a recipe file), which bring ToST's schedules and no LRsI or smoothing.
    ``remove_at_step`` (the ghosts leave before that 0-based step runs, i.e. after that many
    steps) or ``remove_at_epoch`` with ``steps_per_epoch``; neither: the preset's rule (``tost``:
    right before the first LR decay of the default step schedule, 50% of the run, on an epoch
    boundary when ``steps_per_epoch`` is given; ``tost-official``: never). ``alpha``, ``beta``,
    ``per`` and ``removal`` are ``GhostPlan``'s (a number, a ``{kind, start, end}`` mapping or a
    ``Schedule``); unset, the preset's. ``submodule`` is ``surgery.compile``'s.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        recipe: Recipe | Mapping[str, Any] | str | os.PathLike = "tost",
        *,
        total_steps: int,
        masks: Mapping[str, torch.Tensor] | None = None,
        remove_at_step: int | None = None,
        remove_at_epoch: int | None = None,
        steps_per_epoch: int | None = None,
        submodule: str | list[str] | None = None,
        alpha: Any = None,
        beta: Any = None,
        per: str = "step",
        removal: str = "gradual",
    ):
        self.settings = preset_settings(recipe)
        plan = ghost_plan(self.settings.ghosts.alpha if alpha is None else alpha,
                          self.settings.ghosts.beta if beta is None else beta, per, removal)
        if per == "epoch" and steps_per_epoch is None:
            raise ToSTError("per='epoch' steps alpha and beta once an epoch: give steps_per_epoch=len(loader).")
        self.total_steps = checked_count("total_steps", total_steps)
        self.steps_per_epoch = 1 if steps_per_epoch is None else checked_count("steps_per_epoch", steps_per_epoch)
        self.original, self.example_inputs = model, example_inputs
        recipe = Recipe.coerce(self.settings.recipe if isinstance(recipe, str) and is_preset(recipe) else recipe)
        if masks is not None:
            recipe = recipe.replace(masks=masks)
        self.model = compile(model, example_inputs, recipe, submodule=submodule)
        keeps = self.settings.ghosts.remove_at == NEVER and remove_at_step is None and remove_at_epoch is None
        removal_at = None if keeps else removal_step(self.total_steps, remove_at_step, remove_at_epoch, steps_per_epoch)
        self.timeline = GhostTimeline(self.model, plan, removal_at, self.steps_per_epoch)
        self.steps = 0
        self.removed_at: int | None = None
        self.report: VerifyReport | None = None
        self.finished = False
        self._ddp: dict[str, Any] | None = None
        self.net: nn.Module = self.model  # what the loop calls: ``model``, or its DDP wrapper from ``ddp()``
        self.timeline.apply(0)

    @property
    def removal_step(self) -> int | None:
        """The step before which the ghosts leave; None: they stay to the end (``tost-official``)."""
        return self.timeline.removal_step

    @property
    def architecture(self) -> str:
        """``the original``, or how many ghost modules the model keeps for good."""
        kept = len(ghosts(self.model)) if self.removal_step is None else 0
        return f"kept {kept} ghost modules: not the original" if kept else "the original"

    @property
    def criterion(self) -> nn.Module:
        """Cross-entropy with the preset's label smoothing (``tost``: 0.1 spread as a / K; ``tost-official``:
        a / (K - 1) on the wrong classes; passes alone: none)."""
        smoothing = self.settings.label_smoothing
        return SmoothedCrossEntropy(smoothing.start, smoothing.spread)

    def lrsi(self, loader: Iterable[Any], *, lr: float, iterations: int | None = None, loss_fn: Any = None,
             **options: Any) -> LRsIResult:
        """LRsI (GradInit) on ``tost.model`` with the preset's settings, on ``loader``'s ``(inputs, targets)``
        batches; call it before the first step. ``lr``: your optimizer's learning rate (the simulated step's
        length). ``iterations``: the preset's (``tost-official``: 180), else one pass over ``loader``.
        ``loss_fn`` (default cross-entropy) and ``options`` (``scale_lr``, ``grad_norm_bound``, ``normalize``,
        ``min_scale``, ``half_batches``) override the preset's: see ``surgery.init.lrsi.lrsi``."""
        if self.steps:
            raise ToSTError(f"tost.lrsi() after {self.steps} steps: LRsI rescales the initialization, so call it "
                            "before the first optimizer step.")
        self._check_running("lrsi")
        settings = self.settings.lrsi
        chosen = {"scale_lr": settings.scale_lr, "grad_norm_bound": settings.grad_norm_bound,
                  "normalize": settings.normalize, "min_scale": settings.min_scale,
                  "half_batches": settings.half_batches, **options}
        iterations = settings.iterations if iterations is None else iterations
        return lrsi(self.model, loader, eta=lr, iterations=iterations, loss_fn=loss_fn or F.cross_entropy, **chosen)

    def strength(self) -> dict[str, float | None]:
        """alpha and beta now (``None``: no ghost of that kind, or the ghosts left)."""
        return self.timeline.strength(self.steps)

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Put the ghost parameters in their own param group (so they can leave at removal); refuses an
        optimizer that does not train ``tost.model``. Attach before making an LR scheduler."""
        self._check_running("attach")
        self.timeline.attach(optimizer)
        return optimizer

    def reschedule(self, *, remove_at_step: int | None = None, remove_at_epoch: int | None = None,
                   steps_per_epoch: int | None = None) -> int:
        """Move the removal before the first step (when it is known only once the LR scheduler exists,
        as in Lightning); returns the removal step."""
        if self.steps:
            raise ToSTError(f"reschedule() after {self.steps} steps would change alpha and beta mid-run; "
                            "call it before the first tost.step().")
        self.timeline.removal_step = removal_step(self.total_steps, remove_at_step, remove_at_epoch, steps_per_epoch)
        self.timeline.apply(0)
        return self.removal_step

    def step(self) -> Removal | None:
        """After each optimizer step: set alpha and beta for the next step, or, when the removal step has
        come, strip the ghosts in place and drop their param group and state; returns that ``Removal``."""
        self._check_running("step")
        if self.steps >= self.total_steps:
            raise ToSTError(f"tost.step() called a {self.steps + 1}th time, past total_steps={self.total_steps}; "
                            "give total_steps=len(loader) * epochs (the optimizer steps of the whole run).")
        self.steps += 1
        if not self.timeline.due(self.steps):
            self.timeline.apply(self.steps)
            return None
        return self._remove()

    def _remove(self) -> Removal:
        parameters = self.timeline.remove()
        self.removed_at = self.steps
        if self._ddp is not None:
            self.ddp(**self._ddp)
        return Removal(self.steps, parameters, rewrapped=self._ddp is not None)

    def ddp(self, **ddp_kwargs: Any) -> nn.Module:
        """``tost.model`` in DistributedDataParallel (``tost.net``), rebuilt when the ghosts leave."""
        from torch.nn.parallel import DistributedDataParallel

        self._ddp = dict(ddp_kwargs)
        self.net = DistributedDataParallel(self.model, **self._ddp)
        return self.net

    def finish(self, *, verify: bool = True) -> nn.Module:
        """De-ghost (if the ghosts are still in), bake the masks and, unless ``verify=False``, verify against
        the original model on the example inputs (``self.report``); returns the clean model, which
        ``tost.model`` is now too."""
        self._check_running("finish")
        self.finished = True
        if self.timeline.ghosted and self.removal_step is None:  # kept for good: the trained architecture
            bake_masks(self.model)
            return self.model
        if self.timeline.ghosted:
            self._remove()
        clean = self.model = deghost(self.model, inplace=True)
        if verify:
            self.report = verify_against(self.original, clean, self.example_inputs)
        return clean

    def state_dict(self) -> dict[str, Any]:
        """The step and the removal, for your checkpoint next to the model's and the optimizer's."""
        return {"steps": self.steps, "removed_at": self.removed_at, "total_steps": self.total_steps,
                "removal_step": self.removal_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a checkpointed loop. Load this first: when the checkpoint was taken after the removal it
        de-ghosts now, so the model's and the optimizer's state_dicts fit (``attach`` the optimizer before)."""
        self._check_running("load_state_dict")
        saved = (state["total_steps"], state["removal_step"])
        if saved != (self.total_steps, self.removal_step):
            raise ToSTError(f"the checkpoint's ToST ran total_steps={saved[0]} with removal at step {saved[1]}; this one "
                            f"has {self.total_steps} and {self.removal_step}: rebuild it with the checkpoint's values.")
        if state["removed_at"] is None and not self.timeline.ghosted:
            raise ToSTError("the checkpoint still has its ghosts but this ToST removed them; load it into a fresh ToST.")
        self.steps = int(state["steps"])
        if state["removed_at"] is not None and self.timeline.ghosted:
            self._remove()
        self.removed_at = state["removed_at"]
        self.timeline.apply(self.steps)

    def _check_running(self, call: str) -> None:
        if self.finished:
            raise ToSTError(f"tost.{call}() after tost.finish(): the model is de-ghosted and its masks are baked; "
                            "build a new surgery.ToST to train again.")


def preset_settings(recipe: Any) -> Any:
    """The run config a recipe value implies (``surgery.compiler.presets`` through ``RunConfig``, the one place presets
    become fields): its passes, ghost schedules, LRsI and label smoothing."""
    refuse_unknown_preset(recipe)
    return RunConfig.from_dict({"recipe": recipe if is_preset(recipe) else {}})


def ghost_plan(alpha: Any, beta: Any, per: str, removal: str) -> GhostPlan:
    """The ghosts' schedules; unset ones are GhostPlan's (ToST's) defaults."""
    defaults = GhostPlan()
    return GhostPlan(Schedule.parse(alpha, name="alpha", default=defaults.alpha),
                     Schedule.parse(beta, name="beta", default=defaults.beta), per, removal=removal)


def removal_step(total_steps: int, at_step: int | None, at_epoch: int | None, steps_per_epoch: int | None) -> int:
    """The step before which the ghosts leave, checked to fall inside the run."""
    if at_step is not None and at_epoch is not None:
        raise ToSTError(f"give remove_at_step ({at_step}) or remove_at_epoch ({at_epoch}), not both.")
    if at_epoch is not None and steps_per_epoch is None:
        raise ToSTError(f"remove_at_epoch={at_epoch} needs steps_per_epoch=len(loader) to find its step.")
    per_epoch = steps_per_epoch or 1
    if at_step is None and at_epoch is None:  # the trainer's default: the first decay of the default LR schedule
        epochs = total_steps // per_epoch
        at_epoch = LRSchedule("step", tuple(scaled_milestones(epochs))).first_decay(epochs)
    step = at_step if at_step is not None else at_epoch * per_epoch
    if not 1 <= step <= total_steps:
        given = f"remove_at_step={at_step}" if at_step is not None else f"remove_at_epoch={at_epoch} (step {step})"
        raise ToSTError(f"{given} is outside the run of total_steps={total_steps}: the ghosts would leave "
                        f"{'before the first step' if step < 1 else 'after the run ends'}. Pick a step in 1..{total_steps}.")
    return step


def checked_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ToSTError(f"{name}={value!r} must be a whole number >= 1, e.g. len(loader) * epochs.")
    return value
