"""The ``surgery`` command: inspect, verify, export, prune, train, run, sweep, demo.

Each subcommand is one ``run_*`` function over parsed arguments. Every
``SurgeryError`` (a problem with the user's input) becomes its message on stderr
and exit code 2; SIGINT / SIGTERM one line and exit code 128 + the signal
(``surgery --debug ...`` adds the traceback to both); any other exception keeps its
traceback, since it is a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import operator
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn
from torch.utils._pytree import tree_map

from surgery import advice
from surgery.apps import demo
from surgery.compiler.driver import compile, leaf_modules_in
from surgery.errors import ConfigError, ExportError, SurgeryError, TraceError
from surgery.fx.graph import device_of, scalar_loss
from surgery.train.interrupt import Interrupted, stop_at_once
from surgery.compiler.manifest import compiled_submodules, ghost_cost, manifest_of
from surgery.compiler.masks import SPARSE_THRESHOLD, load_masks, prunable_weights, weight_sparsity
from surgery.zoo.models import build_model, default_input_size, input_channels, load_weights
from surgery.compiler.passes.deghost import deghost
from surgery.compiler.preprocessing import Preprocessing
from surgery.pruning import random_masks
from surgery.compiler.recipe import TOST_RECIPE, Recipe
from surgery.compiler.submodules import within
from surgery.zoo.tasks import (
    default_submodule,
    describe_inputs,
    example_inputs,
    input_size,
    parse_input_size,
    task_of,
    train_inputs,
)
from surgery.train.record import command_line, recorded_holdings
from surgery.train.run_files import RunFiles
from surgery.compiler.verify import verify
from surgery.version import __version__

EXIT_USER_ERROR = 2
MODEL_HELP = ("torchvision:NAME, timm:NAME, hf:ModelClass[:config.json] (transformers) or path/to/file.py:factory "
              "(random weights, nothing downloads)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    with stop_at_once(), _process_command(own=argv is None):
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit:  # -h, --version, usage errors: argparse already printed
            return exit.code if isinstance(exit.code, int) else 0
        console = Console(highlight=False, soft_wrap=True)
        shown, warnings.showwarning = warnings.showwarning, _warning_printer(args.debug)
        try:
            with advice.for_command(args.command_options):
                return args.run(args, console) or 0
        except SurgeryError as error:
            return _failed(args, f"error: {error}", EXIT_USER_ERROR)
        except Interrupted as stop:
            return _failed(args, str(stop), stop.exit_code)
        finally:
            warnings.showwarning = shown


@contextlib.contextmanager
def _process_command(own: bool) -> Iterator[None]:
    """Around the command a process was started for (``main()`` on its own argv, not ``main([...])`` from Python):
    a run's record times the process's start-up (``record.command_line``), and at the end the garbage collector
    leaves every object alone (``gc.freeze``): the interpreter's exit would otherwise walk all that torch, its ONNX
    exporter and matplotlib made (1.5 s and more) to free memory the process is about to give back anyway."""
    if not own:
        yield
        return
    with command_line():
        try:
            yield
        finally:
            gc.freeze()


def _failed(args: argparse.Namespace, message: str, code: int) -> int:
    """One line on stderr; with --debug, after the whole chain: our frames and the third-party exception behind it."""
    if args.debug:
        traceback.print_exc()
    print(f"surgery {args.command}: {message}", file=sys.stderr)
    return code


def _warning_printer(debug: bool):
    """Warnings as one plain line; with --debug, also their category and where they were raised."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        where = f" ({category.__name__} at {filename}:{lineno})" if debug else ""
        print(f"surgery: warning: {message}{where}", file=sys.stderr)

    return show


# ------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgery",
        description="Model surgery on torch.fx: ghost skips, PSwish and masks in, sparse verified models out.",
        epilog="Run 'surgery COMMAND -h' for a command's options. Start with: surgery demo",
    )
    parser.add_argument("--version", action="version", version=f"surgery (tost-surgery) {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback behind an error, third-party frames included")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_inspect(commands)
    _add_verify(commands)
    _add_export(commands)
    _add_prune(commands)
    _add_train(commands)
    _add_run(commands)
    _add_sweep(commands)
    _add_demo(commands)
    for name, command in commands.choices.items():  # what each command's error advice may name
        command.set_defaults(command_options=advice.CommandOptions.of(name, command))
    return parser


