"""LRsI in a run: sized to the training loader, visible without a terminal, recorded in result.json
(and carried on by a resume, which does not run it again)."""

from __future__ import annotations

import functools
import io
import json
import os
import signal

import pytest
from conftest import tiny_run_config
from rich.console import Console

from surgery.train import pipeline
from surgery.train.progress import TaskProgress
from surgery.train.run_files import RunFiles
from surgery.train.trainer import Interrupted, Trainer


pytestmark = pytest.mark.slow  # trains a tiny run


def test_lrsi_runs_an_epoch_of_iterations_shows_progress_and_is_recorded_across_a_resume(tmp_path, monkeypatch):
    calls = []
    original = pipeline.lrsi
    monkeypatch.setattr(pipeline, "lrsi", lambda *a, **kw: calls.append(kw) or original(*a, **kw))  # where the run looks it up
    monkeypatch.setattr(pipeline, "TaskProgress", functools.partial(TaskProgress, plain_every=0))
    step = Trainer._train_step

    def sigterm_at_step_5(self, *args):
        if self.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", sigterm_at_step_5)
    out = io.StringIO()
    config = tiny_run_config(tmp_path, train={"epochs": 1, "progress": True}, lr_schedule={"milestones": []},
                             lrsi={"enabled": True, "grad_norm_bound": 1e-6, "half_batches": False})
    with pytest.raises(Interrupted):
        pipeline.run(config, console=Console(file=out, force_terminal=False, width=300))

    assert [(kw["iterations"], kw["half_batches"]) for kw in calls] == [(10, False)]  # 10 batches an epoch
    text = out.getvalue()
    assert "LRsI 10/10 iterations, " in text and "ETA " in text
    assert "learned in 10 iterations (10 on the gradient-norm bound), " in text
    interrupted = json.loads(RunFiles(config.run_dir).result.read_text())
    section = interrupted["lrsi"]
    assert section["iterations"] == 10 and section["constrained_iterations"] == 10 and section["seconds"] > 0
    assert section["scales"] > 0 and section["loss_before"] > 0

    monkeypatch.setattr(Trainer, "_train_step", step)
    pipeline.run(config, resume=True, console=Console(file=io.StringIO()))
    record = json.loads(RunFiles(config.run_dir).result.read_text())
    assert len(calls) == 1  # not run again
    assert record["status"] == "completed" and record["lrsi"] == section
    assert record["tweaks"]["lrsi_iterations"] == 10
