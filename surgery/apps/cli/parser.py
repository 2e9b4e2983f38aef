"""The ``surgery`` parser: the program's own options, then each command's, added by its module."""

from __future__ import annotations

import argparse

from surgery import advice
from surgery.apps.cli.commands import demo, export, inspect, prune, run, sweep, train, verify
from surgery.version import __version__

COMMANDS = (inspect, verify, export, prune, train, run, sweep, demo)  # in the order the help lists them


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
    for command in COMMANDS:
        command.add_parser(commands)
    for name, command in commands.choices.items():  # what each command's error advice may name
        command.set_defaults(command_options=advice.CommandOptions.of(name, command))
    return parser
