"""Stage timings: ``RunRecord.timed`` adds each stage's wall seconds to result.json's ``stages``, start-up is timed
only in a process a command line started, and the CLI's time line reads them."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_run_config

from surgery.apps.cli import main
from surgery.train.record import STAGES, RunRecord, command_line, startup_seconds
from surgery.train.report.story import describe_time


def test_start_up_is_timed_only_in_a_process_a_command_line_started(tmp_path):
    assert startup_seconds() is None  # called from Python: this process began for something else
    with command_line():
        seconds = startup_seconds()
        record = RunRecord(tiny_run_config(tmp_path))  # nothing runs: the record is never written
    assert seconds is not None and 0 < seconds < time.clock_gettime(time.CLOCK_BOOTTIME)
    assert record.data["stages"]["startup"] >= seconds and startup_seconds() is None


def test_timed_adds_up_every_block_of_a_stage_however_it_ends(tmp_path):
    record = RunRecord(tiny_run_config(tmp_path))
    assert list(record.data["stages"]) == list(STAGES) and record.data["stages"]["startup"] is None
    with record.timed("data"):
        time.sleep(0.01)
    with pytest.raises(KeyError), record.timed("data"):
        time.sleep(0.01)
        raise KeyError("a failing stage still counts")
    assert record.data["stages"]["data"] >= 0.02 and record.data["stages"]["export"] == 0.0
    with pytest.raises(ValueError, match="unknown stage 'verification'.*startup, data"):
        with record.timed("verification"):
            pass


def test_the_time_line_puts_training_first_then_the_rest_longest_first():
    stages = {**dict.fromkeys(STAGES, 0.0), "startup": 2.04, "export": 4.96, "training": 30.1, "report": 1.2,
              "mask": 0.01}
    record = {"training": {"seconds": 28.7}, "stages": stages}
    assert describe_time(record) == "28.7 s training, 8.2 s outside it (export 5.0 s, startup 2.0 s, report 1.2 s)"
    assert describe_time({"training": {"seconds": 3.0}}) == "3.0 s training"  # a record from before stages


def test_only_a_process_own_command_line_freezes_the_collector_as_it_ends(capsys):
    """gc.freeze spares the interpreter's exit a walk over every object (seconds after an export); main([...])
    called from Python leaves the caller's collector alone."""
    frozen = gc.get_freeze_count()
    assert main(["--version"]) == 0 and gc.get_freeze_count() == frozen
    code = "import gc, sys; from surgery.apps.cli import main; sys.argv = ['surgery', '--version']; main(); " \
           "print(gc.get_freeze_count() > 0)"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip().splitlines()[-1] == "True"
