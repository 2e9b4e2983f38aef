"""Every example command a help text shows is one the command accepts, naming things that exist."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest
import torch

from surgery.apps.cli import build_parser, configured
from surgery.zoo.models import build_model
from surgery.pruning.registry import method
from surgery.train.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def parsers() -> dict[str, argparse.ArgumentParser]:
    """The top-level parser under "" and each subcommand's parser under its name."""
    top = build_parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {"": top, **commands.choices}


def examples() -> list[tuple[str, str]]:
    """(command, example) for every epilog line that starts with 'surgery ' or ends with 'Start with: surgery ...'."""
    found = []
    for name, parser in parsers().items():
        for line in (parser.epilog or "").splitlines():
            line = line.strip().partition("Start with: ")[2] or line.strip()
            if line.startswith("surgery "):
                found.append((name, line))
    return found


def test_every_command_shows_an_example():
    shown = {name for name, _ in examples()}
    assert shown == set(parsers()), f"commands without an example in their help: {set(parsers()) - shown}"


@pytest.mark.parametrize(("command", "line"), examples())
def test_help_example_is_valid(command, line):
    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)  # a usage error exits with SystemExit and fails the test
    if getattr(args, "model", None):
        with torch.device("meta"):
            build_model(args.model, getattr(args, "num_classes", None))
    if getattr(args, "method", None):
        method(args.method)
    if getattr(args, "config", None):
        assert (ROOT / args.config).is_file(), f"{line}: {args.config} does not exist"
        if args.command == "sweep":  # its grid plans against the config: a dry run checks it all
            from surgery.train.sweeps import sweep
            from surgery.train.sweeps.grid import grid_from_options

            sweep(ROOT / args.config, grid_from_options(args.grid) or None, args.seeds, args.jobs,
                  overrides=args.overrides, dry_run=True)
        else:
            configured(RunConfig.from_yaml(ROOT / args.config), args)
    elif args.command == "demo":
        from surgery.apps import demo

        configured(demo.demo_config(), args)
