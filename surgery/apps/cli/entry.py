"""``main``: one ``surgery`` command line run to its exit code.

Every ``SurgeryError`` (a problem with the user's input) becomes its message on stderr and exit code 2;
SIGINT / SIGTERM one line and exit code 128 + the signal (``surgery --debug ...`` adds the traceback to
both); any other exception keeps its traceback, since it is a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence

from rich.console import Console

from surgery import advice
from surgery.apps.cli.parser import build_parser
from surgery.errors import SurgeryError
from surgery.train.interrupt import Interrupted, stop_at_once
from surgery.train.record import command_line

EXIT_USER_ERROR = 2


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
