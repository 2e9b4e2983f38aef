"""Running a sweep's runs: J at once as local processes, or as Slurm jobs through submitit.

Each run is ``surgery run DIR/runs/NAME/config.yaml`` (with ``--resume`` when its directory
holds a checkpoint), under torchrun when a run is a DDP job of several processes, its output
appended to the run's ``output.log``. ``execute`` keeps the launcher's slots full and reports
each run as it ends. A signal to the sweep is passed on once to every running run (local runs
live in their own session, so a terminal's Ctrl-C reaches the sweep alone), which checkpoints
and stops; a second signal aborts them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from surgery.errors import MissingExtraError, SweepError
from surgery.train.interrupt import Interrupted, signal_name
from surgery.train.run_files import RunFiles
from surgery.train.sweeps.grid import PlannedRun

POLL_SECONDS = 0.5  # at most between looks at the runs (a local run's end is seen at once: LocalLauncher.wait)
LAUNCHERS = ("local", "slurm")


@dataclass
class Job:
    run: PlannedRun
    resume: bool  # its directory holds a checkpoint: continue from it


def command(job: Job, nproc_per_run: int = 1) -> list[str]:
    """The command line of one run: the CLI's ``run``, under torchrun for a DDP run."""
    cli = ["-m", "surgery", "run", str(RunFiles(job.run.run_dir).config)]
    if job.resume:
        cli.append("--resume")
    if nproc_per_run > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_run}", *cli]
    return [sys.executable, *cli]


class Launcher(Protocol):
    slots: int  # runs at once

    def start(self, job: Job, slot: int) -> Any: ...

    def exit_code(self, handle: Any) -> int | None: ...  # None while it runs

    def stop(self, handle: Any, signum: int) -> None: ...

    def wait(self, handles: Sequence[Any], seconds: float) -> None: ...  # until one may have ended, at most seconds


# ------------------------------------------------------------------ local processes


