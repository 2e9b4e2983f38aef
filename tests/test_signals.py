"""SIGINT / SIGTERM sent to a real `surgery run`: one line, exit code 128 + signal, no traceback, and a
checkpoint whenever training had started (the first signal is honoured after the current step)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from surgery.train.interrupt import ACKNOWLEDGEMENT

pytestmark = pytest.mark.slow  # sends signals to real runs in subprocesses

STEPS_PER_EPOCH = 40  # synthetic: 1000 training images, batches of 25
CONFIG = {
    "model": {"spec": "cifar:resnet20"},
    "data": {"dataset": "synthetic", "image_size": 32, "batch_size": 25},
    "mask": {"sparsity": 0.8},
    "recipe": "tost",
    "lrsi": {"enabled": False},  # the tost recipe's LRsI (40 GradInit iterations) would take longer than the epoch
    "lr_schedule": {"milestones": [2]},
    "train": {"epochs": 4, "progress": False, "tensorboard": False, "checkpoint_every": 1, "log_every": 10},
    "export": {"onnx": False},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STARTED: list[subprocess.Popen] = []


def spawn(command: list[str]) -> subprocess.Popen:
    """The command in a process (its own session) that answers SIGINT and SIGTERM; what is left of it is killed
    when its test ends (a sweep's runs included).

    A shell's background job inherits SIGINT ignored, and surgery keeps an ignored signal ignored
    (as nohup expects), so each process restores the defaults whatever started pytest."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_default_signals, start_new_session=True)
    STARTED.append(process)
    return process


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def no_process_left_behind():
    yield
    while STARTED:
        process = STARTED.pop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start(tmp_path: Path, **sections) -> tuple[subprocess.Popen, Path]:
    config = {**CONFIG, **sections, "name": "run", "output": str(tmp_path / "run")}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "surgery", "run", str(path)]
    return spawn(command), tmp_path / "run"


def wait_for(condition, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended early: {process.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting for the run to get there"
        time.sleep(0.01)


def checkpoints(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "checkpoints").glob("*.pt")}


def ended(process: subprocess.Popen) -> list[str]:
    """stderr's lines once the process has ended."""
    _, err = process.communicate(timeout=120)
    assert "Traceback" not in err, err
    return err.strip().splitlines()


def test_sigterm_mid_epoch_stops_after_the_step_with_a_checkpoint(tmp_path):
    process, run_dir = start(tmp_path)
    wait_for(lambda: checkpoints(run_dir), process)  # epoch 1 is checkpointed: epoch 2 has begun
    process.send_signal(signal.SIGTERM)
    lines = ended(process)
    assert process.returncode == 128 + signal.SIGTERM
    assert lines[-2] == f"surgery: SIGTERM: {ACKNOWLEDGEMENT}"
    assert lines[-1].startswith("surgery run: stopped by SIGTERM at epoch 2")
    assert lines[-1].endswith(f"continue with: surgery run {run_dir / 'config.yaml'} --resume.")
    saved = checkpoints(run_dir) - {f"epoch0001-step{STEPS_PER_EPOCH:06d}.pt"}
    assert len(saved) == 1
    step = int(saved.pop().removesuffix(".pt").rsplit("step", 1)[1])
    assert STEPS_PER_EPOCH < step < STEPS_PER_EPOCH + 10  # within a step or two, before the next log point


def test_a_second_sigint_aborts_without_a_checkpoint(tmp_path):
    process, run_dir = start(tmp_path)
    wait_for(lambda: checkpoints(run_dir), process)
    before = checkpoints(run_dir)
    process.send_signal(signal.SIGINT)
    assert process.stderr.readline().strip() == f"surgery: SIGINT: {ACKNOWLEDGEMENT}"  # at once
    process.send_signal(signal.SIGINT)
    lines = ended(process)
    assert process.returncode == 128 + signal.SIGINT
    assert lines == [f"surgery run: aborted by a second SIGINT: no checkpoint written; the latest is "
                     f"{run_dir / 'checkpoints' / sorted(before)[-1]}; continue with: surgery run "
                     f"{run_dir / 'config.yaml'} --resume."]
    assert checkpoints(run_dir) == before


def test_sigint_before_training_ends_at_once_with_one_line(tmp_path):
    process, run_dir = start(tmp_path, lrsi={"enabled": True, "iterations": 100_000})
    wait_for(run_dir.exists, process)  # the run started: data loaded, model built; masks, compile, LRsI next
    process.send_signal(signal.SIGINT)
    lines = ended(process)
    assert process.returncode == 128 + signal.SIGINT
    assert lines == ["surgery run: stopped by SIGINT before training started; nothing to resume."]
    assert not checkpoints(run_dir)


def test_a_signal_while_the_command_starts_is_one_line(tmp_path):
    """Ctrl-C while `surgery` still imports torch: the console script's launcher answers it."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        process = spawn([sys.executable, "-m", "surgery_launch", "inspect", "cifar:resnet20"])
        time.sleep(0.5)  # past the interpreter's own start-up; within or after the import of torch, both are one line
        process.send_signal(sig)
        lines = ended(process)
        assert process.returncode == 128 + sig and len(lines) == 1 and signal.Signals(sig).name in lines[0], lines


def test_sigint_to_a_sweep_is_passed_on_once_and_its_runs_checkpoint(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "name": "base", "train": {**CONFIG["train"], "epochs": 20}}))
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "surgery", "sweep", str(path), "--grid", "mask.sparsity=0.5,0.8",
               "--jobs", "2", "--out", str(out)]
    process = spawn(command)
    runs = [out / "runs" / f"sparsity-{s}_seed-0" for s in (0.5, 0.8)]
    wait_for(lambda: all(checkpoints(run) for run in runs), process)
    process.send_signal(signal.SIGINT)
    lines = ended(process)
    assert process.returncode == 128 + signal.SIGINT
    assert lines[-1].startswith("surgery sweep: sweep stopped: 2 running run(s) asked to checkpoint; 0 of 2 runs")
    for run in runs:
        log = (run / "output.log").read_text()
        assert log.count(ACKNOWLEDGEMENT) == 1  # one signal each: a second would have aborted without a checkpoint
        assert "checkpoint saved" in log
    assert (out / "results.md").read_text().count("| 0 (1 unfinished) |") == 2
