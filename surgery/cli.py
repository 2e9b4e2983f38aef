"""The ``surgery`` command: inspect, verify, export, demo.

Each subcommand is one ``run_*`` function over parsed arguments. Every
``SurgeryError`` (a problem with the user's input) becomes its message on stderr
and exit code 2; any other exception keeps its traceback, since it is a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from torch import nn
from torch.utils._pytree import tree_leaves

import surgery
from surgery.compiler import leaf_modules_in
from surgery.errors import ShapePropagationError, SurgeryError
from surgery.ghosts import ghost_parameters
from surgery.graph import deepcopy_module, device_of
from surgery.masks import prunable_weights, save_masks
from surgery.models import build_model, default_input_size, input_channels, load_weights
from surgery.pruning import random_masks
from surgery.recipe import Recipe

EXIT_USER_ERROR = 2
DEFAULT_RECIPE = {"ghost_skip": {"projection": "conv1x1"}, "soft_activation": {"kind": "pswish"}}
MODEL_HELP = "torchvision:NAME, timm:NAME or path/to/file.py:factory (random weights, nothing downloads)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # -h, --version, usage errors: argparse already printed
        return exit.code if isinstance(exit.code, int) else 0
    console = Console(highlight=False, soft_wrap=True)
    try:
        return args.run(args, console) or 0
    except SurgeryError as error:
        print(f"surgery {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


# ------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgery",
        description="Model surgery on torch.fx: ghost skips, PSwish and masks in, sparse verified models out.",
        epilog="Run 'surgery COMMAND -h' for a command's options. Start with: surgery demo",
    )
    parser.add_argument("--version", action="version", version=f"surgery (tost-surgery) {surgery.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_inspect(commands)
    _add_verify(commands)
    _add_export(commands)
    _add_demo(commands)
    return parser


def _command(commands, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--num-classes", type=_positive_int, metavar="N", help="classifier outputs (default: the model's)")
    p.add_argument(
        "--input-size", type=_positive_int, metavar="S", help="input images are S x S (default: the model's, else 224)"
    )
    p.add_argument(
        "--leaf", nargs="+", action="extend", default=[], metavar="NAME",
        help="module path or class name to keep opaque when tracing (repeatable)",
    )


def _add_mask_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--masks", metavar="FILE", help="mask file (.safetensors), or a .pt state_dict whose zeros mark pruned weights"
    )
    group.add_argument(
        "--sparsity", type=float, metavar="S", help="random masks pruning the fraction S of every conv/linear weight"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks and inputs (default 0)")


def _add_inspect(commands) -> None:
    p = _command(
        commands, "inspect",
        "Trace a model and show what the recipe reaches: convs, activations, maskable weights, leaves.",
        "surgery inspect timm:resnet50 --recipe recipe.yaml --json",
    )
    _add_model_arguments(p)
    p.add_argument("--recipe", metavar="YAML", help="recipe file (default: conv1x1 ghost skips + PSwish)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run_inspect)


def _add_verify(commands) -> None:
    p = _command(
        commands, "verify",
        "Round trip one model: compile, one forward+backward, de-ghost, verify against the original.",
        "surgery verify torchvision:resnet18 --sparsity 0.9 --input-size 64",
    )
    _add_model_arguments(p)
    p.add_argument("--recipe", metavar="YAML", help="recipe file (default: conv1x1 ghost skips + PSwish)")
    _add_mask_arguments(p)
    p.add_argument("--device", choices=("cpu", "meta"), default="cpu", help="meta: structure only, no numeric checks")
    p.set_defaults(run=run_verify)


def _add_export(commands) -> None:
    p = _command(
        commands, "export",
        "Export a model (with its trained weights and masks) to ONNX, checked against onnxruntime.",
        "surgery export torchvision:resnet18 --num-classes 10 --weights clean.safetensors --sparse -o resnet18.onnx",
    )
    _add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the ONNX model")
    p.add_argument("--weights", metavar="FILE", help="state_dict (.safetensors, .pt) of the plain model, loaded strictly")
    _add_mask_arguments(p)
    sparse = p.add_mutually_exclusive_group()
    sparse.add_argument(
        "--sparse", dest="sparse", action="store_true", default=None,
        help="store mostly-zero weights as sparse initializers (default when masks are given)",
    )
    sparse.add_argument("--dense", dest="sparse", action="store_false", help="store every weight dense")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.set_defaults(run=run_export)


def _add_demo(commands) -> None:
    p = _command(
        commands, "demo",
        "Offline end to end in well under a minute: ResNet-18, 90%% random masks, ToST recipe, "
        "a short training run moving alpha 1->0 and beta up, de-ghost, verify, sparse ONNX.",
        "surgery demo --out runs/demo",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="where masks and ONNX go (default runs/demo)")
    steps = DemoConfig.steps
    p.add_argument("--steps", type=_positive_int, default=steps, help=f"training steps (default {steps})")
    p.set_defaults(run=run_demo)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


# ----------------------------------------------------------- shared helpers


def model_and_inputs(args: argparse.Namespace, device: str, batch: int = 2) -> tuple[nn.Module, torch.Tensor]:
    """The model ``args.model`` built on ``device`` (seeded init), and a seeded random image batch that fits it."""
    torch.manual_seed(getattr(args, "seed", 0))
    with torch.device(device):
        model = build_model(args.model, args.num_classes)
    if getattr(args, "weights", None):
        load_weights(model, args.weights)
    size = args.input_size or default_input_size(model, args.model)
    generator = torch.Generator().manual_seed(getattr(args, "seed", 0))
    x = torch.randn(batch, input_channels(model), size, size, generator=generator)
    return model, x


def recipe_with_masks(recipe: str | None, masks: Any = None) -> Recipe:
    """The recipe file (default: ``DEFAULT_RECIPE``), its masks section replaced by ``masks`` if given."""
    if masks is None:
        return Recipe.coerce(recipe or DEFAULT_RECIPE)
    sections = Recipe.coerce(recipe).to_dict() if recipe else dict(DEFAULT_RECIPE)
    sections["masks"] = masks
    return Recipe.from_dict(sections)


def masks_from_args(args: argparse.Namespace, model: nn.Module) -> Any:
    """``--masks FILE`` as a path, ``--sparsity S`` as random masks, else None."""
    if args.masks:
        return args.masks
    if args.sparsity is not None:
        return random_masks(model, args.sparsity, seed=args.seed)
    return None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over the prunable (conv, linear) weights."""
    weights = [w.detach() for w in prunable_weights(model).values()]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def scalar_loss(output: Any) -> torch.Tensor:
    """A loss that touches every floating output tensor (models may return tuples or dicts)."""
    return sum(t.float().mean() for t in tree_leaves(output) if torch.is_tensor(t) and t.is_floating_point())