class LocalLauncher:
    """``jobs`` processes at once. CPU: the cores split between them (OMP threads). One GPU: they share
    it. Several GPUs: each run gets its own (``nproc_per_run`` of them), round-robin over the visible ones."""

    def __init__(self, jobs: int, *, nproc_per_run: int = 1, gpus: Sequence[str] = (), cpus: int | None = None):
        self.slots, self.nproc_per_run, self.gpus = jobs, nproc_per_run, list(gpus)
        self.threads = max(1, (cpus or os.cpu_count() or 1) // (jobs * nproc_per_run))

    def environment(self, slot: int) -> dict[str, str]:
        """The cores split between the runs (on a GPU too: their data and Python need them); the GPUs
        dealt out when there are several, left shared when there is one."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads)}
        if len(self.gpus) > 1:
            first = slot * self.nproc_per_run
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus[(first + i) % len(self.gpus)]
                                                   for i in range(self.nproc_per_run))
        return env

    def start(self, job: Job, slot: int) -> subprocess.Popen:
        with open(RunFiles(job.run.run_dir).log, "ab") as log:  # the child holds its own copy of the file
            return subprocess.Popen(command(job, self.nproc_per_run), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.environment(slot), start_new_session=True)

    def exit_code(self, handle: subprocess.Popen) -> int | None:
        return handle.poll()

    def stop(self, handle: subprocess.Popen, signum: int) -> None:
        if handle.poll() is None:
            handle.send_signal(signum)

    def wait(self, handles: Sequence[subprocess.Popen], seconds: float) -> None:
        """Block on the oldest run, so that a single run's end is seen at once, not at the next poll."""
        if not handles:
            return
        try:
            handles[0].wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass


def visible_gpus(device: str) -> list[str]:
    """The GPUs runs may use: none for a CPU config or a machine without CUDA."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


# ------------------------------------------------------------------ Slurm through submitit


@dataclass
class RunCommand:
    """What a Slurm job executes: the run's command, its output appended to the run's log; the exit code."""

    argv: list[str]
    log: str
    cwd: str

    def __call__(self) -> int:
        with open(self.log, "ab") as log:
            return subprocess.call(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})


class SlurmLauncher:
    """One Slurm job per run (submitit's ``AutoExecutor``; ``cluster="local"`` runs them as local jobs,
    which is how it is tested without a cluster)."""

    def __init__(self, folder: Path, *, jobs: int, nproc_per_run: int = 1, partition: str | None = None,
                 gpus_per_run: int | None = None, time_min: int = 24 * 60, cpus_per_run: int | None = None,
                 cluster: str | None = "slurm"):
        try:
            import submitit
        except ImportError as error:
            raise MissingExtraError(f"--launcher slurm needs submitit ({error}); install it with: "
                                    "pip install \"tost-surgery[slurm]\"") from error
        self.slots, self.nproc_per_run = jobs, nproc_per_run
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.executor.update_parameters(
            name="surgery-sweep", timeout_min=time_min, nodes=1, tasks_per_node=1, cpus_per_task=cpus_per_run,
            gpus_per_node=nproc_per_run if gpus_per_run is None else gpus_per_run, slurm_partition=partition)

    def start(self, job: Job, slot: int) -> Any:
        log = str(RunFiles(job.run.run_dir).log)
        return self.executor.submit(RunCommand(command(job, self.nproc_per_run), log, os.getcwd()))

    def exit_code(self, handle: Any) -> int | None:
        if not handle.done():
            return None
        try:
            return int(handle.result())
        except Exception:  # noqa: BLE001 - submitit's own failure (the job died, timed out): the run failed
            return 1

    def stop(self, handle: Any, signum: int) -> None:
        handle.cancel(check=False)

    def wait(self, handles: Sequence[Any], seconds: float) -> None:
        time.sleep(seconds)


# ------------------------------------------------------------------ running them all


def execute(jobs: Sequence[Job], launcher: Launcher, on_end: Callable[[Job, int], None],
            on_stop: Callable[[int, int], str]) -> None:
    """Run every job, ``launcher.slots`` at once; ``on_end(job, exit_code)`` as each ends. A signal (or
    KeyboardInterrupt) is passed on to the running jobs, which are waited for; then ``Interrupted`` is
    raised with ``on_stop(signum, stopped)``'s message."""
    waiting: deque[Job] = deque(jobs)
    running: dict[int, tuple[Job, Any]] = {}
    try:
        while waiting or running:
            for slot in range(launcher.slots):
                if slot not in running and waiting:
                    job = waiting.popleft()
                    running[slot] = (job, launcher.start(job, slot))
            _reap(running, launcher, on_end)
            launcher.wait([handle for _, handle in running.values()], POLL_SECONDS)
    except (Interrupted, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, Interrupted) else 2
        stopped = len(running)
        _stop_all(running, launcher, on_end, signum)
        raise Interrupted(signum, on_stop(signum, stopped)) from None


def _reap(running: dict[int, tuple[Job, Any]], launcher: Launcher, on_end: Callable[[Job, int], None]) -> None:
    for slot, (job, handle) in list(running.items()):
        code = launcher.exit_code(handle)
        if code is not None:
            del running[slot]
            on_end(job, code)


def _stop_all(running: dict[int, tuple[Job, Any]], launcher: Launcher, on_end: Callable[[Job, int], None],
              signum: int) -> None:
    """Pass ``signum`` on once to each running job and wait for them; each further signal is passed on too
    (a second Ctrl-C aborts the runs without checkpoints)."""
    for _, handle in running.values():
        launcher.stop(handle, signum)
    if running:
        print(f"surgery sweep: {signal_name(signum)}: asked {len(running)} running run(s) to save a checkpoint and "
              "stop; Ctrl-C again to abort them", file=sys.stderr, flush=True)
    while running:
        try:
            _reap(running, launcher, on_end)
            time.sleep(POLL_SECONDS)
        except (Interrupted, KeyboardInterrupt) as again:
            for _, handle in running.values():
                launcher.stop(handle, again.signum if isinstance(again, Interrupted) else 2)


def check_jobs(jobs: int, nproc_per_run: int, launcher: str) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SweepError(f"--jobs {jobs}: run at least 1 run at a time (e.g. --jobs 4: four runs share the machine).")
    if isinstance(nproc_per_run, bool) or not isinstance(nproc_per_run, int) or nproc_per_run < 1:
        raise SweepError(f"--nproc-per-run {nproc_per_run}: a run needs at least 1 process.")
    if launcher not in LAUNCHERS:
        raise SweepError(f"--launcher {launcher!r}: give one of {list(LAUNCHERS)}.")

