"""What the paper-workflow examples share: a paper's config from configs/, scaled to a quick local run.

Every example loads the ``surgery run`` config of its paper (the full-size recipe: model,
data, epochs, schedules, mask method) and, unless told otherwise, runs it on
scikit-learn's digits with a CIFAR ResNet-20 for a few epochs on the CPU. The method,
schedules and initializers stay the paper's; only the scale changes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from surgery.train import RunConfig

CONFIGS = Path(__file__).resolve().parent / "configs"


def parser(description: str, epochs: int = 6, sparsity: float | None = None) -> argparse.ArgumentParser:
    """The arguments every example takes (``--sparsity`` when given a default); an example adds its own
    and calls ``parse_args``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if sparsity is not None:
        parser.add_argument("--sparsity", type=float, default=sparsity, help=f"target sparsity (default {sparsity})")
    parser.add_argument("--model", default="cifar:resnet20", help="any model spec (default cifar:resnet20)")
    parser.add_argument("--data", default="digits", help="digits (default), synthetic, cifar10-jpeg:PATH, ...")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=epochs, help=f"epochs of each training run (default {epochs})")
    parser.add_argument("--full", action="store_true", help="the paper's full-size run: the config as written")
    parser.add_argument("--out", type=Path, default=Path("runs/examples"))
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export of each run")
    return parser


def scaled(config: RunConfig, args: argparse.Namespace, name: str) -> RunConfig:
    """``config`` at the scale ``args`` ask for, at ``--sparsity`` if the example takes it; schedules keep
    their shape (fractions of the run)."""
    out = [f"name={name}", f"output={args.out / name}", "train.tensorboard=false"]
    if getattr(args, "sparsity", None) is not None:
        out.append(f"mask.sparsity={args.sparsity}")
    if args.no_export:
        out.append("export.onnx=false")
    if args.full:
        return config.with_overrides(out)
    epochs = args.epochs
    scale = epochs / config.train.epochs
    out += [f"model.spec={args.model}", f"data.dataset={args.data}", f"data.image_size={args.image_size}",
            f"train.epochs={epochs}", "train.checkpoint_every=0", "lrsi.iterations=10"]
    if config.lr_schedule.kind == "step" and config.lr_schedule.milestones is not None:  # None follows the epochs
        milestones = sorted({m2 for m in config.lr_schedule.milestones if 0 < (m2 := round(m * scale)) < epochs})
        out.append(f"lr_schedule.milestones={milestones}")
    if isinstance(config.ghosts.remove_at, int):
        out.append(f"ghosts.remove_at={max(1, min(epochs, round(config.ghosts.remove_at * scale)))}")
    if config.label_smoothing.epochs:
        out.append(f"label_smoothing.epochs={max(1, round(config.label_smoothing.epochs * scale))}")
    if config.mask.epochs:
        out.append(f"mask.epochs={max(1, round(config.mask.epochs * scale))}")
    return config.with_overrides(out)


def load(name: str) -> RunConfig:
    return RunConfig.from_yaml(CONFIGS / f"{name}.yaml")


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"
