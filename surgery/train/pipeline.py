"""`surgery run`: model -> mask -> compile -> (LRsI) -> train -> de-ghost -> verify -> ONNX -> report.

One function per stage; ``run(config)`` chains them and returns a ``RunResult``. Every
artefact lands in the run directory (``config.output``, its files named by ``RunFiles``):
the resolved ``config.yaml``, ``masks.safetensors``, ``metrics.csv`` / ``steps.csv`` /
``tensorboard/``, ``checkpoints/``, ``model.safetensors`` (the clean trained weights,
loadable into the original class), ``verify.txt``, ``model.onnx`` + sidecar, plots,
``summary.md`` and ``result.json``, the run's record (``surgery.train.record``), written
at every end: completed, interrupted or failed.

A run that fails or is interrupted before training started removes the directory it
created (unless it holds a checkpoint, from a mask method's rounds say). ``resume`` of a
run whose record says it completed with the same config returns that record's result
without redoing anything; ``force`` re-runs verification and export from the final
checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from torch import fx, nn

from surgery.compiler.driver import compile
from surgery.compiler.ghosts import ghost_parameters as parameters_of_ghosts, ghosts
from surgery.compiler.manifest import manifest_of
from surgery.compiler.masks import (
    MaskMetadata,
    bake_masks,
    dense_weights,
    masked_parameters,
    prunable_weights,
    save_masks,
)
from surgery.compiler.passes.deghost import deghost
from surgery.compiler.preprocessing import Preprocessing
from surgery.compiler.verify import verify
from surgery.errors import CheckpointError, ConfigError, SurgeryError
from surgery.fx.graph import deepcopy_module, eval_mode
from surgery.init.centroid import apply_centroids_from_metadata
from surgery.init.lrsi import LRsIResult, lrsi
from surgery.init.rewind import rewind
from surgery.init.zero import zero_init
from surgery.train.checkpoint import CheckpointStore, check_against_index, load_checkpoint
from surgery.train.config import RunConfig, check_resumable
from surgery.train.data import ImageDataset, load_dataset, make_loader
from surgery.train.distributed import Distributed
from surgery.train.interrupt import Interrupted, signal_name
from surgery.train.losses import with_auxiliary
from surgery.train.masking import MaskPlan, given_masks, plan_masks, save_start_weights
from surgery.train.pairing import pairing_section
from surgery.train.progress import TaskProgress
from surgery.train.record import (
    COMPLETED,
    RUNNING,
    RunRecord,
    completed_record,
    data_section,
    export_section,
    holdings,
    lrsi_section,
    model_section,
    read_record,
    verification_failed,
    verification_passed,
    verification_skipped,
)
from surgery.train.report import write_report
from surgery.train.report.story import describe_ghost_cost, describe_model, describe_tweaks
from surgery.train.report.tables import epoch_rows
from surgery.train.run_files import RunFiles
from surgery.train.settings import TrainerSettings
from surgery.train.trainer import Trainer, TrainResult, resume_hint, uses_channels_last
from surgery.zoo.models import build_model, load_weights, python_spec


@dataclass
class RunResult:
    """What a run produced: the clean model, and its record (result.json), which every number below reads."""

    run_dir: Path
    model: nn.Module | None  # the clean trained model (the original class, masks baked in); None: ghosts kept (read back)
    record: dict[str, Any]  # result.json's content
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch, as in metrics.csv
    verify: Any = None  # surgery.VerifyReport of a verification in this process (the record holds it as data)
    export: Any = None  # surgery.ExportInfo likewise
    events: list[tuple[int, str]] = field(default_factory=list)  # (step, label) lines for the plots only

    @property
    def status(self) -> str:
        return self.record["status"]

    @property
    def test_accuracy(self) -> float | None:  # of ``model``: the best-validation epoch's when selected, else the last's
        return self.record["accuracy"]["test"]

    @property
    def test_accuracy_last(self) -> float | None:
        return self.record["accuracy"]["test_last"]

    @property
    def best_val(self) -> dict[str, Any] | None:  # {epoch, val_acc, test_acc} of the best-validation epoch
        return self.record["accuracy"]["best_val"]

    @property
    def selected(self) -> str:  # whose weights ``model`` holds: "last" or "best_val"
        return self.record["accuracy"]["selected"]

    @property
    def sparsity(self) -> float:
        return self.record["sparsity"]

    @property
    def tweaks(self) -> dict[str, Any]:  # what trained besides the plain network (tweaks_of)
        return self.record["tweaks"]

    @property
    def ghost_parameters(self) -> int:  # training-only parameters the ghosts added
        return self.record["ghosts"]["parameters"]

    @property
    def ghosts_removed_at(self) -> tuple[int, int] | None:  # (step, epoch)
        removed = self.record["ghosts"]["removed_at"]
        return None if removed is None else (removed["step"], removed["epoch"])

    @property
    def seconds(self) -> float:  # training time, over every resumed part
        return self.record["training"]["seconds"]

    @property
    def tweaks_text(self) -> str:
        return describe_tweaks(self.tweaks)

    @property
    def ghost_cost(self) -> str:
        """The ghosts' training-only parameters next to the weights the final mask keeps."""
        return describe_ghost_cost(self.record)