# ------------------------------------------------------------------ inspect


def run_inspect(args: argparse.Namespace, console: Console) -> int:
    model, x, ghosted = compile_for_inspection(args)
    report = inspection_report(args.model, model, ghosted, x)
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
    except ShapePropagationError:  # a leaf that branches on values cannot run on meta
        return _build_and_compile(args, "cpu")
    except SurgeryError:
        sys.stderr.write(held.getvalue())
        raise
    except Exception:  # an op, an initializer or a data-dependent branch without a meta kernel
        return _build_and_compile(args, "cpu")
    sys.stderr.write(held.getvalue())
    return result


def _build_and_compile(args: argparse.Namespace, device: str):
    model, x = model_and_inputs(args, device)
    ghosted = surgery.compile(model, x, recipe_with_masks(args.recipe), leaf_modules=args.leaf)
    return model, x, ghosted


def inspection_report(spec: str, model: nn.Module, ghosted: torch.fx.GraphModule, x: torch.Tensor) -> dict[str, Any]:
    manifest = surgery.manifest_of(ghosted)
    summary = manifest.summary()
    maskable = prunable_weights(model)
    return {
        "model": spec,
        "class": summary.pop("model"),
        "input_shape": list(x.shape),
        "device": str(device_of(model)),
        "parameters": parameter_count(model),
        "ghost_parameters": sum(p.numel() for p in ghost_parameters(ghosted)),
        **{k: v for k, v in summary.items() if k != "deghosted"},
        "activations_by_original": dict(Counter(a.original for a in manifest.activations)),
        "activations_unreached": sum(1 for u in manifest.unreached if u.what == "activation"),
        "maskable_weights": len(maskable),
        "maskable_parameters": sum(w.numel() for w in maskable.values()),
        "leaf_modules": [{"module": path, "class": cls} for path, cls in leaf_modules_in(ghosted)],
        "unreached": [
            {"module": u.module, "class": u.cls, "inside": u.inside, "what": u.what} for u in manifest.unreached
        ],
        "skipped": [{"site": site, "why": why} for site, why in manifest.skipped],
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


def _inspection_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    projections = ", ".join(f"{n} {p}" for p, n in report["projections"].items()) or "none"
    originals = ", ".join(f"{n} x {o}" for o, n in report["activations_by_original"].items()) or "none"
    rows = [
        ("input", " x ".join(map(str, report["input_shape"])) + f" on {report['device']}"),
        ("passes", ", ".join(report["passes"]) or "none"),
        ("parameters", f"{report['parameters']:,} (+{report['ghost_parameters']:,} in ghosts, training only)"),
        ("convs covered", f"{report['convs_covered']} of {report['convs_found']} found"),
        ("skip projections", projections),
        ("activations swapped", f"{report['activations_swapped']} ({originals})"),
        ("weights maskable", f"{report['maskable_weights']} ({report['maskable_parameters']:,} parameters)"),
        ("weights masked", str(report["weights_masked"])),
        ("leaf modules", str(len(report["leaf_modules"]))),
        ("out of reach in leaves", f"{report['convs_unreached']} convs, {report['activations_unreached']} activations"),
    ]
    if report["linears_covered"]:
        rows.insert(4, ("linears covered", str(report["linears_covered"])))
    return rows


def _print_listing(console: Console, title: str, rows: list[dict], columns: tuple[str, ...], limit: int = 20) -> None:
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows[:limit]:
        table.add_row(*(str(row[c]) for c in columns))
    if len(rows) > limit:
        table.caption = f"... and {len(rows) - limit} more (--json lists all)"
    console.print(table)


# ------------------------------------------------------------------- verify


def run_verify(args: argparse.Namespace, console: Console) -> int:
    model, x = model_and_inputs(args, args.device)
    recipe = recipe_with_masks(args.recipe, masks_from_args(args, model))
    ghosted = surgery.compile(model, x, recipe, leaf_modules=args.leaf)
    console.print(f"[bold]{escape(args.model)}[/] on {args.device}, input {tuple(x.shape)}: {_coverage(ghosted)}")
    loss = forward_backward(ghosted, x)
    console.print(f"forward + backward through the ghosted model: loss {_number(loss)}")
    clean = surgery.deghost(ghosted)
    report = surgery.verify(model, clean, x, ghosted=ghosted)
    console.print(str(report), markup=False)
    if args.device == "meta":
        console.print("(numeric checks skipped on the meta device: structure only)")
    sparsity = "" if args.device == "meta" else f", {weight_sparsity(clean):.1%} of its conv/linear weights zero"
    console.print(f"[green]verified[/]: the de-ghosted model is a {type(model).__name__} again{sparsity}")
    return 0


def forward_backward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.train()
    loss = scalar_loss(model(x.to(device_of(model))))
    loss.backward()
    return loss.detach()


def _coverage(ghosted: torch.fx.GraphModule) -> str:
    s = surgery.manifest_of(ghosted).summary()
    return (
        f"{s['convs_covered']}/{s['convs_found']} convs covered, {s['activations_swapped']} activations swapped, "
        f"{s['weights_masked']} weights masked"
    )


def _number(t: torch.Tensor) -> str:
    return "(meta: no value)" if t.is_meta else f"{t.item():.4f}"


# ------------------------------------------------------------------- export


def run_export(args: argparse.Namespace, console: Console) -> int:
    model, x = model_and_inputs(args, "cpu")
    masks = masks_from_args(args, model)
    target: nn.Module = model
    if masks is not None:  # masks are baked in by de-ghosting a masks-only compile
        target = surgery.deghost(surgery.compile(model, x, {"masks": masks}, leaf_modules=args.leaf))
    sparse = args.sparse if args.sparse is not None else masks is not None
    info = surgery.export_onnx(target, x, args.output, sparse=sparse, opset=args.opset)
    console.print(str(info), markup=False)
    return 0


# --------------------------------------------------------------------- demo


@dataclass
class DemoConfig:
    """The embedded demo job; stages read only this, so a real dataset replaces ``demo_batch`` alone."""

    model: str = "torchvision:resnet18"
    num_classes: int = 10
    input_size: int = 32
    batch_size: int = 8
    sparsity: float = 0.9
    steps: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    beta_end: float = 50.0  # PSwish's beta at the last step (ReLU in the limit)
    seed: int = 0


def run_demo(args: argparse.Namespace, console: Console) -> int:
    config = DemoConfig(steps=args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    with _demo_progress(console) as progress:
        model, ghosted, (x, y) = prepare_demo(config, out, progress)
        losses = train_demo(ghosted, x, y, config, progress)
        clean, report = finish_demo(model, ghosted, x, progress)
        info = export_demo(clean, x, out, progress)
    result = DemoResult(losses, batch_loss(clean, x, y), weight_sparsity(clean), info, time.perf_counter() - start)
    console.print(str(report), markup=False)
    print_demo_summary(console, config, result, out)
    return 0


@dataclass
class DemoResult:
    losses: list[float]
    deghosted_loss: float
    sparsity: float
    export: Any  # surgery.ExportInfo
    seconds: float


def demo_batch(config: DemoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch of images and labels: the whole 'dataset' of the offline demo."""
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.randn(config.batch_size, 3, config.input_size, config.input_size, generator=generator)
    y = torch.randint(0, config.num_classes, (config.batch_size,), generator=generator)
    return x, y


def prepare_demo(config: DemoConfig, out: Path, progress: Progress):
    """Build the model, draw and save random masks, compile with the full ToST recipe."""
    task = progress.add_task("build, mask, compile", total=1)
    model = build_model(config.model, config.num_classes)
    masks = random_masks(model, config.sparsity, seed=config.seed)
    save_masks(masks, out / "masks.safetensors", method="random", model=config.model, seed=config.seed)
    x, y = demo_batch(config)
    ghosted = surgery.compile(model, x, {**DEFAULT_RECIPE, "masks": masks})
    progress.update(task, completed=1)
    return model, ghosted, (x, y)


def train_demo(ghosted: nn.Module, x: torch.Tensor, y: torch.Tensor, config: DemoConfig, progress: Progress):
    """SGD on the batch while alpha goes 1 -> 0 and beta 1 -> beta_end, linearly; returns the losses."""
    optimizer = torch.optim.SGD(
        ghosted.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    task = progress.add_task("train (alpha 1->0, beta up)", total=config.steps)
    ghosted.train()
    losses = []
    for step in range(config.steps):
        surgery.set_ghost_strength(ghosted, **ghost_strength(step, config))
        loss = F.cross_entropy(ghosted(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        progress.update(task, advance=1, loss=losses[-1])
    return losses


def ghost_strength(step: int, config: DemoConfig) -> dict[str, float]:
    """Linear schedules: alpha reaches 0 and beta reaches ``beta_end`` at the last step."""
    t = step / max(config.steps - 1, 1)
    return {"alpha": 1.0 - t, "beta": 1.0 + t * (config.beta_end - 1.0)}


def finish_demo(model: nn.Module, ghosted: torch.fx.GraphModule, x: torch.Tensor, progress: Progress):
    """De-ghost (masks baked in) and verify the result against the original ResNet-18."""
    task = progress.add_task("de-ghost, verify", total=1)
    clean = surgery.deghost(ghosted)
    report = surgery.verify(model, clean, x, ghosted=ghosted)
    progress.update(task, completed=1)
    return clean, report


def export_demo(clean: nn.Module, x: torch.Tensor, out: Path, progress: Progress):
    task = progress.add_task("export sparse ONNX", total=1)
    info = surgery.export_onnx(clean, x[:2], out / "model.onnx", sparse=True)
    progress.update(task, completed=1)
    return info


@torch.no_grad()
def batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Cross-entropy with batch statistics (train-mode norms), on a copy so no running stat moves."""
    probe = deepcopy_module(model).train()
    return F.cross_entropy(probe(x), y).item()


def print_demo_summary(console: Console, config: DemoConfig, result: DemoResult, out: Path) -> None:
    info = result.export
    table = Table(title="surgery demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    size, losses = config.input_size, result.losses
    table.add_row("model", f"{config.model}, {config.num_classes} classes, {size}x{size} inputs")
    table.add_row("training loss", f"{losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
    table.add_row("after de-ghosting", f"loss {result.deghosted_loss:.4f} on the same batch (ghosts gone)")
    table.add_row("sparsity", f"{result.sparsity:.1%} of conv/linear weights are zero (target {config.sparsity:.0%})")
    sizes = f"{info.sparse_bytes / 1e6:.2f} MB sparse, {info.dense_bytes / 1e6:.2f} MB dense"
    table.add_row("ONNX size", f"{sizes} ({info.size_ratio:.0%} of dense)")
    table.add_row("ONNX parity", f"max |diff| vs PyTorch {info.max_abs_error:.2g} (onnxruntime)")
    table.add_row("written to", str(out))
    table.add_row("files", ", ".join(sorted(p.name for p in out.iterdir())))
    table.add_row("time", f"{result.seconds:.1f} s")
    console.print(table)


class LossColumn(ProgressColumn):
    """The latest loss of a task that reports one."""

    def render(self, task) -> Text:
        loss = task.fields.get("loss")
        return Text("" if loss is None else f"loss {loss:.3f}")


def _demo_progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        LossColumn(),
        TimeElapsedColumn(),
        console=console,
    )


if __name__ == "__main__":
    sys.exit(main())
