"""`surgery prune`: one mask file for a model, from any method in the registry.

One-shot methods (random, magnitude / OMP, SNIP, GraSP, SynFlow) score the model
directly, on batches of the dataset when they need data. Methods that train (IMP,
learned masks, GMP, RigL, ASNI, OptG) run as a plain training run (``surgery.train``,
no ghosts, no export) in a run directory, and the mask they end with is the file.
Either way the file carries its metadata: method, target and achieved sparsity, budget,
model, seed, software version (and, for ASNI, the centroids).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
from surgery.pruning import find_masks, method
from surgery.pruning.budget import achieved_sparsity


@dataclass
class PruneResult:
    masks: dict[str, torch.Tensor]
    metadata: dict[str, str]
    path: Path
    run_dir: Path | None = None  # where a training method's run went
    order: list[str] | None = None  # the model's prunable weights in module order (None: the file's order)


def prune_oneshot(model: nn.Module, name: str, sparsity: float, out: Path, *, spec: str, batches=None, seed: int = 0,
                  parts: dict[str, dict[str, Any]] | None = None, **budget_and_options: Any) -> PruneResult:
    """Score ``model`` with a one-shot method and write the mask file ``out``.

    ``parts``: ``{submodule path: method options}`` scores only those submodules, each to ``sparsity``
    on its own, the part ``surgery.compile(..., submodule=...)`` ghosts ('' is the whole model); the
    masks keep the whole model's parameter names and the file lists every weight outside as dense.
    """
    masks: dict[str, torch.Tensor] = {}
    for path, options in (parts or {"": {}}).items():
        part = model.get_submodule(path)
        found_masks = find_masks(part, name, sparsity, batches=batches, seed=seed, **budget_and_options, **options)
        masks.update({f"{path}.{k}" if path else k: mask for k, mask in found_masks.items()})
    found = method(name)
    meta = MaskMetadata(method=name, target_sparsity=sparsity, model=spec, seed=seed,
                        scope=budget_and_options.get("scope") or found.scope,
                        distribution=budget_and_options.get("distribution") or found.distribution,
                        dense=dense_weights(model, masks))
    path = save_masks(masks, out, meta)
    return PruneResult(masks, load_masks(path)[1], path, order=list(prunable_weights(model)))


def prune_by_training(config, out: Path, console=None) -> PruneResult:
    """A training method's mask: a ``before`` method's rounds (IMP, learned), or a whole ``during``
    run (GMP, RigL, ASNI, OptG) through ``surgery.train.run``; the mask is copied to ``out``."""
    found = method(config.mask.method)
    if found.stage == "before":
        return _rounds_only(config, out, console)
    from surgery.train import run
    from surgery.train.run_files import RunFiles

    result = run(config, console=console)
    trained = RunFiles(result.run_dir).masks
    out.parent.mkdir(parents=True, exist_ok=True)
    if trained.resolve() != out.resolve():
        shutil.copyfile(trained, out)
    masks, metadata = load_masks(out)
    return PruneResult(masks, metadata, out, result.run_dir)


def _rounds_only(config, out: Path, console=None) -> PruneResult:
    """Run the method's own training rounds and keep their mask (no retraining of it); the run
    directory's result.json records how it ended, the sparsity each round reached and the timings."""
    from rich.console import Console

    from surgery.train import pipeline
    from surgery.train.distributed import Distributed
    from surgery.train.masking import plan_masks, save_start_weights
    from surgery.train.record import COMPLETED, MASK_ROUNDS, RunRecord, model_section
    from surgery.train.run_files import RunFiles

    console = console or Console(stderr=True)
    dist = Distributed.from_env(config.train.device)
    files = RunFiles(config.run_dir)
    record = RunRecord(config, files, kind=MASK_ROUNDS, enabled=dist.is_main)
    try:
        torch.manual_seed(config.train.seed)
        dataset = pipeline.load_data(config)
        model = pipeline.initialized(config, pipeline.build(config, dataset))
        record.update(model=model_section(config.model.spec, model))
        train_loader, eval_loaders = pipeline.loaders(config, dataset, dist)
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
    keys = ("method", "target_sparsity", "sparsity", "scope", "distribution", "model", "seed", "version")
    return ", ".join(f"{k} {_plain(metadata[k])}" for k in keys if k in metadata)


def _plain(value: str) -> str:
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return value
    return f"{decoded:g}" if isinstance(decoded, float) else str(decoded)
