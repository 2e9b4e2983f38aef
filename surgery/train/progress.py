"""Rich progress bars: one per training epoch (loss, accuracy, lr, alpha, beta, images/s), one for LRsI.

Only on a terminal: piped into a file or a CI log a live bar has nothing to redraw, and the
trainer's one line per epoch says it all.
"""

from __future__ import annotations

import time
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


class TaskProgress:
    """``with TaskProgress(console, label, total) as bar: bar.advance(done, status)``; a no-op when disabled."""

    def __init__(self, console: Console, label: str, total: int, done: int = 0, *, enabled: bool = True):
        self.enabled = enabled and console.is_terminal
        self.started = time.perf_counter()
        self.progress = None
        if self.enabled:
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
        return time.perf_counter() - self.started

    def advance(self, done: int, status: str = "") -> None:
        if self.progress:
            self.progress.update(self.task, completed=done, status=status)


class EpochProgress(TaskProgress):
    """The training bar of one epoch: loss, accuracy, lr, alpha, beta, label smoothing, images/s."""

    def __init__(self, console: Console, epoch: int, epochs: int, total: int, done: int = 0, *, enabled: bool = True):
        super().__init__(console, f"epoch {epoch + 1}/{epochs}", total, done, enabled=enabled)

    def update(self, batch: int, *, loss: float, acc: float, rate: float, lr: float, alpha: float | None = None,
               beta: float | None = None, label_smoothing: float = 0.0, **_: Any) -> None:
        if not self.progress:
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