def _command(commands, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary.replace("%", "%%"),  # argparse %-formats help strings, not descriptions
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--num-classes", type=_positive_int, metavar="N", help="classifier outputs (default: the model's)")
    _add_input_size(p)
    _add_submodule(p)
    _add_leaf(p)


def _add_leaf(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--leaf", action="append", default=[], metavar="NAME",
        help="module path or class name to keep opaque when tracing (repeatable: --leaf a --leaf b)",
    )


def _add_input_size(p: argparse.ArgumentParser, what: str = "inputs are") -> None:
    p.add_argument("--input-size", type=parse_input_size, metavar="S|T,H,W",
                   help=f"{what} S x S images, or T,H,W clips for a video model (default: the model's, else 224; "
                   "detection 320, its transform resizing to S; video 16,112,112; optical flow pairs of 128)")


def _add_submodule(p: argparse.ArgumentParser) -> None:
    p.add_argument("--submodule", action="append", metavar="PATH",
                   help="compile only this submodule, e.g. backbone (a path of model.named_modules(); repeatable); "
                   "the rest of the model runs unchanged. Default: the whole model, or where torch.fx cannot trace "
                   "it the task's part (detection: backbone; optical flow: feature_encoder and context_encoder)")


def _add_mask_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--masks", metavar="FILE", help="mask file (.safetensors), or a .pt state_dict whose zeros mark pruned weights"
    )
    group.add_argument(
        "--sparsity", type=float, metavar="S", help="random masks pruning the fraction S of every conv/linear weight"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks and inputs (default 0)")
    p.add_argument("--partial-masks", action="store_true",
                   help="let the mask file leave prunable weights without a mask (they stay dense); "
                        "by default it must cover them all")


def _add_inspect(commands) -> None:
    p = _command(
        commands, "inspect",
        "Trace a model and show what the recipe reaches: convs, activations, maskable weights, leaves.",
        "surgery inspect timm:resnet50 --recipe recipe.yaml --json",
    )
    _add_model_arguments(p)
    p.add_argument("--recipe", metavar="NAME|YAML", help="a preset's graph part (default tost: ghost skips around the "
                   "body's spatial convs + PSwish; tost-official: 1x1 conv + BN jumps on every one) or a recipe file")
    p.add_argument("--sparsity", type=float, metavar="S",
                   help="compare the ghosts' parameters with what an S-sparse mask keeps, e.g. 0.98")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run_inspect)


def _add_verify(commands) -> None:
    p = _command(
        commands, "verify",
        "Round trip one model: compile, one forward+backward, de-ghost, verify against the original.",
        "surgery verify torchvision:resnet18 --sparsity 0.9 --input-size 64",
    )
    _add_model_arguments(p)
    p.add_argument("--recipe", metavar="NAME|YAML", help="a preset's graph part (default tost: ghost skips around the "
                   "body's spatial convs + PSwish; tost-official: 1x1 conv + BN jumps on every one) or a recipe file")
    _add_mask_arguments(p)
    p.add_argument("--device", choices=("cpu", "meta"), default="cpu", help="meta: structure only, no numeric checks")
    p.set_defaults(run=run_verify)


def _add_export(commands) -> None:
    p = _command(
        commands, "export",
        "Export a model (with its trained weights and masks) to ONNX, checked against onnxruntime.",
        "surgery export torchvision:resnet18 --num-classes 10 --weights clean.safetensors -o resnet18.onnx",
    )
    _add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the ONNX model")
    p.add_argument("--weights", metavar="FILE",
                   help="state_dict (.safetensors, .pt) of the plain model, or a training checkpoint, loaded strictly")
    _add_mask_arguments(p)
    sparse = p.add_mutually_exclusive_group()
    sparse.add_argument(
        "--sparse", dest="sparse", action="store_true", default=None,
        help=f"store every weight that is at least {SPARSE_THRESHOLD:.0%}% zeros as a sparse initializer (the default)",
    )
    sparse.add_argument("--dense", dest="sparse", action="store_false", help="store every weight dense")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--preprocessing", metavar="FILE",
                   help="how to feed the model (input size, mean/std, class names), written into the file's metadata: "
                        "a run's result.json, an export's model.onnx.json or a JSON of the fields (default: the "
                        "result.json beside --weights, when there is one)")
    p.set_defaults(run=run_export)