def explains_stops(run):
    """A stop that lands outside the training loop (loading, mask finding, LRsI, verification, export)
    says what it left behind: the run's latest checkpoint, or nothing to resume."""

    @functools.wraps(run)
    def explained(config: RunConfig, *args, **kwargs):
        try:
            return run(config, *args, **kwargs)
        except Interrupted as stop:
            if stop.explained:  # the trainer's own
                raise
            latest = CheckpointStore(RunFiles(config.run_dir).checkpoints).latest()
            left = (f": the latest checkpoint is {latest}; {resume_hint(config.run_dir)}" if latest
                    else " before training started; nothing to resume")
            raise Interrupted(stop.signum, f"stopped by {signal_name(stop.signum)}{left}.", checkpoint=latest) from stop

    return explained


@explains_stops
def run(
    config: RunConfig,
    *,
    model: nn.Module | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    resume: bool | str | Path = False,
    force: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Run the whole pipeline; ``model`` / ``masks`` given in Python replace the config's.

    ``resume=True`` of a run that completed with this config returns its recorded result
    (nothing is redone) unless ``force``, which re-runs verification and export. A ``model`` given here is
    what the run records (``model.spec: python:module.Class``), not the config's spec, which did not train.
    """
    config = config.absolute()  # so the saved config.yaml, the record and every printed path work from anywhere
    if model is not None:
        config = as_given(config, model)
    if resume is True and not force:
        record = completed_record(config)
        if record is not None:
            return recorded_result(config, record, model)
    console = console or Console(stderr=True)
    dist = Distributed.from_env(config.train.device)
    files = RunFiles(config.run_dir)
    created = not files.root.exists()
    record = RunRecord(config, files, enabled=dist.is_main)
    try:
        result = _run(config, files, record, dist, console, model=model, masks=masks, resume=resume)
    except BaseException as error:
        if dist.is_main:
            _end_early(files, record, error, created=created)
        raise
    dist.close()
    return result


def as_given(config: RunConfig, model: nn.Module) -> RunConfig:
    """``config`` naming ``model``'s class as its spec: its saved config.yaml, hash and record say what trained,
    and a resume must give the same class again (``build_model`` refuses the spec with that fix)."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, spec=python_spec(model)))


def _end_early(files: RunFiles, record: RunRecord, error: BaseException, *, created: bool) -> None:
    """A run that stops before training leaves nothing it created behind (unless a checkpoint is there to
    resume from); any other stop is recorded in result.json: interrupted or failed, and why."""
    if not files.root.exists() or not record.written:  # an earlier run's record stays as it was
        return
    if created and record.stage == "setup" and not files.holds_checkpoint():
        shutil.rmtree(files.root, ignore_errors=True)
        return
    record.end(error)


def _run(config: RunConfig, files: RunFiles, record: RunRecord, dist: Distributed, console: Console, *,
         model: nn.Module | None, masks: dict[str, torch.Tensor] | None, resume: bool | str | Path) -> RunResult:
    run_dir = files.root
    dataset, original, train_loader, eval_loaders = set_up(config, record, dist, model)
    example = example_batch(dataset)
    record.update(data=data_section(config, dataset))
    if resume is True and files.config.is_file():  # before anything here is rewritten
        check_resumable(yaml.safe_load(files.config.read_text()) or {}, config, files.config)
    checkpoint = resumed_from(config, files, resume)  # a resume that cannot start fails before anything is written
    if resume:  # LRsI ran before the checkpoint: its record is the earlier run's
        record.update(lrsi=(read_record(files) or {}).get("lrsi"))
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        record.write(RUNNING)  # a completed record of an earlier run here no longer describes this directory
    with record.timed("mask"):
        start = initialized(config, original)
        plan = given_masks(config, start, masks, train_loader) if masks is not None else plan_masks(
            config, start, train_loader=train_loader, eval_loaders=eval_loaders, dist=dist, console=console,
            resume=resume)
        if plan.weights is not None:
            start = with_weights(start, plan.weights)
        if plan.rounds:
            record.update(rounds=plan.rounds)
        record.update(pairing=pairing_section(start, plan.masks, dataset, config.train.seed))
    with record.timed("compile"):
        ghosted = compile(start, example, config.recipe_object().replace(masks=plan.masks or None))
        manifest = manifest_of(ghosted)
        dist.broadcast_masks(ghosted)
        if not resume:
            start_from(config, ghosted, plan)
    with record.timed("mask"):
        if dist.is_main:
            write_run_files(config, run_dir, plan.masks, start)
            if plan.weights is not None:
                save_start_weights(run_dir, plan.weights)

    if config.lrsi.enabled and not resume:
        with record.timed("lrsi"):
            record.update(lrsi=lrsi_section(rescale(config, ghosted, train_loader, dist, console)))
        record.write(RUNNING)  # so a resume after a crash still finds what LRsI did
    record.stage = "training"
    with record.timed("training"):
        trainer = Trainer(ghosted, TrainerSettings.from_config(config), train_loader, eval_loaders, dist=dist,
                          run_dir=run_dir, teacher=teacher(config, dataset), console=console, hooks=plan.hooks)
        trained = trainer.fit(resume=resume, checkpoint=checkpoint)
    record.stage = "finish"
    record.update(num_classes=config.model.num_classes or dataset.num_classes,
                  device=str(dist.device) + (f" x {dist.world_size}" if dist.enabled else ""))
    mask_metadata = {k: v for hook in plan.hooks for k, v in hook.mask_metadata().items()}
    return finish(config, original, trained, example, run_dir, dist, console, mask_metadata, record=record,
                  tweaks=tweaks_of(config, manifest, record.data.get("lrsi")), ghost_parameters=manifest.ghost_parameters,
                  preprocessing=dataset.preprocessing())


def set_up(config: RunConfig, record: RunRecord, dist: Distributed, model: nn.Module | None = None):
    """The seeded start of a run and of a mask method's rounds alone (``surgery prune``): the dataset, the model
    (``model``, else the config's) and the loaders; the record names the model."""
    torch.manual_seed(config.train.seed)
    with record.timed("data"):
        dataset = load_data(config)
        train_loader, eval_loaders = loaders(config, dataset, dist)  # own generators: the init below is as seeded
    with record.timed("model"):
        model = model if model is not None else build(config, dataset)
    record.update(model=model_section(config.model.spec, model))
    return dataset, model, train_loader, eval_loaders


def resumed_from(config: RunConfig, files: RunFiles, resume: bool | str | Path) -> tuple[dict, Path] | None:
    """The checkpoint file ``resume`` names, loaded and checked against ``config``; refuses ``resume=True`` of a
    directory with no checkpoint at all (a mask method's rounds count: they resume inside). None otherwise."""
    if resume is True and not files.holds_checkpoint():
        what = "holds no checkpoint" if files.root.is_dir() else "does not exist"
        raise CheckpointError(f"cannot resume: {files.root} {what}, so there is nothing to continue; check the "
                              "config's output (a run's own config.yaml acts on its directory), or start without --resume.")
    if resume is True or not resume:
        return None
    path = Path(resume)
    state = load_checkpoint(path)
    check_resumable(state.get("config", {}), config, path)
    return state, path


def recorded_result(config: RunConfig, record: dict[str, Any], model: nn.Module | None = None) -> RunResult:
    """The result of a completed run, read back from its directory: the record, the epochs, and the
    clean weights loaded into the original class (``model`` or the config's; None when ghosts were kept)."""
    files = RunFiles(config.run_dir)
    clean = None
    if not record["ghosts"]["kept"]:
        clean = deepcopy_module(model) if model is not None else build_model(config.model.spec, record["num_classes"])
        clean = load_weights(clean, files.weights).eval()
    return RunResult(files.root, clean, record, epoch_rows(files.metrics))


# ------------------------------------------------------------------ stages


def load_data(config: RunConfig, *, hold_out: bool = True) -> ImageDataset:
    """The dataset ``config.data`` names: its subset, and (``hold_out``) its validation split."""
    d = config.data
    return load_dataset(d.dataset, root=d.root, download=d.download, image_size=d.image_size,
                        val_split=d.val_split if hold_out else 0.0, seed=config.train.seed, subset=d.subset,
                        subset_seed=d.subset_seed)


def build(config: RunConfig, dataset: ImageDataset) -> nn.Module:
    model = build_model(config.model.spec, config.model.num_classes or dataset.num_classes, input_size=dataset.image_size)
    if config.model.weights:
        load_weights(model, config.model.weights)
    return model


def example_batch(dataset: ImageDataset, n: int = 2) -> torch.Tensor:
    return torch.zeros(n, dataset.channels, dataset.image_size, dataset.image_size)


def initialized(config: RunConfig, model: nn.Module) -> nn.Module:
    """The model the run starts from: ``model`` itself, or a ZerO-initialized copy (init.zero)."""
    if not config.init.zero:
        return model
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
        check_against_index(config.init.rewind)  # a run's checkpoint: the bytes its index recorded
        rewind(ghosted, config.init.rewind)
    if config.init.centroids:
        apply_centroids_from_metadata(ghosted, plan.metadata, config.mask.file)


def write_run_files(config: RunConfig, run_dir: Path, masks: dict[str, torch.Tensor] | None, model: nn.Module) -> None:
    files = RunFiles(run_dir)
    files.root.mkdir(parents=True, exist_ok=True)
    files.config.write_text(config.to_yaml())
    if masks:
        save_masks(masks, files.masks, MaskMetadata(
            method=config.mask.method if not config.mask.file else "file", model=config.model.spec,
            seed=config.train.seed, target_sparsity=config.mask.sparsity, dense=dense_weights(model, masks)))


def loaders(config: RunConfig, dataset: ImageDataset, dist: Distributed):
    d, device = config.data, dist.device
    common = {"device": device, "seed": config.train.seed, "rank": dist.rank, "world_size": dist.world_size,
              "channels_last": uses_channels_last(config.train.channels_last, device),
              "workers": d.workers}
    train = make_loader(dataset, "train", d.batch_size, train=True, augment=d.augment, **common)
    evals = {split: make_loader(dataset, split, d.eval_batch_size or d.batch_size, train=False, **common)
             for split in ("val", "test") if split in dataset.splits}
    return train, evals


def rescale(config: RunConfig, ghosted: fx.GraphModule, train_loader: Any, dist: Distributed, console: Console) -> LRsIResult:
    """LRsI (GradInit): learn one scale per conv / Linear / norm tensor on fresh training batches, fold it in."""
    ghosted.to(dist.device)
    options = config.lrsi
    iterations = len(train_loader) if options.iterations is None else options.iterations  # None: an epoch
    with TaskProgress(console, "LRsI", iterations, unit="iterations", enabled=config.train.progress and dist.is_main) as bar:
        result = lrsi(ghosted, EveryEpoch(train_loader), eta=config.lrsi_eta(), loss_fn=with_auxiliary(config.train.aux_loss_weight),
                      iterations=iterations, scale_lr=options.scale_lr, grad_norm_bound=options.grad_norm_bound,
                      normalize=options.normalize, min_scale=options.min_scale, half_batches=options.half_batches,
                      on_iteration=lambda i, objective: bar.advance(i, f"objective {objective:.4g}"))
    if dist.is_main:
        constrained = f" ({result.constrained_iterations} on the gradient-norm bound)" if result.constrained_iterations else ""
        console.print(
            f"LRsI: {len(result.scales)} scales learned in {result.iterations} iterations{constrained}, "
            f"{result.seconds:.1f} s; loss after one step {result.loss_before:.4f} -> {result.loss_after:.4f}"
        )
    return result


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
    model = build_model(d.teacher, config.model.num_classes or dataset.num_classes, input_size=dataset.image_size)
    return load_weights(model, d.weights)


def finish(config: RunConfig, original: nn.Module, trained: TrainResult, example: torch.Tensor, run_dir: Path,
           dist: Distributed, console: Console, mask_metadata: dict[str, str] | None = None, *,
           record: RunRecord, tweaks: dict[str, Any], ghost_parameters: int = 0,
           preprocessing: Preprocessing | None = None) -> RunResult:
    """Bake masks, verify against the original, save weights, export ONNX, record the outcome in
    result.json and write the report from it (rank 0). ``preprocessing``: how the data fed the model,
    recorded for deployment (result.json, the ONNX file's metadata, summary.md)."""
    files = RunFiles(run_dir)
    with record.timed("deghost"):
        model = trained.model
        kept_ghosts = len(ghosts(model))
        final_masks = {k: v.detach().cpu() for k, v in masked_parameters(model).items()}
        if isinstance(model, fx.GraphModule) and not kept_ghosts:
            model = deghost(model, inplace=True)
        else:
            bake_masks(model)
        model = model.cpu().eval()
        record.update(**outcome_sections(trained, model, tweaks, ghost_parameters, kept_ghosts))
        if preprocessing is not None:
            preprocessing = preprocessing.for_outputs(output_classes(model, example))
        record.update(preprocessing=preprocessing.to_dict() if preprocessing else None)
        result = RunResult(run_dir, model, record.data, trained.history, events=trained.events)
        if dist.is_main:
            if final_masks:
                save_masks(final_masks, files.masks, MaskMetadata(
                    method=config.mask.method, model=config.model.spec, seed=config.train.seed,
                    target_sparsity=config.mask.sparsity, trained=True, dense=dense_weights(original, final_masks),
                    extra=mask_metadata or {}))
            _save_weights(model, files.weights)
    if not dist.is_main:
        return result
    if kept_ghosts:
        result.export = _export_as_trained(config, model, example, files, record, kept_ghosts, preprocessing)
    else:
        result.verify, result.export = _verify_and_export(config, original, model, example, files, record,
                                                          preprocessing)
    record.write(COMPLETED)  # the report reads it
    described = describe_model(record.data["model"])
    with record.timed("report"):
        write_report(run_dir, title=f"{config.name}: {described} on {config.data.dataset}",
                     layer_sparsity=_layer_sparsity(model), events=trained.events,
                     extra={"model": described, "dataset": config.data.dataset,
                            "mask": _mask_text(config), "device": record.data["device"]})
    record.write(COMPLETED)  # again, with the report's seconds
    return result


@torch.no_grad()
def output_classes(model: nn.Module, example: torch.Tensor) -> int | None:
    """The class count the trained model's logits have (a Python ``model=`` need not match the data's);
    None when its output is not one ``N x classes`` tensor."""
    with eval_mode(model):
        output = model(example)
    return int(output.shape[-1]) if torch.is_tensor(output) and output.dim() == 2 else None


def outcome_sections(trained: TrainResult, model: nn.Module, tweaks: dict[str, Any], ghost_parameters: int,
                     kept_ghosts: int) -> dict[str, Any]:
    """The record's accuracy, sparsity, weights, tweaks, ghosts and training sections of a trained ``model``."""
    last = next((row["test_acc"] for row in reversed(trained.history) if row.get("test_acc") is not None), None)
    selected = trained.best["test_acc"] if trained.selected == "best_val" else last
    prunable = prunable_weights(model)
    weights = prunable.values()
    total, kept = sum(w.numel() for w in weights), sum(int(w.count_nonzero()) for w in weights)
    empty = [name for name, w in prunable.items() if not w.detach().any()]  # let through by mask.allow_empty_layers
    held = holdings(parameters=sum(p.numel() for p in model.parameters()), prunable=total, kept=kept,
                    ghosts=sum(p.numel() for p in parameters_of_ghosts(model)))
    removed = trained.ghosts_removed_at
    return {
        "verification": None,  # filled in by verification, when it runs
        "export": None,
        "accuracy": {"test": selected, "test_last": last, "selected": trained.selected, "best_val": trained.best},
        "sparsity": 1 - kept / total if total else 0.0,
        "effective_sparsity": held.pop("effective_sparsity"),
        "weights": {**held, "empty_layers": empty},
        "tweaks": tweaks,
        "ghosts": {"count": tweaks["ghost_skips"] + tweaks["soft_activations"], "parameters": ghost_parameters,
                   "removed_at": None if removed is None else {"step": removed[0], "epoch": removed[1]},
                   "kept": bool(kept_ghosts), "kept_modules": kept_ghosts},
        "architecture": architecture_text(kept_ghosts),
        "training": {"epochs": trained.history[-1]["epoch"] if trained.history else 0, "steps": trained.steps,
                     "seconds": trained.seconds},
    }


def tweaks_of(config: RunConfig, manifest: Any, lrsi: dict[str, Any] | None = None) -> dict[str, Any]:
    """What trained besides the plain sparse network, as data: ghost skips, soft activations, LRsI (the
    iterations it ran: ``lrsi``, the record's section), label smoothing, distillation (``describe_tweaks``
    says it in words)."""
    smoothing = config.label_smoothing
    activations = [a.kind for a in manifest.activations]
    return {
        "ghost_skips": len(manifest.skips),
        "ghost_skip_projections": {p: sum(1 for s in manifest.skips if s.projection == p)
                                   for p in dict.fromkeys(s.projection for s in manifest.skips)},
        "soft_activations": len(activations),
        "soft_activation_kind": activations[0] if activations else None,
        "lrsi_iterations": (lrsi or {}).get("iterations", config.lrsi.iterations) if config.lrsi.enabled else 0,
        "label_smoothing": [smoothing.start, smoothing.start if smoothing.end is None else smoothing.end]
        if smoothing.start or smoothing.end else None,
        "distillation_teacher": config.distill.teacher,
    }


def _verify_and_export(config: RunConfig, original: nn.Module, clean: fx.GraphModule, example: torch.Tensor,
                       files: RunFiles, record: RunRecord, preprocessing: Preprocessing | None = None):
    """Verify (verify.txt is the people's copy; the record holds the report as data), then export ONNX."""
    from surgery.compiler.export import export_onnx  # onnx loads only when a run exports

    report = info = None
    if config.export.verify:
        try:
            with record.timed("verify"):
                report = verify(original, clean, example)
        except SurgeryError as error:
            record.update(verification=verification_failed(error))
            files.verify.write_text(f"FAILED\n{error}\n")
            raise
        record.update(verification=verification_passed(report))
        files.verify.write_text(str(report) + "\n")
    if config.export.onnx:
        with record.timed("export"):
            info = export_onnx(clean, example, files.onnx, sparse=config.export.sparse,
                                       preprocessing=preprocessing)
        record.update(export=export_section(info))
    return report, info


def architecture_text(kept_ghosts: int) -> str:
    """What the trained model is, in the words result.json, the summary and the ONNX sidecar share."""
    return f"kept {kept_ghosts} ghost modules: not the original" if kept_ghosts else "the original"


def _export_as_trained(config: RunConfig, model: nn.Module, example: torch.Tensor, files: RunFiles,
                       record: RunRecord, kept_ghosts: int, preprocessing: Preprocessing | None = None):
    """A model that keeps its ghosts (ToST's released code: ``ghosts.remove_at: never``) is not the original:
    the checks against it are skipped, saying why, and the trained architecture is exported with its parity."""
    record.update(verification=verification_skipped(
        f"the trained model keeps {kept_ghosts} ghost modules (ghosts.remove_at: never), so it is not the original "
        "architecture: the graph, strict-load and output checks against the original do not apply"))
    files.verify.write_text(f"SKIPPED\narchitecture {architecture_text(kept_ghosts)}: {record.data['verification']['message']}\n")
    if not config.export.onnx:
        return None
    from surgery.compiler.export import export_onnx  # onnx loads only when a run exports

    with record.timed("export"):
        info = export_onnx(model, example, files.onnx, sparse=config.export.sparse, keep_ghosts=True,
                                   preprocessing=preprocessing)
    record.update(export=export_section(info))
    return info


def _save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def _layer_sparsity(model: nn.Module) -> dict[str, float]:
    return {name: float((w == 0).float().mean()) for name, w in prunable_weights(model).items()}


def _mask_text(config: RunConfig) -> str:
    if config.mask.file:
        return f"file {config.mask.file}"
    if config.mask.method == "dense" or config.mask.sparsity == 0:
        return "dense (no mask)"
    return f"{config.mask.method} {config.mask.sparsity:.0%}"


