"""`surgery run`: model -> mask -> compile -> (LRsI) -> train -> de-ghost -> verify -> ONNX -> report.

One function per stage; ``run(config)`` chains them and returns a ``RunResult``. Every
artefact lands in the run directory (``config.output``): the resolved ``config.yaml``,
``masks.safetensors``, ``metrics.csv`` / ``steps.csv`` / ``tensorboard/``,
``checkpoints/``, ``model.safetensors`` (the clean trained weights, loadable into the
original class), ``verify.txt``, ``model.onnx`` + sidecar, plots and ``summary.md``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import fx, nn

import surgery
from surgery.errors import ConfigError, SurgeryError
from surgery.graph import deepcopy_module
from surgery.ghosts import ghosts
from surgery.manifest import ghost_cost
from surgery.masks import (
    bake_masks,
    dense_weights,
    masked_parameters,
    overall_sparsity,
    prunable_weights,
    save_masks,
)
from surgery.models import build_model, load_weights
from surgery.train.config import RunConfig
from surgery.train.data import ImageDataset, load_dataset, make_loader
from surgery.train.distributed import Distributed
from surgery.train.masking import MaskPlan, plan_masks, save_start_weights
from surgery.train.progress import TaskProgress
from surgery.train.report import write_report
from surgery.train.trainer import Trainer, TrainResult, uses_channels_last


@dataclass
class RunResult:
    run_dir: Path
    model: nn.Module  # the clean trained model (the original class's structure, masks baked in)
    test_accuracy: float | None  # of ``model``: the best-validation epoch's when that was selected, else the last's
    sparsity: float
    history: list[dict[str, Any]]
    verify: Any = None  # surgery.VerifyReport, or None when skipped
    export: Any = None  # surgery.ExportInfo, or None when skipped
    seconds: float = 0.0
    events: list[tuple[int, str]] = field(default_factory=list)  # (step, "ghosts removed" / "LR x0.1")
    test_accuracy_last: float | None = None  # the last epoch's
    best_val: dict[str, Any] | None = None  # {epoch, val_acc, test_acc} of the best-validation epoch
    selected: str = "last"  # whose weights ``model`` holds: "last" or "best_val"
    tweaks: dict[str, Any] = field(default_factory=dict)  # what trained besides the plain network (tweaks_of)
    ghost_parameters: int = 0  # training-only parameters the ghosts added

    @property
    def tweaks_text(self) -> str:
        return describe_tweaks(self.tweaks)

    @property
    def ghost_cost(self) -> str:
        """The ghosts' training-only parameters next to the weights the final mask keeps."""
        weights = sum(w.numel() for w in prunable_weights(self.model).values())
        return ghost_cost(self.ghost_parameters, round((1 - self.sparsity) * weights) or None)


def run(
    config: RunConfig,
    *,
    model: nn.Module | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    resume: bool | str | Path = False,
    console: Console | None = None,
) -> RunResult:
    """Run the whole pipeline; ``model`` / ``masks`` given in Python replace the config's."""
    console = console or Console(stderr=True)
    dist = Distributed.from_env(config.train.device)
    run_dir = config.run_dir
    torch.manual_seed(config.train.seed)
    dataset = load_data(config)
    original = model if model is not None else build(config, dataset)
    example = example_batch(dataset)
    train_loader, eval_loaders = loaders(config, dataset, dist)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    start = initialized(config, original)
    plan = MaskPlan(masks) if masks is not None else plan_masks(
        config, start, train_loader=train_loader, eval_loaders=eval_loaders, dist=dist, console=console, resume=resume)
    if plan.weights is not None:
        start = with_weights(start, plan.weights)
    ghosted = surgery.compile(start, example, config.recipe_object().replace(masks=plan.masks or None))
    manifest = surgery.manifest_of(ghosted)
    dist.broadcast_masks(ghosted)
    if not resume:
        start_from(config, ghosted, plan)
    if dist.is_main:
        write_run_files(config, run_dir, plan.masks)
        if plan.weights is not None:
            save_start_weights(run_dir, plan.weights)

    if config.lrsi.enabled and not resume:
        rescale(config, ghosted, train_loader, dist, console)
    trainer = Trainer(ghosted, config, train_loader, eval_loaders, dist=dist, run_dir=run_dir,
                      teacher=teacher(config, dataset), console=console, hooks=plan.hooks)
    trained = trainer.fit(resume=resume)
    mask_metadata = {k: v for hook in plan.hooks for k, v in hook.mask_metadata().items()}
    result = finish(config, original, trained, example, run_dir, dist, console, mask_metadata,
                    tweaks=tweaks_of(config, manifest), ghost_parameters=manifest.ghost_parameters)
    dist.close()
    return result


