"""`surgery prune`: one mask file for a model, from any method in the registry.

One-shot methods (random, magnitude / OMP, SNIP, GraSP, SynFlow) score the model (or
its parts) once through ``surgery.pruning.oneshot``, as a run's mask stage does, on
batches of the dataset when they need data. Methods that train (IMP, learned masks,
GMP, RigL, ASNI, OptG) run as a plain training run (``surgery.train``, no ghosts, no
export) in a run directory, and the mask they end with is the file.
Either way the file carries its metadata: method, target and achieved sparsity, budget,
model, seed, software version (and, for ASNI, the centroids).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from surgery.compiler.masks import (
    MaskMetadata,
    dense_in,
    dense_weights,
    load_masks,
    overall_sparsity,
    prunable_weights,
    save_masks,
)
from surgery.errors import ConfigError
from surgery.pruning import Method, method
from surgery.pruning.budget import achieved_sparsity
from surgery.pruning.oneshot import oneshot_masks
from surgery.train import pipeline
from surgery.train.config import RunConfig
from surgery.train.data import make_loader
from surgery.train.distributed import Distributed
from surgery.train.masking import mask_budget, plan_masks, save_start_weights, training_batches
from surgery.train.record import COMPLETED, MASK_ROUNDS, RunRecord
from surgery.train.run_files import RunFiles
from surgery.zoo.models import build_model, default_input_size, input_channels, load_weights
from surgery.zoo.tasks import Size, example_inputs, input_size, train_inputs


@dataclass
class PruneResult:
    masks: dict[str, torch.Tensor]
    metadata: dict[str, str]
    path: Path
    run_dir: Path | None = None  # where a training method's run went
    order: list[str] | None = None  # the model's prunable weights in module order (None: the file's order)


def prune(config: RunConfig, out: Path, *, with_data: bool, parts: Sequence[str] | None = None,
          size: Size | None = None, allow_untrained: bool = False, console: Console | None = None) -> PruneResult:
    """``surgery prune``: the mask file ``out`` of ``config.mask``'s method for ``config.model``.

    ``with_data``: whether ``config.data`` was given (a method that trains or scores on data needs it);
    ``parts``: the submodules a one-shot method scores (None: the whole model); ``size``: the input size
    of data-free SynFlow; ``allow_untrained``: let a method that scores trained weights score the init.
    """
    found = method(config.mask.method)
    if found.training:
        if not with_data:
            raise ConfigError(f"mask method '{found.name}' trains the model: give --data DATASET (e.g. --data digits).")
        return prune_by_training(config, out, console)
    return _prune_model_oneshot(config, found, out, with_data=with_data, parts=parts, size=size,
                                allow_untrained=allow_untrained)


def _prune_model_oneshot(config: RunConfig, found: Method, out: Path, *, with_data: bool,
                         parts: Sequence[str] | None, size: Size | None, allow_untrained: bool) -> PruneResult:
    """Build the config's model (seeded) and score it once (on ``mask.batches`` batches of its data when the
    method needs data)."""
    m, seed = config.mask, config.train.seed
    _check_oneshot(config, found, with_data=with_data, parts=parts, allow_untrained=allow_untrained)
    batches, num_classes = None, config.model.num_classes
    if with_data:
        dataset = pipeline.load_data(config, hold_out=False)
        num_classes, size = num_classes or dataset.num_classes, size or (dataset.image_size,)
        if found.data:
            loader = make_loader(dataset, "train", config.data.batch_size, train=True, seed=seed, workers=0)
            batches = training_batches(loader, m.batches)
    torch.manual_seed(seed)
    spec, size = config.model.spec, input_size(config.model.spec, size)
    model = build_model(spec, num_classes, input_size=size)
    if config.model.weights:
        load_weights(model, config.model.weights)
    inputs = example_inputs(spec, size or (default_input_size(model, spec),), batch=1, channels=input_channels(model))
    return prune_oneshot(model, m.method, m.sparsity, out, spec=spec, batches=batches, inputs=train_inputs(model, inputs),
                         parts=parts, seed=seed, options=m.options, **mask_budget(m))


def _check_oneshot(config: RunConfig, found: Method, *, with_data: bool, parts: Sequence[str] | None,
                   allow_untrained: bool) -> None:
    """Refuse what a one-shot method cannot score: a part without a classification loss, data it lacks,
    an initialization it would take for trained weights."""
    name = found.name
    if found.data and parts:
        raise ConfigError(f"mask method '{name}' scores weights by a classification loss on labelled images, "
                          f"which {', '.join(parts)} of {config.model.spec} does not compute: use random, magnitude "
                          "or synflow (data-free) to prune a model compiled in parts.")
    if found.data and not with_data:
        raise ConfigError(f"mask method '{name}' scores weights with gradients on real data: give --data DATASET "
                          "(e.g. --data cifar10-jpeg:PATH or --data digits).")
    if found.trained and not config.model.weights and not allow_untrained:
        raise ConfigError(f"mask method '{name}' scores trained weights, but no --weights were given: it would "
                          "score the random initialization. Give --weights FILE (the trained model's state_dict), or "
                          "--allow-untrained if a mask of the initialization is what you mean.")


def prune_oneshot(model: nn.Module, name: str, sparsity: float, out: Path, *, spec: str, batches=None,
                  inputs: tuple | None = None, parts: Sequence[str] | None = None, seed: int = 0,
                  options: dict[str, Any] | None = None, **budget: Any) -> PruneResult:
    """Score ``model`` with a one-shot method (``surgery.pruning.oneshot``) and write the mask file ``out``.

    ``parts``: score only those submodules, each to ``sparsity`` on its own, the part ``surgery.compile(...,
    submodule=...)`` ghosts; the file lists every weight outside them as dense. ``inputs``: what a training
    forward of ``model`` takes (the shape SynFlow's made-up input and the path check use).
    """
    masks = oneshot_masks(model, name, sparsity, batches=batches, inputs=inputs, parts=parts, seed=seed,
                          options=options, **budget)
    found = method(name)
    meta = MaskMetadata(method=name, target_sparsity=sparsity, model=spec, seed=seed,
                        scope=budget.get("scope") or found.scope,
                        distribution=budget.get("distribution") or found.distribution,
                        dense=dense_weights(model, masks))
    path = save_masks(masks, out, meta)
    return PruneResult(masks, load_masks(path)[1], path, order=list(prunable_weights(model)))


def prune_by_training(config: RunConfig, out: Path, console: Console | None = None) -> PruneResult:
    """A training method's mask: a ``before`` method's rounds (IMP, learned), or a whole ``during``
    run (GMP, RigL, ASNI, OptG) through ``surgery.train.run``; the mask is copied to ``out``."""
    found = method(config.mask.method)
    if found.stage == "before":
        return _rounds_only(config, out, console)
    result = pipeline.run(config, console=console)
    trained = RunFiles(result.run_dir).masks
    out.parent.mkdir(parents=True, exist_ok=True)
    if trained.resolve() != out.resolve():
        shutil.copyfile(trained, out)
    masks, metadata = load_masks(out)
    return PruneResult(masks, metadata, out, result.run_dir)


def _rounds_only(config: RunConfig, out: Path, console: Console | None = None) -> PruneResult:
    """Run the method's own training rounds and keep their mask (no retraining of it); the run
    directory's result.json records how it ended, the sparsity each round reached and the timings."""
    console = console or Console(stderr=True)
    dist = Distributed.from_env(config.train.device)
    files = RunFiles(config.run_dir)
    record = RunRecord(config, files, kind=MASK_ROUNDS, enabled=dist.is_main)
    try:
        _, original, train_loader, eval_loaders = pipeline.set_up(config, record, dist)
        model = pipeline.initialized(config, original)
        record.stage = "training"
        plan = plan_masks(config, model, train_loader=train_loader, eval_loaders=eval_loaders, dist=dist,
                          console=console)
    except BaseException as error:
        if files.root.exists():
            record.end(error)
        raise
    m = config.mask
    path = save_masks(plan.masks, out, MaskMetadata(
        method=m.method, target_sparsity=m.sparsity, model=config.model.spec, seed=config.train.seed,
        scope=m.scope or method(m.method).scope, options=m.options, dense=dense_weights(model, plan.masks)))
    if plan.weights is not None and dist.is_main:  # IMP's rewind point / learned masks' folded weights
        save_start_weights(config.run_dir, plan.weights)
    record.update(rounds=plan.rounds, sparsity=overall_sparsity(plan.masks), mask_file=str(path))
    record.write(COMPLETED)
    dist.close()
    return PruneResult(plan.masks, load_masks(path)[1], path, config.run_dir, order=list(prunable_weights(model)))


def layer_rows(result: PruneResult) -> list[tuple[str, str, int, int, float]]:
    """(layer, shape, kept, total, sparsity) per prunable weight, those the file leaves dense at 0%,
    in module order where it is known."""
    sparsity = achieved_sparsity(result.masks)
    rows = {name: (name, _shape(m.shape), int(m.count_nonzero()), m.numel(), sparsity[name])
            for name, m in result.masks.items()}
    for name, shape in dense_in(result.metadata, result.path).items():
        total = math.prod(shape)
        rows[name] = (name, _shape(shape), total, total, 0.0)
    order = [n for n in result.order or () if n in rows]
    return [rows[n] for n in order] + [row for n, row in rows.items() if n not in order]


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def metadata_summary(metadata: dict[str, str]) -> str:
    """One line of what a mask file records, read through its typed record."""
    record = MaskMetadata.read(metadata)
    shown = ("method", "target_sparsity", "sparsity", "scope", "distribution", "model", "seed", "version")
    return ", ".join(f"{name} {_plain(value)}" for name in shown if (value := getattr(record, name)) is not None)


def _plain(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
