"""``surgery run``: a versioned config through the whole pipeline."""

from __future__ import annotations

import argparse

from rich.console import Console

from surgery.apps.cli.arguments import add_run_options, command_parser
from surgery.apps.cli.flags import add_flags
from surgery.apps.cli.runs import run_pipeline
from surgery.train.config import RunConfig


def add_parser(commands) -> None:
    p = command_parser(
        commands, "run",
        "Run a versioned config: model -> mask -> compile -> train -> de-ghost -> verify -> ONNX -> report.",
        "surgery run examples/configs/tost-cifar10.yaml --download --set train.epochs=30 --set lr_schedule.milestones=[15,22]",
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="a run config (see examples/configs/)")
    add_flags(p, ("leaf",))
    add_run_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    return run_pipeline(RunConfig.from_yaml(args.config), args, console)
