"""Progress: one bar per training epoch (loss, accuracy, lr, alpha, beta, images/s), one for LRsI, one for a sweep.

On a terminal a live bar; piped into a file or a CI log, where a bar has nothing to redraw,
one plain line every ``plain_every`` seconds (``LRsI 120/390 iterations, 31 s, ETA 1 min 10 s``), so a
long task still shows it is alive and when it will end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY = 10.0  # seconds between plain lines without a terminal
EPOCH_PLAIN_EVERY = 60.0  # the trainer prints a line per epoch already: only long epochs need more


class TaskProgress:
    """``with TaskProgress(console, label, total) as bar: bar.advance(done, status)``; a no-op when disabled."""

    def __init__(self, console: Console, label: str, total: int, done: int = 0, *, enabled: bool = True,
                 unit: str = "", plain_every: float = PLAIN_EVERY, clock: Callable[[], float] = time.perf_counter):
        self.console, self.label, self.total, self.unit = console, label, total, unit
        self.enabled = enabled
        self.clock, self.plain_every = clock, plain_every
        self.started = self.last_line = clock()
        self.first_done = done  # the ETA counts only the work done since the start (a resumed task began further on)
        self.progress = None
        if enabled and console.is_terminal:
            self.progress = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.task = self.progress.add_task(label, total=total, completed=done, status="")

    def __enter__(self) -> TaskProgress:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def advance(self, done: int, status: str = "") -> None:
        if self.progress:
            self.progress.update(self.task, completed=done, status=status)
        elif self.enabled and self.clock() - self.last_line >= self.plain_every:
            self.last_line = self.clock()
            self.console.print(self.plain_line(done, status), markup=False, highlight=False)

    def plain_line(self, done: int, status: str = "") -> str:
        """``label done/total unit, elapsed, ETA remaining[, status]``."""
        elapsed = self.elapsed()
        rate = (done - self.first_done) / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {_duration((self.total - done) / rate)}" if rate > 0 else "ETA unknown"
        unit = f" {self.unit}" if self.unit else ""
        line = f"{self.label} {done}/{self.total}{unit}, {_duration(elapsed)}, {eta}"
        return f"{line}, {status}" if status else line


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = round(max(seconds, 0.0))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class EpochProgress(TaskProgress):
    """The training bar of one epoch: loss, accuracy, lr, alpha, beta, label smoothing, images/s."""

    def __init__(self, console: Console, epoch: int, epochs: int, total: int, done: int = 0, *, enabled: bool = True):
        super().__init__(console, f"epoch {epoch + 1}/{epochs}", total, done, enabled=enabled, unit="batches",
                         plain_every=EPOCH_PLAIN_EVERY)

    def update(self, batch: int, *, loss: float, acc: float, rate: float, lr: float, alpha: float | None = None,
               beta: float | None = None, label_smoothing: float = 0.0, **_: Any) -> None:
        if not self.enabled:
            return
        parts = [f"loss {loss:.3f}", f"acc {acc:.1%}", f"lr {lr:.3g}"]
        if alpha is not None:
            parts.append(f"α {alpha:.2f}")
        if beta is not None:
            parts.append(f"β {beta:.3g}")
        if label_smoothing:
            parts.append(f"ls {label_smoothing:.3f}")
        parts.append(f"{rate:.0f} img/s")
        self.advance(batch, "  ".join(parts))
