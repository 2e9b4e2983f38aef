"""The ``surgery`` console script: SIGINT / SIGTERM answered from the first instant, then the CLI.

Importing the package loads torch, which takes seconds; a Ctrl-C in that window would end in
Python's ``KeyboardInterrupt`` traceback. Nothing exists yet that could be saved, so the
process ends at once with one line and exit code 128 + the signal. This module lives outside
the package because importing anything inside it runs ``surgery/__init__`` (and torch) first.
"""

from __future__ import annotations

import os
import signal
import sys


def _stop_while_starting(signum: int, frame) -> None:
    print(f"surgery: stopped by {signal.Signals(signum).name} while starting; nothing to save.",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # a signal the caller ignores stays ignored
            signal.signal(signum, _stop_while_starting)
    from surgery.apps.cli import main as run_command  # the slow import; cli.main installs its own handlers

    return run_command()


if __name__ == "__main__":
    sys.exit(main())
