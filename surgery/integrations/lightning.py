"""ToST as a Lightning callback: ``Trainer(callbacks=[ToSTCallback("model", masks=masks)])``.

At ``setup`` it compiles the LightningModule's submodule with ``surgery.ToST`` and puts the ghosted
module in its place, before ``configure_optimizers`` runs (so the optimizer sees the ghost
parameters); at ``on_train_start`` it attaches the optimizer and places the removal before the first
LR-scheduler milestone; after every training batch it steps the schedules (de-ghosting in place at
the removal step); at ``on_fit_end`` it bakes the masks, puts the clean module back, verifies it
against the original and exports ONNX if asked. One process only: de-ghosting changes the
parameters a DDP wrapper registered. A preset that keeps its ghosts (``tost-official``) keeps them
unless ``remove_at`` is an epoch, and the trained architecture is what is put back and exported.

The LightningModule computes its own loss, so the preset's other two tweaks are the callback's
``tost`` to call there: ``callback.tost.criterion`` (the label smoothing) in ``training_step``, and
``callback.tost.lrsi(loader, lr=...)`` (LRsI on the compiled submodule, which must map a batch's
inputs to logits) in the LightningModule's ``on_train_start``, before the first step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from surgery.errors import MissingExtraError, ToSTError, did_you_mean
from surgery.fx.graph import as_tuple
from surgery.apps.tost import Removal, ToST

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_info
except ImportError as error:  # the optional extra
    raise MissingExtraError(
        f"surgery.integrations.lightning needs Lightning ({error}); install it with: pip install \"tost-surgery[lightning]\"."
    ) from error

FIRST_MILESTONE = "first_milestone"
# The first decay of a stepping LR scheduler, in its own steps (its last_epoch count).
SCHEDULER_FIRST_DECAY: dict[type, Callable[[Any], int]] = {
    torch.optim.lr_scheduler.MultiStepLR: lambda s: min(s.milestones),
    torch.optim.lr_scheduler.StepLR: lambda s: s.step_size,
}


class ToSTCallback(pl.Callback):
    """ToST on ``submodule`` (an attribute path of the LightningModule; ``None``: its only child module).

    ``example_inputs``: inputs of the LightningModule's forward, or a callable from the first training
    batch to them; ``None``: the module's ``example_input_array``. ``remove_at``: ``first_milestone``
    (the first MultiStepLR / StepLR decay; the default rule, 50% of the run, without one) or an epoch.
    ``export``: an ONNX path written at the end. ``tost_options`` go to ``surgery.ToST`` (alpha, beta, per,
    removal). After fit: ``.clean`` (the module now in the LightningModule), ``.report``, ``.removal``.
    """

    def __init__(
        self,
        submodule: str | None = None,
        recipe: Any = "tost",
        masks: Mapping[str, torch.Tensor] | None = None,
        example_inputs: Any = None,
        remove_at: str | int = FIRST_MILESTONE,
        verify: bool = True,
        export: str | os.PathLike | None = None,
        **tost_options: Any,
    ):
        if remove_at != FIRST_MILESTONE and (isinstance(remove_at, bool) or not isinstance(remove_at, int)):
            raise ToSTError(f"ToSTCallback remove_at={remove_at!r}: give '{FIRST_MILESTONE}' or an epoch number.")
        self.submodule, self.recipe, self.masks = submodule, recipe, masks
        self.example_inputs, self.remove_at, self.verify, self.export = example_inputs, remove_at, verify, export
        self.tost_options = tost_options
        self.tost: ToST | None = None
        self.path: str | None = None
        self.removal: Removal | None = None
        self.clean: nn.Module | None = None

    @property
    def report(self):
        return self.tost.report if self.tost else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.tost is not None:
            return
        if trainer.world_size > 1:
            raise ToSTError("ToSTCallback runs in one process: de-ghosting mid-run changes the parameters DDP "
                            "registered. Train with devices=1, or use surgery.ToST in your own loop (tost.ddp()).")
        self.path = self.submodule or only_child(pl_module)
        target = submodule_of(pl_module, self.path)
        steps_per_epoch = run_length(trainer)
        inputs = inputs_of(pl_module, target, self.path, self._module_inputs(trainer, pl_module))
        epoch = None if self.remove_at == FIRST_MILESTONE else self.remove_at
        self.tost = ToST(target, inputs, self.recipe, masks=self.masks, total_steps=steps_per_epoch * trainer.max_epochs,
                         steps_per_epoch=steps_per_epoch, remove_at_epoch=epoch, **self.tost_options)
        pl_module.set_submodule(self.path, self.tost.model)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.tost.steps:  # a second fit on the same callback
            return
        params = {id(p) for p in self.tost.model.parameters()}
        holder = next((o for o in trainer.optimizers if any(id(p) in params for g in o.param_groups for p in g["params"])),
                      trainer.optimizers[0] if trainer.optimizers else None)
        if holder is None:
            raise ToSTError("the LightningModule's configure_optimizers returned no optimizer for ToST to attach.")
        self.tost.attach(holder)
        if self.remove_at == FIRST_MILESTONE and self.tost.removal_step is not None:  # None: the preset keeps them
            self.tost.reschedule(remove_at_step=first_milestone_step(trainer, self.tost.steps_per_epoch))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        removal = self.tost.step()
        if removal is not None:
            self.removal = removal
            rank_zero_info(str(removal))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clean = self.tost.finish(verify=self.verify)
        pl_module.set_submodule(self.path, self.clean)
        if self.export is not None:
            from surgery.compiler.export import export_onnx  # onnx loads only when the callback exports

            export_onnx(self.clean, self.tost.example_inputs, self.export, sparse=True,
                        keep_ghosts=self.tost.removal_step is None)

    def _module_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """Inputs of the LightningModule's forward."""
        given = self.example_inputs
        if callable(given):
            return given(next(iter(trainer.train_dataloader)))
        if given is None:
            given = pl_module.example_input_array
        if given is None:
            raise ToSTError("ToSTCallback needs example inputs: set self.example_input_array in the LightningModule, "
                            "or pass example_inputs= (a tensor, a tuple, or a callable from a training batch).")
        return given


