"""The mask stage of a run: where ``config.mask`` becomes masks, hooks and starting weights.

- a mask file: its masks (checked against the model, every difference listed);
- a ``oneshot`` method (random, magnitude, SNIP, GraSP, SynFlow): ``oneshot_masks`` of the
  model, on ``mask.batches`` training batches when it needs data;
- a ``during`` method (GMP, RigL, ASNI, OptG): the run starts dense (RigL: random at
  the target, ERK) and the method's training hook rewrites the masks while it trains;
- a ``before`` method (IMP, learned masks): its own training rounds run first, each in
  ``RUN/rounds/<tag>/`` (plain training: masks only, no ghosts, no LRsI, no label
  smoothing; ``mask.epochs`` epochs each), every round's mask goes to
  ``RUN/rounds/<tag>-mask.safetensors`` and a line of ``RUN/rounds.csv``; the main run
  then trains the final mask from the weights the method hands over, which are kept as
  ``RUN/start-weights.safetensors`` (IMP's rewind point, the learned mask's folded weights).

Every mask that comes out of here is checked (``surgery.pruning.collapse.check_masks``): a
layer left without weights, or a mask that cuts every path from input to output, stops the
run unless ``mask.allow_empty_layers``; a ``during`` method's final mask is checked when
training ends (``EmptyLayerCheck``, the last hook).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from surgery.compiler.driver import compile
from surgery.hooks import TrainingHook
from surgery.compiler.masks import MaskMetadata, dense_weights, load_masks, overall_sparsity, save_masks
from surgery.pruning import Budget, method, prunable_for
from surgery.pruning.budget import weights_of
from surgery.pruning.collapse import EmptyLayerCheck, check_masks, path_input
from surgery.pruning.oneshot import oneshot_masks
from surgery.compiler.recipe import Recipe
from surgery.train.config import MaskConfig, RunConfig
from surgery.train.distributed import Distributed
from surgery.train.run_files import RunFiles
from surgery.train.settings import TrainerSettings
from surgery.train.trainer import Trainer

DENSE = "dense"


@dataclass
class MaskPlan:
    masks: dict[str, torch.Tensor] | None  # what the model is compiled with (None: dense, no masks)
    hooks: list[TrainingHook] = field(default_factory=list)
    weights: dict[str, torch.Tensor] | None = None  # a state_dict to start the main run from
    metadata: dict[str, Any] = field(default_factory=dict)  # what a mask file carried besides masks
    rounds: list[dict[str, Any]] = field(default_factory=list)  # a `before` method's rounds: sparsity, accuracy


def plan_masks(config: RunConfig, model: nn.Module, *, train_loader: Any, eval_loaders: dict[str, Any],
               dist: Distributed, console: Console, resume: bool | str | Path = False) -> MaskPlan:
    m = config.mask
    if m.file:
        masks, metadata = load_masks(m.file, model=model, partial=m.partial, spec=config.model.spec, kinds=m.prunable)
        given_masks(config, model, masks, train_loader, what=f"mask file '{m.file}'")
        return MaskPlan(masks, metadata=metadata)
    if m.method == DENSE or m.sparsity == 0:
        return MaskPlan(None)
    found = method(m.method)
    names = list(prunable_for(model, m.prunable, dense_first=m.dense_first, dense_last=m.dense_last, exclude=m.exclude))
    budget = Budget(m.sparsity, m.scope or found.scope, m.distribution or found.distribution)
    options = dict(m.options)
    batches = training_batches(train_loader, m.batches) if found.data else None
    example = (batches or training_batches(train_loader, 1))[0][0][:1]  # the real input's shape, for the checks
    if found.stage == "oneshot":  # SynFlow's made-up input takes the data's shape, not its CIFAR-sized default
        return MaskPlan(oneshot_masks(model, m.method, m.sparsity, batches=batches, inputs=(example,),
                                      seed=config.train.seed, options=options, **mask_budget(m)))
    check = {"what": f"mask method '{m.method}' at sparsity {m.sparsity:g}", "allow": m.allow_empty_layers,
             "cause": found.collapse_cause(m.sparsity, budget.scope), "can_allow": found.can_empty_layers(budget.scope),
             "example": path_input(model, example)}
    if found.stage == "during":
        hooks = [found.find(model, names, budget, **options), EmptyLayerCheck(model, names, **check)]
        return MaskPlan(starting_masks(m.method, model, names, budget, config.train.seed), hooks=hooks)
    runner = RoundRunner(config, train_loader, eval_loaders, dist, console, resume)
    result = found.find(model, names, budget, train=runner, seed=config.train.seed, **options)
    if dist.is_main:
        write_rounds(config, result.rounds, model)
    check_masks(model, result.masks, **check)
    rounds = [{key: value for key, value in row.items() if key != "mask"} for row in result.rounds]
    return MaskPlan(result.masks, weights=result.weights, rounds=rounds)


def mask_budget(m: MaskConfig) -> dict[str, Any]:
    """The keywords of ``oneshot_masks`` / ``find_masks`` that say which weights a mask covers and how the
    sparsity spreads over them."""
    return {"scope": m.scope, "distribution": m.distribution, "prunable": m.prunable, "dense_first": m.dense_first,
            "dense_last": m.dense_last, "exclude": m.exclude, "allow_empty_layers": m.allow_empty_layers}


def given_masks(config: RunConfig, model: nn.Module, masks: dict[str, torch.Tensor], train_loader: Any, *,
                what: str = "the masks given to surgery.train.run") -> MaskPlan:
    """Masks made elsewhere (a file, Python), checked like a finder's: no empty layer, no cut path, unless
    ``mask.allow_empty_layers``."""
    check_masks(model, masks, what=what, cause="they were made that way", allow=config.mask.allow_empty_layers,
                can_allow=True, example=path_input(model, training_batches(train_loader, 1)[0][0]))
    return MaskPlan(masks)


def training_batches(train_loader: Any, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` batches of epoch 0: what data-dependent finders score on."""
    train_loader.set_epoch(0)
    return [batch for _, batch in zip(range(count), train_loader.batches(0))]


