"""Stopping on SIGINT / SIGTERM: one line on stderr, exit code 128 + the signal, no traceback.

Two policies, one per phase of a command:

* ``stop_at_once`` (the command line, for as long as a command runs): a signal raises
  ``Interrupted`` wherever it lands. Outside the training loop nothing is half done that a
  checkpoint could keep, so stopping there loses nothing.
* ``stop_after_step`` (the trainer's loop): the first signal is acknowledged at once and
  only asks to stop; the trainer honours it after the current step and writes a checkpoint.
  A second signal raises ``Interrupted`` at once: abort, no checkpoint.

Handlers are installed in the main thread only (Python runs them there), never for a
signal the process ignores, and the previous ones come back on exit; a process forked
inside the block (a DataLoader worker) keeps Python's own behaviour, so its parent alone
decides and reports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ACKNOWLEDGEMENT = "stopping after this step; saving a checkpoint — Ctrl-C again to abort without one"


class Interrupted(BaseException):
    """A SIGINT / SIGTERM stopped the command.

    A ``BaseException``, like ``KeyboardInterrupt``: it is raised wherever the signal lands,
    and no ``except Exception`` on its way may swallow it. ``explained``: the message says
    what the stop left behind (a checkpoint, or nothing to resume); without one, whoever knows
    that (the pipeline) raises it again with the explanation.
    """

    def __init__(self, signum: int, message: str = "", checkpoint: Path | None = None):
        self.signum, self.checkpoint, self.explained = int(signum), checkpoint, bool(message)
        super().__init__(message or f"stopped by {signal_name(signum)}.")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def stop_at_once() -> contextlib.AbstractContextManager[None]:
    """Inside: SIGINT / SIGTERM raise ``Interrupted`` at once."""

    def stop(signum: int, frame) -> None:
        raise Interrupted(signum)

    return _handling(stop)


def stop_after_step(request: Callable[[int], None], abort: Callable[[int], Interrupted]
                    ) -> contextlib.AbstractContextManager[None]:
    """Inside: the first signal calls ``request(signum)``; the next raises ``abort(signum)``."""
    asked: list[int] = []

    def ask_or_abort(signum: int, frame) -> None:
        if asked:
            raise abort(signum)
        asked.append(signum)
        request(signum)

    return _handling(ask_or_abort)


def acknowledge(signum: int) -> None:
    """Say at once that the stop is on its way, and how to abort instead."""
    print(f"surgery: {signal_name(signum)}: {ACKNOWLEDGEMENT}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _handling(handler: Callable[[int, object], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def dispatch(signum: int, frame) -> None:
        if os.getpid() != owner:  # a forked worker: KeyboardInterrupt, which DataLoader workers expect
            signal.default_int_handler(signum, frame)
        handler(signum, frame)

    # A signal ignored from the start (a background job's SIGINT) stays ignored, as Python itself does.
    previous = {s: h for s in SIGNALS if (h := signal.getsignal(s)) is not signal.SIG_IGN}
    for s in previous:
        signal.signal(s, dispatch)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: a handler not set from Python
