"""Progress without a terminal: a plain line with the elapsed time and an ETA every few seconds."""

from __future__ import annotations

import io

from rich.console import Console

from surgery.train.progress import EpochProgress, TaskProgress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_without_a_terminal_a_plain_line_with_an_eta_every_interval():
    console, out = plain_console()
    clock = FakeClock()
    with TaskProgress(console, "LRsI", 390, unit="iterations", plain_every=10, clock=clock) as bar:
        for done, now in ((40, 105.0), (120, 131.0), (130, 135.0), (300, 2500.0)):
            clock.now = now
            bar.advance(done, "objective 4.2")
    assert out.getvalue().splitlines() == [
        "LRsI 120/390 iterations, 31 s, ETA 1 min 10 s, objective 4.2",  # 120 in 31 s: 270 more in 70 s
        "LRsI 300/390 iterations, 40 min 00 s, ETA 12 min 00 s, objective 4.2",  # 135 s since the last line
    ]


def test_the_eta_of_a_resumed_task_counts_only_the_work_since_its_start():
    console, _ = plain_console()
    clock = FakeClock()
    bar = TaskProgress(console, "sweep", 10, 6, plain_every=0, clock=clock)
    clock.now += 7200
    assert bar.plain_line(8) == "sweep 8/10, 2 h 00 min, ETA 2 h 00 min"
    assert bar.plain_line(6) == "sweep 6/10, 2 h 00 min, ETA unknown"


def test_disabled_progress_prints_nothing_and_a_terminal_gets_a_bar_not_lines():
    console, out = plain_console()
    clock = FakeClock()
    with TaskProgress(console, "LRsI", 10, enabled=False, plain_every=0, clock=clock) as bar:
        clock.now += 1
        bar.advance(5)
    terminal = Console(file=io.StringIO(), force_terminal=True)
    with TaskProgress(terminal, "LRsI", 10, plain_every=0) as live:
        assert live.progress is not None
    assert out.getvalue() == ""


def test_an_epoch_without_a_terminal_says_its_loss_only_once_a_minute():
    console, out = plain_console()
    bar = EpochProgress(console, 2, 180, 391)
    bar.update(200, loss=1.23, acc=0.5, rate=900, lr=0.1)  # seconds in: nothing yet
    assert out.getvalue() == ""
    bar.started = bar.last_line = bar.started - 60
    bar.update(200, loss=1.23, acc=0.5, rate=900, lr=0.1)
    assert out.getvalue().startswith("epoch 3/180 200/391 batches, 1 min 00 s, ETA 57 s, loss 1.230  acc 50.0%")