def starting_masks(name: str, model: nn.Module, names: list[str], budget: Budget, seed: int) -> dict[str, torch.Tensor]:
    """Where a ``during`` method starts: RigL from a random mask at the target, the others dense."""
    if name == "rigl":
        return method("random").find(model, names, budget, seed=seed)
    return {n: torch.ones(w.shape, dtype=torch.bool) for n, w in weights_of(model, names).items()}


class RoundRunner:
    """``train(model, masks, tag=, hooks=)``: one plain training round of a ``before`` method."""

    def __init__(self, config: RunConfig, train_loader: Any, eval_loaders: dict[str, Any], dist: Distributed,
                 console: Console, resume: bool | str | Path):
        self.config = round_config(config)
        self.train_loader, self.eval_loaders = train_loader, eval_loaders
        self.dist, self.console, self.resume = dist, console, bool(resume)
        self.example = next(iter(train_loader.batches(0)))[0][:2].cpu().float()

    def __call__(self, model: nn.Module, masks: dict[str, torch.Tensor] | None, *, tag: str,
                 hooks: list[TrainingHook] = ()) -> Any:
        compiled = compile(model, self.example, Recipe.from_dict({}).replace(masks=masks or None))
        self.dist.broadcast_masks(compiled)
        run_dir = RunFiles(self.config.run_dir).rounds / tag
        if self.dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.console.print(f"{tag}: training {self.config.train.epochs} epochs"
                               + (f" at sparsity {overall_sparsity(masks):.1%}" if masks else " dense"))
        trainer = Trainer(compiled, TrainerSettings.from_config(self.config), self.train_loader, self.eval_loaders,
                          dist=self.dist, run_dir=run_dir, console=self.console, hooks=list(hooks))
        resume = self.resume and trainer.store.latest() is not None
        return trainer.fit(resume=resume)


def round_config(config: RunConfig) -> RunConfig:
    """Plain training for finder rounds: masks only, no ghosts, LRsI, smoothing or distillation;
    ``mask.epochs`` epochs with the LR milestones scaled to them."""
    data = config.to_dict()
    epochs = config.mask.epochs or config.train.epochs
    scale = epochs / config.train.epochs
    data["recipe"] = {}
    data["lrsi"] = {**data["lrsi"], "enabled": False}
    data["label_smoothing"] = {"kind": "constant", "start": 0.0}
    data["distill"] = {**data["distill"], "teacher": None}
    data["train"] = {**data["train"], "epochs": epochs}
    if config.lr_schedule.milestones is not None:  # None already follows the epochs
        data["lr_schedule"] = {**data["lr_schedule"], "milestones": sorted(
            {m2 for m in config.lr_schedule.milestones if 0 < (m2 := round(m * scale)) < epochs})}
    return RunConfig.from_dict(data)


def write_rounds(config: RunConfig, rounds: list[dict[str, Any]], model: nn.Module) -> None:
    """One line per round in RUN/rounds.csv and each round's mask as RUN/rounds/<tag>-mask.safetensors."""
    if not rounds:
        return
    files = RunFiles(config.run_dir)
    folder = files.rounds
    folder.mkdir(parents=True, exist_ok=True)
    with files.rounds_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["round", "trained_sparsity", "accuracy", "sparsity", "mask"])
        for row in rounds:
            path = ""
            if row.get("mask"):
                path = folder / f"{config.mask.method}-round{row['round']}-mask.safetensors"
                save_masks(row["mask"], path, MaskMetadata(
                    method=config.mask.method, round=row["round"], model=config.model.spec, seed=config.train.seed,
                    target_sparsity=row["sparsity"], dense=dense_weights(model, row["mask"])))
            accuracy = row.get("accuracy")
            writer.writerow([row["round"], f"{row['trained_sparsity']:.6f}", "" if accuracy is None else f"{accuracy:.6f}",
                             f"{row['sparsity']:.6f}", str(path)])


def save_start_weights(run_dir: Path, weights: dict[str, torch.Tensor]) -> Path:
    """Keep the weights a ``before`` method handed over: a later run rewinds to them with init.rewind."""
    from safetensors.torch import save_file

    path = RunFiles(run_dir).start_weights
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(path))
    return path
