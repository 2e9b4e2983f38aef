"""What the commands that run the pipeline share (train, run, demo): their flags applied to the config, a
completed run left as it is, the outcome printed."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from surgery.apps.cli.flags import configured
from surgery.apps.cli.render import print_run_summary
from surgery.errors import ConfigError
from surgery.train import pipeline
from surgery.train.config import RunConfig
from surgery.train.record import completed_record
from surgery.train.run_files import RunFiles


def run_pipeline(config: RunConfig, args: argparse.Namespace, console: Console) -> int:
    """Apply the shared run options, run the pipeline, print where everything went."""
    config = configured(config, args)
    if already_complete(config, args, console):
        return 0
    result = pipeline.run(config, resume=args.resume, force=args.force, console=console)
    print_run_summary(console, config, result)
    return 0


def already_complete(config: RunConfig, args: argparse.Namespace, console: Console) -> bool:
    """``--resume`` of a run whose record says it completed with this config: say where its results are."""
    if args.force and not args.resume:
        raise ConfigError("--force re-runs the verification and export of a completed run: give it with --resume "
                          "(without --resume the run trains from the start anyway).")
    if args.resume is not True or args.force or completed_record(config) is None:
        return False
    files = RunFiles(config.run_dir)
    console.print(f"{escape(config.name)} is already complete: its results are in {files.root} ({files.summary.name}, "
                  f"{files.result.name}); nothing to resume (--force verifies and exports it again).")
    return True
