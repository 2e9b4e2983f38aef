"""``surgery demo``: the embedded default job (``surgery.apps.demo``), offline on CPU."""

from __future__ import annotations

import argparse

from rich.console import Console

from surgery.apps import demo
from surgery.apps.cli.arguments import add_overrides, add_resume_arguments, command_parser
from surgery.apps.cli.flags import add_flags, configured
from surgery.apps.cli.render import print_run_summary
from surgery.apps.cli.runs import already_complete


def add_parser(commands) -> None:
    p = command_parser(
        commands, "demo",
        "The embedded default job, offline on CPU in about two minutes: a CIFAR ResNet-20 on scikit-learn's digits, a "
        "random 90% mask, full ToST, trained, de-ghosted, verified, exported to sparse ONNX, with a report.",
        "surgery demo --out runs/demo\n  surgery demo --set mask.method=synflow --set lrsi.enabled=false",
    )
    add_flags(p, ("out", "epochs", "no_progress"), out={"default": "runs/demo", "help": "run directory (default runs/demo)"},
              epochs={"help": f"training epochs (default {demo.EPOCHS})"})
    add_overrides(p, "override a field of the demo's config, e.g. --set mask.sparsity=0.95 (repeatable)")
    add_resume_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    config = configured(demo.demo_config(), args)
    if already_complete(config, args, console):
        return 0
    result = demo.run(config, console, resume=args.resume, force=args.force)
    print_run_summary(console, config, result)
    return 0