def only_child(module: nn.Module) -> str:
    children = [name for name, _ in module.named_children()]
    if len(children) != 1:
        raise ToSTError(f"{type(module).__name__} has {len(children)} child modules {children}; name the one to "
                        "compile: ToSTCallback(submodule='...').")
    return children[0]


def submodule_of(module: nn.Module, path: str) -> nn.Module:
    try:
        return module.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in module.named_modules() if name]
        raise ToSTError(f"{type(module).__name__} has no submodule '{path}'." + did_you_mean(path, names)
                        + " (Modules built in the LightningModule's setup() do not exist yet: build them in __init__.)") from None


def run_length(trainer: pl.Trainer) -> int:
    """Training batches per epoch (loading the train dataloader if Lightning has not yet)."""
    trainer.estimated_stepping_batches  # noqa: B018  sizes the train dataloader: num_training_batches
    batches = trainer.num_training_batches
    if trainer.max_epochs is None or trainer.max_epochs < 1 or batches == float("inf"):
        raise ToSTError("ToSTCallback needs a run of known length: set Trainer(max_epochs=...) and give a train "
                        "dataloader with a length.")
    return int(batches)


@torch.no_grad()
def inputs_of(module: nn.Module, target: nn.Module, path: str, module_inputs: Any) -> tuple:
    """What ``target`` receives when ``module`` runs on ``module_inputs`` (in eval mode)."""
    seen: list[tuple] = []
    handle = target.register_forward_pre_hook(lambda _, args: seen.append(args) if not seen else None)
    was_training = module.training
    try:
        module.eval()
        module(*as_tuple(module_inputs))
    finally:
        handle.remove()
        module.train(was_training)
    if not seen:
        raise ToSTError(f"'{path}' is not called by {type(module).__name__}'s forward on the example inputs; "
                        "name a submodule the forward runs.")
    return seen[0]


def first_milestone_step(trainer: pl.Trainer, steps_per_epoch: int) -> int | None:
    """The training batch before which the first scheduled LR decay happens (``None``: no stepping scheduler)."""
    steps = []
    for config in trainer.lr_scheduler_configs:
        first = SCHEDULER_FIRST_DECAY.get(type(config.scheduler))
        if first is None:
            continue
        per = steps_per_epoch if config.interval == "epoch" else trainer.accumulate_grad_batches
        steps.append(first(config.scheduler) * config.frequency * per)
    return min(steps, default=None)
