"""A run directory is self-contained: its config.yaml resumes it from any working directory, a copy acts on
itself, `sweep --report` reads a sweep from anywhere, and a start that fails leaves no directory behind."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from conftest import tiny_run_config

from surgery.apps.cli import main
from surgery.errors import CheckpointError
from surgery.train import RunConfig, pipeline
from surgery.train.run_files import RunFiles
from surgery.train.trainer import Interrupted, Trainer

pytestmark = pytest.mark.slow  # trains tiny runs


def relative_run(tmp_path, monkeypatch):
    """A tiny run started from ``tmp_path/start`` with a relative output, stopped at step 25 with a checkpoint."""
    start = tmp_path / "start"
    start.mkdir()
    monkeypatch.chdir(start)
    config = tiny_run_config(tmp_path, output="runs/{name}")
    step = Trainer._train_step

    def sigterm_at_step_25(self, *args):
        if self.step == 25:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", sigterm_at_step_25)
    with pytest.raises(Interrupted) as stop:
        pipeline.run(config)
    monkeypatch.setattr(Trainer, "_train_step", step)
    return start / "runs" / "tiny", str(stop.value)


def test_a_runs_config_resumes_it_from_any_directory_and_a_copy_acts_on_itself(tmp_path, monkeypatch, capsys):
    run_dir, message = relative_run(tmp_path, monkeypatch)
    assert f"surgery run {run_dir / 'config.yaml'} --resume" in message  # the printed command works anywhere
    saved = RunConfig.from_yaml(run_dir / "config.yaml")
    assert saved.run_dir == run_dir

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", "../copy/config.yaml", "--resume"]) == 0
    assert json.loads(RunFiles(copy).result.read_text())["status"] == "completed"
    assert json.loads(RunFiles(run_dir).result.read_text())["status"] == "interrupted"  # the original is untouched
    assert list(elsewhere.iterdir()) == []

    assert main(["run", str(run_dir / "config.yaml"), "--resume"]) == 0
    assert json.loads(RunFiles(run_dir).result.read_text())["status"] == "completed"
    capsys.readouterr()
    assert main(["run", str(run_dir / "config.yaml"), "--resume"]) == 0
    assert f"its results are in {run_dir}" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []


def test_resume_where_there_is_nothing_to_resume_is_refused_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_run_config(tmp_path, output="runs/{name}")
    with pytest.raises(CheckpointError, match=r"runs/tiny does not exist, so there is nothing to continue"):
        pipeline.run(config, resume=True)
    assert not (tmp_path / "runs").exists()


def test_a_resume_from_a_file_that_is_no_checkpoint_leaves_no_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    code = main(["demo", "--out", str(tmp_path / "x"), "--resume", "garbage.pt", "--epochs", "1", "--no-progress"])
    assert code != 0 and "garbage.pt" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # no config.yaml, masks or failed record left behind

    config = tiny_run_config(tmp_path, train={"epochs": 1}, lr_schedule={"milestones": []})
    pipeline.run(config)
    record = RunFiles(config.run_dir).result.read_text()
    with pytest.raises(CheckpointError):
        pipeline.run(config, resume=tmp_path / "garbage.pt")
    assert RunFiles(config.run_dir).result.read_text() == record  # an earlier run's record stays as it was


def test_sweep_report_reads_a_sweep_from_any_directory_and_a_copy_reports_itself(tmp_path, monkeypatch, capsys):
    from test_sweep import fake_run

    out = tmp_path / "sweeps" / "s"
    for seed in (0, 1):
        fake_run(out, f"r{seed}", {"mask.sparsity": 0.9}, seed, last=0.8 + seed / 100)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["sweep", "--report", "../copy"]) == 0
    assert (copy / "results.md").is_file() and not (out / "results.md").exists()
    rows = (copy / "results.csv").read_text()
    assert str(out) not in rows and "copy/runs/r0" in rows
    assert list(elsewhere.iterdir()) == []
