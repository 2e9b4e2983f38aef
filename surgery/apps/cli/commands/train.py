"""``surgery train``: a sparse model trained with ToST's tweaks, from flags alone (no config file)."""

from __future__ import annotations

import argparse

from rich.console import Console

from surgery.apps.cli.arguments import add_run_options, command_parser
from surgery.apps.cli.flags import (
    DATA_FLAGS,
    FINDER_FLAGS,
    FLAGS,
    MODEL_HELP,
    RECIPE_FLAGS,
    TRAINING_FLAGS,
    add_flags,
)
from surgery.apps.cli.models import model_slug
from surgery.apps.cli.runs import run_pipeline
from surgery.errors import ConfigError
from surgery.train.config import MaskConfig, RunConfig


def add_parser(commands) -> None:
    p = command_parser(
        commands, "train",
        "Train a sparse model with ToST's four tweaks (ghost skips and PSwish that fade, then leave before the first "
        "LR decay; LRsI; label smoothing 0.1): mask -> compile -> LRsI -> train -> de-ghost -> verify -> sparse ONNX "
        "-> report. --recipe tost-official trains what the authors' released code runs; --recipe none is the baseline.",
        "surgery train cifar:resnet18 --data cifar10-jpeg:../shared/data/cifar10-jpeg.tar.gz --sparsity 0.9 --epochs 30",
    )
    add_flags(p, ("model",), model={"help": "cifar:NAME, " + MODEL_HELP})
    add_flags(p, (*DATA_FLAGS, "masks", "partial_masks"))
    add_flags(p, FINDER_FLAGS, sparsity={"help": f"{FLAGS['sparsity'].help} (default {MaskConfig.sparsity})"})
    add_flags(p, RECIPE_FLAGS)
    add_flags(p, ("leaf",))  # model.leaf_modules; no --submodule: the pipeline trains the whole model
    add_flags(p, TRAINING_FLAGS)
    add_run_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    if args.masks and (args.method or args.sparsity is not None):
        raise ConfigError("give --masks FILE or --method / --sparsity, not both: a mask file is already a mask.")
    return run_pipeline(RunConfig.from_dict({"name": model_slug(args.model)}), args, console)