def _add_prune(commands) -> None:
    p = _command(
        commands, "prune",
        "Find a mask with any method (random/ERK, magnitude, SNIP, GraSP, SynFlow, IMP, GMP, RigL, ASNI, OptG, "
        "learned) and write it as a .safetensors mask file with its metadata and a per-layer table.",
        "surgery prune torchvision:resnet50 --method snip --sparsity 0.9 --data imagefolder:/data/imagenet -o r50-snip.safetensors",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="cifar:NAME, " + MODEL_HELP)
    p.add_argument("-o", "--output", metavar="FILE", help="the mask file to write (default: MODEL-METHOD-SPARSITY.safetensors)")
    p.add_argument("--list", action="store_true", help="list the methods and exit")
    _add_finder_arguments(p)
    p.set_defaults(method="random")
    p.add_argument("--weights", metavar="FILE", help="trained weights to score (magnitude / OMP prunes trained weights)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="let a method that scores trained weights (magnitude) score the random initialization")
    p.add_argument("--batches", type=_positive_int, default=1, help="training batches SNIP / GraSP score on (default 1)")
    _add_input_size(p, "data-free SynFlow's inputs are")
    _add_submodule(p)
    _add_data_arguments(p, default=None)
    _add_training_arguments(p)
    _add_run_options(p)
    p.set_defaults(run=run_prune)


def _add_train(commands) -> None:
    p = _command(
        commands, "train",
        "Train a sparse model with ToST's four tweaks (ghost skips and PSwish that fade, then leave before the first "
        "LR decay; LRsI; label smoothing 0.1): mask -> compile -> LRsI -> train -> de-ghost -> verify -> sparse ONNX "
        "-> report. --recipe tost-official trains what the authors' released code runs; --recipe none is the baseline.",
        "surgery train cifar:resnet18 --data cifar10-jpeg:../shared/data/cifar10-jpeg.tar.gz --sparsity 0.9 --epochs 30",
    )
    p.add_argument("model", metavar="MODEL", help="cifar:NAME, " + MODEL_HELP)
    _add_data_arguments(p)
    p.add_argument("--masks", metavar="FILE", help="a .safetensors mask file (instead of --method)")
    p.add_argument("--partial-masks", action="store_true",
                   help="let the mask file leave prunable weights without a mask (they stay dense); "
                        "by default it must cover them all")
    _add_finder_arguments(p, default_sparsity=0.9)
    _add_recipe_arguments(p)
    _add_leaf(p)  # model.leaf_modules; no --submodule: the pipeline trains the whole model
    _add_training_arguments(p)
    _add_run_options(p)
    p.set_defaults(run=run_train)


def _add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The recipe and one switch per tweak (FLAG_FIELDS maps each to its field)."""
    from surgery.compiler.presets import PRESETS

    p.add_argument("--recipe", metavar="NAME|FILE", help="a preset, or a recipe YAML file (its passes alone): "
                   + "; ".join(f"{name}: {entry.summary}" for name, entry in PRESETS.items()))
    p.add_argument("--label-smoothing", type=float, metavar="A",
                   help="constant label smoothing (tost: 0.1; 0 turns it off)")
    p.add_argument("--lrsi", action="store_true", help="run LRsI (layer-wise re-scaled initialization) before training")
    p.add_argument("--no-lrsi", action="store_true", help="skip LRsI")
    p.add_argument("--lrsi-iterations", type=_positive_int, metavar="N",
                   help="LRsI iterations (default: one epoch of the training data)")
    p.add_argument("--no-ghost-skip", action="store_true", help="no ghost skips (recipe.ghost_skip: null)")
    p.add_argument("--no-pswish", action="store_true", help="keep the model's activations (recipe.soft_activation: null)")


def _add_data_arguments(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    p.add_argument("--data", default=default, metavar="DATASET",
                   help="digits" + (" (default, offline)" if default == "digits" else "")
                   + ", synthetic, cifar10, cifar100, cifar10-jpeg:PATH, imagefolder:PATH")
    p.add_argument("--image-size", type=_positive_int, metavar="S", help="resize images to S x S")
    p.add_argument("--val-split", type=float, metavar="F", help="hold out F of the training set for validation")
    p.add_argument("--num-classes", type=_positive_int, metavar="N", help="classifier outputs (default: the dataset's)")


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=_positive_int,
                   help="default 180; the LR decays at 50%% and 75%% of it (none for 1 epoch)")
    p.add_argument("--batch-size", type=_positive_int, help="global batch (default 128)")
    p.add_argument("--lr", type=float, help="base learning rate (default 0.1)")
    p.add_argument("--optimizer", help="sgd (default), adamw or adam")
    p.add_argument("--lr-schedule", help="step (default, x0.1 at 50%% and 75%%) or cosine")


def _add_finder_arguments(p: argparse.ArgumentParser, default_sparsity: float | None = None) -> None:
    p.add_argument("--method", metavar="NAME", help="mask method (default random; `surgery prune --list` lists them)")
    p.add_argument("--sparsity", type=float, metavar="S",
                   help="fraction of the prunable weights to prune" + (f" (default {default_sparsity})" if default_sparsity else ""))
    p.add_argument("--scope", choices=("global", "layer"), help="rank all layers together or each alone (default: the method's)")
    p.add_argument("--distribution", choices=("uniform", "erk"), help="layer budgets with --scope layer (default: the method's)")
    p.add_argument("--dense-first", action="store_true", help="keep the first prunable layer dense (the stem)")
    p.add_argument("--dense-last", action="store_true", help="keep the last prunable layer dense (the head, conv or linear)")
    p.add_argument("--prunable", metavar="KINDS", help="what can be pruned: conv,linear (default) or all")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="keep the weights this pattern matches dense (fnmatch over parameter names, e.g. "
                        "'layer4.*' or 'fc.weight'; repeatable)")
    p.add_argument("--allow-empty-layers", action="store_true",
                   help="let a global ranking keep no weight of a layer (or cut every path); refused by default")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --option rounds=3 for IMP, --option every=100 for RigL (repeatable)")


def _add_run(commands) -> None:
    p = _command(
        commands, "run",
        "Run a versioned config: model -> mask -> compile -> train -> de-ghost -> verify -> ONNX -> report.",
        "surgery run examples/configs/tost-cifar10.yaml --download --set train.epochs=30 --set lr_schedule.milestones=[15,22]",
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="a run config (see examples/configs/)")
    _add_leaf(p)
    _add_run_options(p)
    p.set_defaults(run=run_config)


def _add_sweep(commands) -> None:
    p = _command(
        commands, "sweep",
        "Run a grid of a config's runs (fields x values x seeds), J at once, resumable; write results.csv, "
        "results.md (mean ± std over seeds, and each recipe minus `none` seed by seed with a 95% interval), "
        "accuracy-vs-sparsity.png and paired-differences.png.",
        "surgery sweep examples/configs/sweep-digits.yaml --grid mask.method=random,snip "
        "--grid mask.sparsity=0.95,0.98 --grid recipe=tost,none --seeds 3 --jobs 2\n"
        "  surgery sweep examples/configs/sweep-digits.yaml --jobs 2\n"
        "  surgery sweep --report sweeps/sweep-digits",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="the base run config (see examples/configs/)")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a config field and its values, read as YAML (repeatable: the grid is their product); "
                        "recipe takes a preset: tost, tost-official, none, official-jumps, or one tweak alone: gsk, gsw, lrsi, "
                        "ls; mask.sparsity also takes {match: RECIPE} (plain training as large as that arm)")
    p.add_argument("--seeds", metavar="N|S1,S2,...", help="N seeds (0..N-1), or the seeds to run (default 1, "
                   "or the config's sweep: section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="a fixed override of the base config, e.g. --set train.epochs=30 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="the sweep's directory (default sweeps/<config name>)")
    p.add_argument("--jobs", type=int, metavar="J", help="runs at once (default 1; with slurm: all). They share "
                   "one GPU, get their own with several, split the cores on CPU")
    p.add_argument("--nproc-per-run", type=int, default=1, metavar="P", help="each run a torchrun DDP job of P processes")
    p.add_argument("--launcher", default="local", choices=("local", "slurm"),
                   help="local processes (default) or one Slurm job per run (needs tost-surgery[slurm])")
    p.add_argument("--slurm-partition", metavar="NAME", help="Slurm partition")
    p.add_argument("--slurm-gpus-per-run", type=int, metavar="G", help="GPUs per Slurm job (default --nproc-per-run)")
    p.add_argument("--slurm-time", type=int, default=24 * 60, metavar="MIN", help="time limit per run in minutes")
    p.add_argument("--slurm-cpus-per-run", type=int, metavar="C", help="CPUs per Slurm job")
    p.add_argument("--dry-run", action="store_true", help="list the runs and what each would do; run nothing")
    p.add_argument("--report", metavar="DIR", help="only rebuild DIR's results table and plot from its runs")
    p.add_argument("--paired", action=argparse.BooleanOptionalAction, default=None,
                   help="refuse a report whose arms do not pair seed by seed with a `recipe: none` cell (same initial "
                        "weights, mask and data order); default: the config's sweep.paired")
    p.set_defaults(run=run_sweep)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", metavar="DIR", help="where cifar10 / cifar100 live (or go, with --download)")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    p.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda, cuda:1")
    p.add_argument("--amp", help="auto (default: bf16 on GPU), off, bf16, fp16")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, help="seed of masks, init and data order (default 0)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/NAME)")
    p.add_argument("--name", help="run name (default: the config's)")
    _add_resume_arguments(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch still)")


def _add_resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the run directory's latest good checkpoint, or from CHECKPOINT; "
                   "a completed run says so and exits")
    p.add_argument("--force", action="store_true",
                   help="with --resume of a completed run: verify and export its final weights again")


def _add_demo(commands) -> None:
    p = _command(
        commands, "demo",
        "The embedded default job, offline on CPU in about two minutes: a CIFAR ResNet-20 on scikit-learn's digits, a "
        "random 90% mask, full ToST, trained, de-ghosted, verified, exported to sparse ONNX, with a report.",
        "surgery demo --out runs/demo\n  surgery demo --set mask.method=synflow --set lrsi.enabled=false",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory (default runs/demo)")
    p.add_argument("--epochs", type=_positive_int, help=f"training epochs (default {demo.EPOCHS})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch still)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the demo's config, e.g. --set mask.sparsity=0.95 (repeatable)")
    _add_resume_arguments(p)
    p.set_defaults(run=run_demo)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


# ----------------------------------------------------------- shared helpers


def model_and_inputs(args: argparse.Namespace, device: str, batch: int = 2) -> tuple[nn.Module, tuple]:
    """The model ``args.model`` built on ``device`` (seeded init), and seeded random inputs that fit its task
    (``surgery.zoo.tasks``): an image batch, a list of images, a batch of clips or a pair of image batches."""
    seed = getattr(args, "seed", 0)
    torch.manual_seed(seed)
    size = input_size(args.model, args.input_size)
    with torch.device(device):
        model = build_model(args.model, args.num_classes, input_size=size)
    if getattr(args, "weights", None):
        load_weights(model, args.weights)
    size = size or (default_input_size(model, args.model),)
    return model, example_inputs(args.model, size, batch=batch, channels=input_channels(model), seed=seed, device=device)


def submodule_of(args: argparse.Namespace) -> list[str] | None:
    """``--submodule`` paths, else the task's default part (None: the whole model)."""
    default = default_submodule(args.model)
    return args.submodule or (list(default) if default else None)


def compile_model(args: argparse.Namespace, model: nn.Module, inputs: tuple, recipe: Any) -> nn.Module:
    """``surgery.compile`` of ``--submodule`` (or the task's part) on the inputs a training forward gets: a
    detection model's include synthetic targets, so submodules called only in train mode are reached too."""
    training = train_inputs(model, inputs, num_classes=args.num_classes, seed=getattr(args, "seed", 0))
    return compile(model, training, recipe, submodule=submodule_of(args), leaf_modules=args.leaf)


def recipe_with_masks(recipe: str | None, masks: Any = None) -> Recipe:
    """The recipe file (default: ``TOST_RECIPE``), its masks section replaced by ``masks`` if given."""
    base = Recipe.coerce(recipe or TOST_RECIPE)
    return base if masks is None else base.replace(masks=masks)


def masks_from_args(args: argparse.Namespace, model: nn.Module) -> Any:
    """``--masks FILE`` (a mask file, checked against the model; a .pt state_dict as its path), ``--sparsity S``
    as random masks of the weights in the compiled part (``--submodule``, or the task's), else None."""
    if args.masks and Path(args.masks).suffix == ".safetensors":
        return load_masks(args.masks, model=model, partial=args.partial_masks, spec=args.model)[0]
    if args.masks:
        return args.masks
    if args.sparsity is not None:
        parts = submodule_of(args) or []
        return {name: mask for name, mask in random_masks(model, args.sparsity, seed=args.seed).items()
                if within(name, parts)}
    return None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ inspect


def run_inspect(args: argparse.Namespace, console: Console) -> int:
    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        raise ConfigError(f"--sparsity {args.sparsity} is outside [0, 1): give the fraction a mask prunes, e.g. 0.98.")
    model, x, ghosted = compile_for_inspection(args)
    report = inspection_report(args.model, model, ghosted, x, sparsity=args.sparsity)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_inspection(console, report)
    return 0


def compile_for_inspection(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, torch.fx.GraphModule]:
    """Compile on the meta device (no weights, fast); fall back to the CPU where meta fails.

    What the meta attempt writes to stderr (warnings; fx's shape propagation prints a
    traceback before it re-raises) is shown only if that attempt is the one that counts.
    """
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            result = _build_and_compile(args, "meta")
    except TraceError:  # a leaf that branches on values cannot run on meta (ShapePropagationError), and a
        return _build_and_compile(args, "cpu")  # failed trace's advice lists the parts that trace on CPU only
    except SurgeryError:
        sys.stderr.write(held.getvalue())
        raise
    except Exception:  # an op, an initializer or a data-dependent branch without a meta kernel
        return _build_and_compile(args, "cpu")
    sys.stderr.write(held.getvalue())
    return result


def _build_and_compile(args: argparse.Namespace, device: str):
    model, inputs = model_and_inputs(args, device)
    ghosted = compile_model(args, model, inputs, recipe_with_masks(args.recipe))
    return model, inputs, ghosted


def inspection_report(
    spec: str, model: nn.Module, ghosted: nn.Module, inputs: tuple, sparsity: float | None = None
) -> dict[str, Any]:
    manifest = manifest_of(ghosted)
    summary = manifest.summary()
    parts = [path for path in compiled_submodules(ghosted) if path]  # empty: the whole model was compiled
    maskable = {name: w for name, w in prunable_weights(model).items() if within(name, parts)}
    maskable_parameters = sum(w.numel() for w in maskable.values())
    kept = summary["kept_weights"]
    if kept is None and sparsity is not None:
        kept = round(maskable_parameters * (1 - sparsity))
    total = parameter_count(model)
    compiled = sum(parameter_count(model.get_submodule(p)) for p in parts) if parts else total
    return {
        "model": spec,
        "class": summary.pop("model"),
        "task": task_of(spec).name,
        "input_shape": tree_map(lambda t: list(t.shape), inputs[0] if len(inputs) == 1 else list(inputs)),
        "inputs": describe_inputs(inputs),
        "device": str(device_of(model)),
        "parameters": total,
        "submodules": parts,
        "parameters_compiled": compiled,
        "parameters_outside": total - compiled,
        "left_outside": [name for name, _ in model.named_children() if parts and not within(name + ".", parts)],
        **{k: v for k, v in summary.items() if k not in ("deghosted", "kept_weights", "submodules")},
        "kept_weights": kept,
        "sparsity": sparsity,  # --sparsity: what a mask would keep, for the ghost-cost comparison only
        "ghost_cost": ghost_cost(summary["ghost_parameters"], kept),
        "activations_by_original": dict(Counter(a.original for a in manifest.activations)),
        "activations_unreached": sum(1 for u in manifest.unreached if u.what == "activation"),
        "maskable_weights": len(maskable),
        "maskable_parameters": maskable_parameters,
        "leaf_modules": [{"module": f"{part}.{path}" if part else path, "class": cls}
                         for part, gm in compiled_submodules(ghosted).items() for path, cls in leaf_modules_in(gm)],
        "unreached": [
            {"module": u.module, "class": u.cls, "inside": u.inside, "what": u.what} for u in manifest.unreached
        ],
        "not_targeted": [{"site": site, "kind": kind} for site, kind in manifest.untargeted],
        "skipped": [{"site": site, "why": why} for site, why in manifest.skipped],
        "mode_branches": [
            {"module": b.module or "(the model)", "class": b.cls, "where": b.where, "code": b.code,
             "modes": " and ".join(b.modes)} for b in manifest.mode_branches
        ],
    }


def print_inspection(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"{report['model']}  ({report['class']})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in _inspection_rows(report):
        table.add_row(label, value)
    console.print(table)
    _print_listing(console, "Leaf modules (opaque to every pass)", report["leaf_modules"], ("module", "class"))
    unreached_columns = ("module", "class", "inside", "what")
    _print_listing(console, "Out of reach inside leaf modules", report["unreached"], unreached_columns)
    _print_listing(console, "Sites left without a ghost", report["skipped"], ("site", "why"))
    branch_columns = ("module", "where", "code", "modes")
    _print_listing(console, "Where the forward branches on self.training (one graph per mode)",
                   report["mode_branches"], branch_columns)


def _inspection_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    projections = ", ".join(f"{n} {p}" for p, n in report["projections"].items()) or "none"
    originals = ", ".join(f"{n} x {o}" for o, n in report["activations_by_original"].items()) or "none"
    rows = [
        ("input", f"{report['inputs']} on {report['device']} ({report['task'].replace('_', ' ')})"),
        ("compiled", _compiled_text(report)),
        ("passes", ", ".join(report["passes"]) or "none"),
        ("modes", _modes_text(report)),
        ("parameters", f"{report['parameters']:,} (+{report['ghost_parameters']:,} in ghosts, training only)"),
        ("ghost cost", _ghost_cost_text(report)),
        ("convs covered", _convs_covered_text(report)),
        ("skip projections", projections),
        ("activations swapped", f"{report['activations_swapped']} ({originals})"),
        ("weights maskable", f"{report['maskable_weights']} ({report['maskable_parameters']:,} parameters)"),
        ("weights masked", _masked_text(report)),
        ("leaf modules", str(len(report["leaf_modules"]))),
        ("out of reach in leaves", f"{report['convs_unreached']} convs, {report['activations_unreached']} activations"),
    ]
    if report["linears_covered"]:
        rows.insert(4, ("linears covered", str(report["linears_covered"])))
    if report["specialized_to"]:  # the forward computes with its inputs' shapes in Python: the graph holds one shape
        rows.insert(4, ("traced for", "; ".join(report["specialized_to"]) + " only (other shapes are refused)"))
    return rows


def _compiled_text(report: dict[str, Any]) -> str:
    if not report["submodules"]:
        return f"the whole model ({report['parameters_compiled']:,} parameters)"
    outside = ", ".join(report["left_outside"]) or "nothing else"
    return (f"{', '.join(report['submodules'])} ({report['parameters_compiled']:,} parameters); left outside, "
            f"unchanged: {outside} ({report['parameters_outside']:,} parameters)")


def _modes_text(report: dict[str, Any]) -> str:
    if report["mode_graphs"] == 1:
        return "one graph for train and eval mode"
    places = len(report["mode_branches"])
    return (f"two graphs, one per mode: the forward branches on self.training in {places} place"
            f"{'s' if places != 1 else ''} (listed below); .train() / .eval() pick the graph, one state_dict")


def _convs_covered_text(report: dict[str, Any]) -> str:
    text = f"{report['convs_covered']} of {report['convs_found']} found"
    left_out = report["convs_not_targeted"]
    if left_out:
        kinds = ", ".join(f"{n} {kind}" for kind, n in left_out.items())
        text += f" (not targeted: {kinds}; add a kind to ghost_skip.targets to wrap it)"
    return text


def _masked_text(report: dict[str, Any]) -> str:
    """Masks attached by the recipe; ``--sparsity`` only sizes the ghost-cost comparison, so say so."""
    if report["weights_masked"] or report.get("sparsity") is None:
        return str(report["weights_masked"])
    return f"0 (--sparsity {report['sparsity']:g} only sizes the ghost-cost comparison; masks come from the recipe)"


def _ghost_cost_text(report: dict[str, Any]) -> str:
    if report["kept_weights"] is not None or not report["ghost_parameters"] or not report["maskable_parameters"]:
        return report["ghost_cost"]
    share = report["ghost_parameters"] / report["maskable_parameters"]
    return (f"{report['ghost_cost']} ({share:.1%} of the {report['maskable_parameters']:,} maskable weights; "
            "--sparsity S compares with what a mask keeps)")


def _print_listing(console: Console, title: str, rows: list[dict], columns: tuple[str, ...], limit: int = 20) -> None:
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")  # paths stay whole, wrapped
    for row in rows[:limit]:
        table.add_row(*(str(row[c]) for c in columns))
    if len(rows) > limit:
        table.caption = f"... and {len(rows) - limit} more (--json lists all)"
    console.print(table)


# ------------------------------------------------------------------- verify


def run_verify(args: argparse.Namespace, console: Console) -> int:
    model, inputs = model_and_inputs(args, args.device)
    recipe = recipe_with_masks(args.recipe, masks_from_args(args, model))
    ghosted = compile_model(args, model, inputs, recipe)
    console.print(f"[bold]{escape(args.model)}[/] on {args.device}, input {describe_inputs(inputs)}: "
                  f"{_coverage(ghosted)}")
    loss = forward_backward(ghosted, train_inputs(ghosted, inputs, num_classes=args.num_classes, seed=args.seed))
    console.print(f"forward + backward through the ghosted model: loss {_number(loss)}")
    clean = deghost(ghosted)
    report = verify(model, clean, inputs, ghosted=ghosted)
    console.print(str(report), markup=False)
    if args.device == "meta":
        console.print("(numeric checks skipped on the meta device: structure only)")
    sparsity = "" if args.device == "meta" else f", {weight_sparsity(clean):.1%} of its conv/linear weights zero"
    console.print(f"[green]verified[/]: the de-ghosted model is a {type(model).__name__} again{sparsity}")
    return 0


def forward_backward(model: nn.Module, inputs: tuple) -> torch.Tensor:
    """One train-mode step's loss (a detection model's loss dict, summed), backpropagated."""
    model.train()
    loss = scalar_loss(model(*inputs))
    loss.backward()
    return loss.detach()


def _coverage(ghosted: nn.Module) -> str:
    manifest = manifest_of(ghosted)
    s = manifest.summary()
    return (
        (f"compiled {', '.join(s['submodules'])}: " if s["submodules"] else "")
        + f"{s['convs_covered']}/{s['convs_found']} convs covered, {s['activations_swapped']} activations swapped, "
        f"{s['weights_masked']} weights masked; ghosts: {manifest.ghost_cost()}"
    )


def _number(t: torch.Tensor) -> str:
    return "(meta: no value)" if t.is_meta else f"{t.item():.4f}"


# ------------------------------------------------------------------- export


def run_export(args: argparse.Namespace, console: Console) -> int:
    model, inputs = model_and_inputs(args, "cpu")
    masks = masks_from_args(args, model)
    target: nn.Module = model
    if masks is not None:  # masks are baked in by de-ghosting a masks-only compile
        target = deghost(compile_model(args, model, inputs, {"masks": masks}))
    sparse = args.sparse is not False  # sparse unless --dense: export_onnx stores only mostly-zero weights sparse
    from surgery.compiler.export import export_onnx  # onnx loads only when a command exports

    try:
        info = export_onnx(target, inputs, args.output, sparse=sparse, opset=args.opset,
                                   dynamic_batch=task_of(args.model).dynamic_batch,
                                   preprocessing=export_preprocessing(args, console))
    except ExportError as error:
        raise ExportError(f"{error}{_unexportable_part(args, model)}") from error
    console.print(str(info), markup=False)
    return 0


def export_preprocessing(args: argparse.Namespace, console: Console) -> Preprocessing | None:
    """``--preprocessing FILE``, else the run record beside ``--weights`` (a run's model.safetensors) when it has
    one: the exported file then says how to feed it, as the run's own export does."""
    if args.preprocessing:
        return Preprocessing.from_file(args.preprocessing)
    beside = RunFiles(Path(args.weights).parent).result if args.weights else None
    if beside is None or not beside.is_file():
        return None
    try:
        found = Preprocessing.from_file(beside)
    except ExportError:  # a record without preprocessing (an older run): export as before
        return None
    console.print(f"preprocessing from {escape(str(beside))}: {escape(found.summary())}")
    return found


def _unexportable_part(args: argparse.Namespace, model: nn.Module) -> str:
    """Where torch.onnx failed, for a model compiled in parts: outside them, since each compiled part
    traces with torch.fx into the static graph the exporter needs."""
    parts = submodule_of(args)
    if not parts:
        return ""
    outside = [name for name, _ in model.named_children() if not within(name + ".", parts)]
    return (f"\nThe part torch.onnx cannot export lies outside {', '.join(parts)}: {', '.join(outside)} and "
            f"{type(model).__name__}'s own forward (what torch.fx cannot trace either). The model itself is "
            "fine: it runs in PyTorch as it is.")


# --------------------------------------------------------------- train / run / demo


def run_train(args: argparse.Namespace, console: Console) -> int:
    from surgery.train.config import RunConfig

    if args.masks and (args.method or args.sparsity is not None):
        raise ConfigError("give --masks FILE or --method / --sparsity, not both: a mask file is already a mask.")
    return _run_pipeline(RunConfig.from_dict({"name": _model_slug(args.model)}), args, console)


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--option '{text}' is not of the form KEY=VALUE, e.g. --option rounds=3.")
    return key.strip(), yaml.safe_load(value)


def _kinds(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


# Every flag that sets a run-config field: (argparse dest, dotted config field, converter). A flag left
# unset (None, False, []) or absent from the command sets nothing, so the config's own value stands;
# `surgery train / run / demo` and `surgery prune`'s training methods all read flags through this table.
FLAG_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("model", "model.spec", str),
    ("num_classes", "model.num_classes", int),
    ("weights", "model.weights", str),
    ("leaf", "model.leaf_modules", list),
    ("data", "data.dataset", str),
    ("data_root", "data.root", str),
    ("download", "data.download", bool),
    ("image_size", "data.image_size", int),
    ("val_split", "data.val_split", float),
    ("batch_size", "data.batch_size", int),
    ("masks", "mask.file", str),
    ("partial_masks", "mask.partial", bool),
    ("method", "mask.method", str),
    ("sparsity", "mask.sparsity", float),
    ("scope", "mask.scope", str),
    ("distribution", "mask.distribution", str),
    ("dense_first", "mask.dense_first", bool),
    ("dense_last", "mask.dense_last", bool),
    ("prunable", "mask.prunable", _kinds),
    ("exclude", "mask.exclude", list),
    ("allow_empty_layers", "mask.allow_empty_layers", bool),
    ("batches", "mask.batches", int),
    ("options", "mask.options", lambda texts: dict(_option(t) for t in texts)),
    ("recipe", "recipe", str),
    ("lrsi", "lrsi.enabled", bool),
    ("no_lrsi", "lrsi.enabled", operator.not_),
    ("lrsi_iterations", "lrsi.iterations", int),
    ("no_ghost_skip", "recipe.ghost_skip", lambda _: None),
    ("no_pswish", "recipe.soft_activation", lambda _: None),
    ("label_smoothing", "label_smoothing.start", float),
    ("optimizer", "optimizer.name", str),
    ("lr", "optimizer.lr", float),
    ("lr_schedule", "lr_schedule.kind", str),
    ("epochs", "train.epochs", int),
    ("seed", "train.seed", int),
    ("device", "train.device", str),
    ("amp", "train.amp", str),
    ("compile", "train.compile", bool),
    ("no_progress", "train.progress", operator.not_),
    ("name", "name", str),
    ("out", "output", str),
)


def flag_fields(args: argparse.Namespace) -> dict[str, Any]:
    """``{dotted field: value}`` for every flag of FLAG_FIELDS the user set."""
    fields = {}
    for dest, field, convert in FLAG_FIELDS:
        value = getattr(args, dest, None)
        if value is not None and value is not False and value != []:
            fields[field] = convert(value)
    return fields


def configured(base, args: argparse.Namespace):
    """``base`` (a RunConfig) with the command's flags applied, then its ``--set`` overrides."""
    from surgery.train.config import parse_overrides

    return base.with_fields({**flag_fields(args), **parse_overrides(getattr(args, "overrides", []))})


def run_prune(args: argparse.Namespace, console: Console) -> int:
    from surgery.pruning import METHODS
    from surgery.pruning.registry import method
    from surgery.train.config import RunConfig

    if args.list:
        method("random")  # loads every finder
        print_methods(console, METHODS)
        return 0
    if not args.model or args.sparsity is None:
        raise ConfigError("surgery prune needs MODEL and --sparsity S (e.g. --method snip --sparsity 0.9); "
                          "`surgery prune --list` lists the methods.")
    found = method(args.method)
    base = RunConfig.from_dict({"name": f"prune-{_model_slug(args.model)}-{args.method}", "recipe": "none",
                                "export": {"verify": False, "onnx": False}})
    config = configured(base, args)
    out = Path(args.output or f"{_model_slug(args.model)}-{args.method}-{args.sparsity:g}.safetensors")
    if found.training:
        result = _prune_by_training(config, args, out, console)
    else:
        result = _prune_oneshot(config, args, found, out)
    print_mask_table(console, result, out)
    return 0


def _model_slug(spec: str) -> str:
    return spec.rsplit(":", 1)[-1].replace("/", "_").removesuffix(".py")


def _prune_oneshot(config, args: argparse.Namespace, found, out: Path):
    """Score the model once (on ``mask.batches`` batches of ``--data`` when the method needs data)."""
    from surgery.apps.prune import prune_oneshot
    from surgery.train.data import make_loader
    from surgery.train.masking import training_batches
    from surgery.train.pipeline import load_data

    m, d, seed = config.mask, config.data, config.train.seed
    batches, num_classes, size = None, config.model.num_classes, args.input_size
    parts = submodule_of(args)
    if found.data and parts:
        raise ConfigError(f"mask method '{m.method}' scores weights by a classification loss on labelled images, "
                          f"which {', '.join(parts)} of {config.model.spec} does not compute: use random, magnitude "
                          "or synflow (data-free) to prune a model compiled in parts.")
    if args.data:
        dataset = load_data(config, hold_out=False)
        num_classes = num_classes or dataset.num_classes
        size = size or (dataset.image_size,)
        if found.data:
            batches = training_batches(make_loader(dataset, "train", d.batch_size, train=True, seed=seed, workers=0),
                                       m.batches)
    elif found.data:
        raise ConfigError(f"mask method '{m.method}' scores weights with gradients on real data: give --data DATASET "
                          "(e.g. --data cifar10-jpeg:PATH or --data digits).")
    if found.trained and not config.model.weights and not args.allow_untrained:
        raise ConfigError(f"mask method '{m.method}' scores trained weights, but no --weights were given: it would "
                          "score the random initialization. Give --weights FILE (the trained model's state_dict), or "
                          "--allow-untrained if a mask of the initialization is what you mean.")
    torch.manual_seed(seed)
    size = input_size(config.model.spec, size)
    model = build_model(config.model.spec, num_classes, input_size=size)
    if config.model.weights:
        load_weights(model, config.model.weights)
    options = {path: dict(m.options) for path in parts or [""]}  # '' is the whole model
    if found.input_shape:  # SynFlow's made-up input has the shape of what each part gets (a --option wins)
        options = {path: {"input_shape": shape, **m.options}
                   for path, shape in _input_shapes(model, config.model.spec, size, parts).items()}
    return prune_oneshot(model, m.method, m.sparsity, out, spec=config.model.spec, batches=batches, seed=seed,
                         parts=options, scope=m.scope, distribution=m.distribution, prunable=m.prunable,
                         dense_first=m.dense_first, dense_last=m.dense_last, exclude=m.exclude,
                         allow_empty_layers=m.allow_empty_layers)


def _input_shapes(model: nn.Module, spec: str, size, parts: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``{part: one example's shape, without its batch}`` for data-free SynFlow ('' is the whole model): what
    the whole model passes each part (RAFT's encoders get the image pair stacked, a detector's backbone the
    resized image batch)."""
    from surgery.compiler.submodules import capture_calls

    inputs = example_inputs(spec, size or (default_input_size(model, spec),), batch=1, channels=input_channels(model))
    if not parts:
        return {"": tuple(inputs[0].shape[1:])}
    calls = capture_calls(model, train_inputs(model, inputs), parts)
    return {path: tuple(calls[path].args[0].shape[1:]) for path in parts}


def _prune_by_training(config, args: argparse.Namespace, out: Path, console: Console):
    """A training method's mask: a plain training run (no ghosts, no export) ends in it."""
    from surgery.apps.prune import prune_by_training

    if not args.data:
        raise ConfigError(f"mask method '{config.mask.method}' trains the model: give --data DATASET (e.g. --data digits).")
    return prune_by_training(config, out, console)


def print_methods(console: Console, methods) -> None:
    table = Table(title="mask methods", title_justify="left")
    for column in ("method", "needs", "budget", "what it does"):
        table.add_column(column, overflow="fold")  # paths stay whole, wrapped
    for name, m in sorted(methods.items()):
        needs = "training" if m.training else "data" if m.data else "trained weights" if m.trained else "nothing"
        table.add_row(name, needs, f"{m.scope}" + (f", {m.distribution}" if m.distribution != "uniform" else ""), m.about)
    console.print(table)


def print_mask_table(console: Console, result, out: Path) -> None:
    from surgery.apps.prune import layer_rows, metadata_summary

    table = Table(title=f"{out}: {metadata_summary(result.metadata)}", title_justify="left")
    for column, justify in (("layer", "left"), ("shape", "left"), ("kept", "right"), ("of", "right"), ("sparsity", "right")):
        table.add_column(column, justify=justify)
    rows = layer_rows(result)
    for name, shape, kept, total, sparsity in rows:
        table.add_row(name, shape, f"{kept:,}", f"{total:,}", f"{sparsity:.1%}")
    kept = sum(r[2] for r in rows)
    total = sum(r[3] for r in rows)
    table.add_row("all", "", f"{kept:,}", f"{total:,}", f"{1 - kept / max(total, 1):.2%}", style="bold")
    console.print(table)
    if result.run_dir is not None:
        files = RunFiles(result.run_dir)
        written = (files.summary, files.metrics, files.rounds_csv, files.start_weights, files.result)
        console.print(f"training run: {files.root} ({', '.join(p.name for p in written if p.exists())})")
        if files.start_weights.exists():
            console.print(f"train the mask from its starting weights: surgery run CONFIG --set mask.file={out} "
                          f"--set init.rewind={files.start_weights}")


def run_config(args: argparse.Namespace, console: Console) -> int:
    from surgery.train.config import RunConfig

    return _run_pipeline(RunConfig.from_yaml(args.config), args, console)


def _run_pipeline(config, args: argparse.Namespace, console: Console) -> int:
    """Apply the shared run options, run the pipeline, print where everything went."""
    from surgery.train import pipeline

    config = configured(config, args)
    if _already_complete(config, args, console):
        return 0
    result = pipeline.run(config, resume=args.resume, force=args.force, console=console)
    print_run_summary(console, config, result)
    return 0


def _already_complete(config, args: argparse.Namespace, console: Console) -> bool:
    """``--resume`` of a run whose record says it completed with this config: say where its results are."""
    from surgery.train.record import completed_record

    if args.force and not args.resume:
        raise ConfigError("--force re-runs the verification and export of a completed run: give it with --resume "
                          "(without --resume the run trains from the start anyway).")
    if args.resume is not True or args.force or completed_record(config) is None:
        return False
    files = RunFiles(config.run_dir)
    console.print(f"{escape(config.name)} is already complete: its results are in {files.root} ({files.summary.name}, "
                  f"{files.result.name}); nothing to resume (--force verifies and exports it again).")
    return True


def print_run_summary(console: Console, config, result) -> None:
    """The run's outcome, read from its record (result.json) like the report."""
    from surgery.train.report.story import (
        describe_accuracy,
        describe_ghost_cost,
        describe_ghosts,
        describe_holdings,
        describe_model,
        describe_onnx_size,
        describe_time,
        describe_tweaks,
        describe_verification,
    )

    record, files = result.record, RunFiles(result.run_dir)
    table = Table(title=f"surgery: {escape(config.name)}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", escape(f"{describe_model(record['model'])} on {config.data.dataset}"))
    table.add_row("recipe", escape(config.preset or "passes given as such (recipe mapping or file)"))
    if record.get("ghosts", {}).get("kept"):
        table.add_row("architecture", f"[bold red]{escape(record['architecture'])}[/]")
    if record["accuracy"]["test"] is not None:
        table.add_row("test accuracy", describe_accuracy(record["accuracy"]))
    table.add_row("sparsity", f"{record['sparsity']:.1%} of conv/linear weights are zero")
    held = recorded_holdings(record)
    if held is not None:
        table.add_row("final model", escape(describe_holdings(held)))
    table.add_row("tweaks", escape(describe_tweaks(record["tweaks"])))
    table.add_row("ghosts", escape(describe_ghosts(record["ghosts"], record["training"]["epochs"])))
    if record["ghosts"]["parameters"]:
        table.add_row("ghost cost", describe_ghost_cost(record))
    verification = record["verification"]
    if verification is not None:
        passed = verification["status"] == "passed"
        table.add_row("verification", escape("\n".join(verification["checks"]) if passed
                                             else describe_verification(verification)))
    if record["export"] is not None:
        table.add_row("ONNX", escape(f"{record['export']['path']} ({describe_onnx_size(record['export'])})"))
    table.add_row("report", escape(str(files.summary)))
    table.add_row("record", escape(str(files.result)))
    table.add_row("time", describe_time(record))
    console.print(table)


def run_sweep(args: argparse.Namespace, console: Console) -> int:
    from surgery.errors import SweepError
    from surgery.train import sweeps
    from surgery.train.sweeps.grid import grid_from_options

    if args.report:
        if args.config or args.grid:
            raise SweepError("--report DIR rebuilds an existing sweep's table; give it without CONFIG and --grid.")
        sweeps.report(args.report, paired=args.paired, console=console)
        return 0
    if not args.config:
        raise SweepError("give the base config: surgery sweep CONFIG.yaml --grid FIELD=V1,V2 (or --report DIR).")
    slurm = {"partition": args.slurm_partition, "gpus_per_run": args.slurm_gpus_per_run,
             "time_min": args.slurm_time, "cpus_per_run": args.slurm_cpus_per_run}
    rows = sweeps.sweep(args.config, grid_from_options(args.grid) if args.grid else None, args.seeds, args.jobs,
                        overrides=args.overrides, out=args.out, nproc_per_run=args.nproc_per_run,
                        launcher=args.launcher, slurm=slurm if args.launcher == "slurm" else None,
                        paired=args.paired, dry_run=args.dry_run, console=console)
    if args.dry_run:
        for row in rows:
            console.print(f"{row['status']:>9}  {escape(row['run_dir'])}")
        console.print(f"{len(rows)} runs; nothing was run (--dry-run).")
    return 0


def run_demo(args: argparse.Namespace, console: Console) -> int:
    config = configured(demo.demo_config(), args)
    if _already_complete(config, args, console):
        return 0
    result = demo.run(config, console, resume=args.resume, force=args.force)
    print_run_summary(console, config, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