# ------------------------------------------------------------------ stages


def load_data(config: RunConfig) -> ImageDataset:
    d = config.data
    return load_dataset(d.dataset, root=d.root, download=d.download, image_size=d.image_size,
                        val_split=d.val_split, seed=config.train.seed)


def build(config: RunConfig, dataset: ImageDataset) -> nn.Module:
    model = build_model(config.model.spec, config.model.num_classes or dataset.num_classes)
    if config.model.weights:
        load_weights(model, config.model.weights)
    return model


def example_batch(dataset: ImageDataset, n: int = 2) -> torch.Tensor:
    return torch.zeros(n, dataset.channels, dataset.image_size, dataset.image_size)


def initialized(config: RunConfig, model: nn.Module) -> nn.Module:
    """The model the run starts from: ``model`` itself, or a ZerO-initialized copy (init.zero)."""
    if not config.init.zero:
        return model
    from surgery.init.zero import zero_init

    start = deepcopy_module(model)
    zero_init(start, zero_residual_branches=config.init.zero_residual, prunable=config.mask.prunable)
    return start


def with_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` holding ``state`` (the weights a ``before`` mask method hands over)."""
    start = deepcopy_module(model)
    start.load_state_dict(state)
    return start


def start_from(config: RunConfig, ghosted: fx.GraphModule, plan: MaskPlan) -> None:
    """Initializers that act on the masked model: rewinding (init.rewind) and ASNI centroids (init.centroids)."""
    if config.init.rewind:
        from surgery.init.rewind import rewind

        rewind(ghosted, config.init.rewind)
    if config.init.centroids:
        from surgery.init.centroid import apply_centroids_from_metadata

        apply_centroids_from_metadata(ghosted, plan.metadata, config.mask.file)


def write_run_files(config: RunConfig, run_dir: Path, masks: dict[str, torch.Tensor] | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    if masks:
        save_masks(masks, run_dir / "masks.safetensors", method=config.mask.method if not config.mask.file else "file",
                   model=config.model.spec, seed=config.train.seed, target_sparsity=config.mask.sparsity)


def loaders(config: RunConfig, dataset: ImageDataset, dist: Distributed):
    d, device = config.data, dist.device
    common = {"device": device, "seed": config.train.seed, "rank": dist.rank, "world_size": dist.world_size,
              "channels_last": uses_channels_last(config.train.channels_last, device),
              "workers": d.workers}
    train = make_loader(dataset, "train", d.batch_size, train=True, augment=d.augment, **common)
    evals = {split: make_loader(dataset, split, d.eval_batch_size or d.batch_size, train=False, **common)
             for split in ("val", "test") if split in dataset.splits}
    return train, evals


def rescale(config: RunConfig, ghosted: fx.GraphModule, train_loader: Any, dist: Distributed, console: Console) -> None:
    """LRsI (GradInit): learn one scale per conv / Linear / norm tensor on fresh training batches, fold it in."""
    from surgery.init.lrsi import lrsi

    ghosted.to(dist.device)
    options = config.lrsi
    with TaskProgress(console, "LRsI", options.iterations, enabled=config.train.progress and dist.is_main) as bar:
        result = lrsi(ghosted, EveryEpoch(train_loader), eta=config.lrsi_eta(),
                      iterations=options.iterations, scale_lr=options.scale_lr, grad_norm_bound=options.grad_norm_bound,
                      normalize=options.normalize, min_scale=options.min_scale,
                      on_iteration=lambda i, objective: bar.advance(i, f"objective {objective:.4g}"))
    if dist.is_main:
        constrained = f" ({result.constrained_iterations} on the gradient-norm bound)" if result.constrained_iterations else ""
        console.print(
            f"LRsI: {len(result.scales)} scales learned in {result.iterations} iterations{constrained}; "
            f"loss after one step {result.loss_before:.4f} -> {result.loss_after:.4f}"
        )


class EveryEpoch:
    """The training loader's batches, epoch after epoch: LRsI reads a fresh batch every iteration."""

    def __init__(self, loader: Any):
        self.loader = loader

    def __iter__(self):
        for epoch in itertools.count():
            self.loader.set_epoch(epoch)
            yield from self.loader.batches(0)


def teacher(config: RunConfig, dataset: ImageDataset) -> nn.Module | None:
    d = config.distill
    if d.teacher is None:
        return None
    if not d.weights:
        raise ConfigError(
            f"distill.teacher '{d.teacher}' has no distill.weights: distilling from an untrained teacher "
            "teaches noise. Train it dense first (surgery train ... --sparsity 0) and give its model.safetensors."
        )
    model = build_model(d.teacher, config.model.num_classes or dataset.num_classes)
    return load_weights(model, d.weights)


def finish(config: RunConfig, original: nn.Module, trained: TrainResult, example: torch.Tensor, run_dir: Path,
           dist: Distributed, console: Console, mask_metadata: dict[str, str] | None = None, *,
           tweaks: dict[str, Any] | None = None, ghost_parameters: int = 0) -> RunResult:
    """Bake masks, verify against the original, save weights, export ONNX, write the report (rank 0)."""
    model = trained.model
    kept_ghosts = bool(ghosts(model))
    final_masks = {k: v.detach().cpu() for k, v in masked_parameters(model).items()}
    if isinstance(model, fx.GraphModule) and not kept_ghosts:
        model = surgery.deghost(model, inplace=True)
    else:
        bake_masks(model)
    model = model.cpu().eval()
    last = next((row["test_acc"] for row in reversed(trained.history) if row.get("test_acc") is not None), None)
    selected_accuracy = trained.best["test_acc"] if trained.selected == "best_val" else last
    result = RunResult(run_dir, model, selected_accuracy, _sparsity(model), trained.history,
                       seconds=trained.seconds, events=trained.events, test_accuracy_last=last, best_val=trained.best,
                       selected=trained.selected, tweaks=dict(tweaks or {}), ghost_parameters=ghost_parameters)
    if not dist.is_main:
        return result
    notes = {}
    if final_masks:
        save_masks(final_masks, run_dir / "masks.safetensors", method=config.mask.method, model=config.model.spec,
                   seed=config.train.seed, target_sparsity=config.mask.sparsity, trained=True,
                   dense=dense_weights(original, final_masks), **(mask_metadata or {}))
    _save_weights(model, run_dir / "model.safetensors")
    if kept_ghosts:
        notes["verification"] = "skipped: ghosts kept to the end (ghosts.remove_at: never), not the original architecture"
    else:
        result.verify, result.export = _verify_and_export(config, original, model, example, run_dir, console, notes)
    write_report(run_dir, title=f"{config.name}: {config.model.spec} on {config.data.dataset}",
                 layer_sparsity=_layer_sparsity(model), events=trained.events,
                 extra={"model": config.model.spec, "dataset": config.data.dataset,
                        "mask": _mask_text(config), "device": str(dist.device) + (f" x {dist.world_size}" if dist.enabled else ""),
                        "tweaks": result.tweaks_text, **_ghost_cost_row(result), **_selection_row(result),
                        "sparsity": f"{result.sparsity:.2%} of conv/linear weights are zero", **notes})
    return result


def tweaks_of(config: RunConfig, manifest: Any) -> dict[str, Any]:
    """What trained besides the plain sparse network, as data: ghost skips, soft activations, LRsI,
    label smoothing, distillation (``describe_tweaks`` says it in words)."""
    smoothing = config.label_smoothing
    activations = [a.kind for a in manifest.activations]
    return {
        "ghost_skips": len(manifest.skips),
        "ghost_skip_projections": {p: sum(1 for s in manifest.skips if s.projection == p)
                                   for p in dict.fromkeys(s.projection for s in manifest.skips)},
        "soft_activations": len(activations),
        "soft_activation_kind": activations[0] if activations else None,
        "lrsi_iterations": config.lrsi.iterations if config.lrsi.enabled else 0,
        "label_smoothing": [smoothing.start, smoothing.start if smoothing.end is None else smoothing.end]
        if smoothing.start or smoothing.end else None,
        "distillation_teacher": config.distill.teacher,
    }


def describe_tweaks(tweaks: dict[str, Any]) -> str:
    """e.g. 'ghost skips: 16 (13 identity, 3 conv1x1), soft activations: 17 pswish, LRsI (390 iterations),
    label smoothing 0.1'; 'none' when the plain network trained with hard labels."""
    parts = []
    if tweaks.get("ghost_skips"):
        projections = ", ".join(f"{n} {p}" for p, n in tweaks.get("ghost_skip_projections", {}).items())
        parts.append(f"ghost skips: {tweaks['ghost_skips']} ({projections})")
    if tweaks.get("soft_activations"):
        parts.append(f"soft activations: {tweaks['soft_activations']} {tweaks.get('soft_activation_kind')}")
    if tweaks.get("lrsi_iterations"):
        parts.append(f"LRsI ({tweaks['lrsi_iterations']} iterations)")
    if tweaks.get("label_smoothing"):
        start, end = tweaks["label_smoothing"]
        parts.append(f"label smoothing {start:g}" + (f" -> {end:g}" if end != start else ""))
    if tweaks.get("distillation_teacher"):
        parts.append(f"distillation from {tweaks['distillation_teacher']}")
    return ", ".join(parts) or "none (plain sparse training)"


def _ghost_cost_row(result: RunResult) -> dict[str, str]:
    if not (result.tweaks.get("ghost_skips") or result.tweaks.get("soft_activations")):
        return {}
    return {"ghost cost": result.ghost_cost}


def _selection_row(result: RunResult) -> dict[str, str]:
    """The test accuracy of the weights the run ends with, and of the other candidate."""
    best, last = result.best_val, result.test_accuracy_last
    if best is None or best.get("test_acc") is None:
        return {}
    text = (f"{best['test_acc']:.2%} at the best-validation epoch {best['epoch']} (val {best['val_acc']:.2%}); "
            f"{_percent(last)} at the last epoch")
    chosen = "best-validation weights" if result.selected == "best_val" else "last epoch's weights"
    return {"test accuracy (selected)": f"{text}; the run keeps the {chosen}"}


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _verify_and_export(config: RunConfig, original: nn.Module, clean: fx.GraphModule, example: torch.Tensor,
                       run_dir: Path, console: Console, notes: dict[str, str]):
    report = info = None
    if config.export.verify:
        try:
            report = surgery.verify(original, clean, example)
            (run_dir / "verify.txt").write_text(str(report) + "\n")
        except SurgeryError as error:
            (run_dir / "verify.txt").write_text(f"FAILED\n{error}\n")
            raise
    if config.export.onnx:
        info = surgery.export_onnx(clean, example, run_dir / "model.onnx", sparse=config.export.sparse)
    return report, info


def _save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def _sparsity(model: nn.Module) -> float:
    weights = prunable_weights(model)
    total = sum(w.numel() for w in weights.values())
    return sum(int((w == 0).sum()) for w in weights.values()) / total if total else 0.0


def _layer_sparsity(model: nn.Module) -> dict[str, float]:
    return {name: float((w == 0).float().mean()) for name, w in prunable_weights(model).items()}


def _mask_text(config: RunConfig) -> str:
    if config.mask.file:
        return f"file {config.mask.file}"
    if config.mask.method == "dense" or config.mask.sparsity == 0:
        return "dense (no mask)"
    return f"{config.mask.method} {config.mask.sparsity:.0%}"


