"""The GPU study, in order, each step stopping cleanly at its share of one deadline:

  (a) the suite's CUDA tests;
  (b) ``benchmarks/overhead.py --device cuda``: eager and compiled (bf16 + channels_last), the GPU
      rows of docs/benchmarks.md;
  (c) ToST Table 2's protocol shrunk to fit: ``cifar:grasp_resnet32`` (the table's ResNet-32) on the
      CIFAR-10 JPEG copy, 45k / 5k split, random (global) and SynFlow masks at 98% (then 95% if time
      remains), the CPU study's four arms (``none``, ``tost``, ``tost-official``, and ``tost-official``
      with its jumps removed at the first decay), 3 paired seeds: one seed gives every arm the same
      weights, mask and data order, and the table has each arm minus ``none`` seed by seed with its 95%
      interval. A 1-epoch probe times one run alone and ``--jobs`` runs at once; the
      jobs with the better throughput and the epochs that fit the time left follow from it (the LR
      decays at 50% / 75% of them, the ghosts leave before the first). At the deadline the sweep is
      sent SIGINT: its runs checkpoint, and the table holds what finished.

Everything measured goes under ``--out`` (flat, at most 8 files: what the device tool brings back):
tests.log, overhead.log, benchmarks.md (with the GPU rows), probe.json, study.log, results.csv,
paired-differences.png, and docs/results.md's GPU section written from them (results-gpu.md).

    bash benchmarks/gpu_study.sh                 # OUT=..., BUDGET=570 (seconds) by default
    python benchmarks/gpu_study.py --smoke --out /tmp/study   # the logic on CPU: digits, tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE2 = ROOT / "examples" / "configs" / "tost-table2.yaml"
DIGITS = ROOT / "examples" / "configs" / "sweep-digits.yaml"
CIFAR = (ROOT / ".data" / "cifar10-jpeg.tar.gz", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
MASKS = ("random", "synflow")
ARMS = (("recipe=none,tost,tost-official",), ("recipe=tost-official", "ghosts.remove_at=first_decay"))
CELLS = 8  # the masks x the four arms at one sparsity
SEEDS = (3, 2, 1)  # the paper's 3 seeds; fewer only when even MIN_EPOCHS would not fit
MIN_EPOCHS, MAX_EPOCHS = 4, 30
JOB_CHOICES = (1, 6)  # the probe times one run alone and this many at once


class Clock:
    def __init__(self, budget: float):
        self.end = time.monotonic() + budget

    def left(self) -> float:
        return self.end - time.monotonic()


def run_logged(command: list[str], log: Path, limit: float, env: dict[str, str] | None = None) -> int | None:
    """Run ``command`` with its output in ``log``; SIGINT at ``limit`` seconds (then SIGKILL 60 s later).
    Returns the exit code, or None when it had no time at all."""
    if limit <= 5:
        log.write_text(f"skipped: {limit:.0f} s left\n")
        return None
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                   start_new_session=True)
        try:
            return process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                return process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                return process.wait()


def surgery(*args: str) -> list[str]:
    return [sys.executable, "-m", "surgery", *args]


def cuda_tests(out: Path, clock: Clock, share: float) -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-rs", "tests",
               "-m", "not zoo", "-k", "cuda"]  # every test named for CUDA (requires_cuda skips them here)
    code = run_logged(command, out / "tests.log", min(share, clock.left()))
    print(f"(a) CUDA tests: exit code {code}", flush=True)


def overhead(out: Path, clock: Clock, share: float) -> None:
    code = run_logged([sys.executable, "benchmarks/overhead.py", "--device", "cuda"], out / "overhead.log",
                      min(share, clock.left()))
    print(f"(b) overhead.py --device cuda: exit code {code}", flush=True)


def study_settings(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """The base config and its fixed overrides: Table 2's on CIFAR-10 (or the digits config for --smoke)."""
    if args.smoke:
        return DIGITS, ["train.epochs=2", "lrsi.iterations=2"]
    data = next((p for p in CIFAR if p.is_file()), None)
    if data is None:
        raise SystemExit(f"no CIFAR-10 JPEG archive at {' or '.join(map(str, CIFAR))}: copy "
                         "../shared/data/cifar10-jpeg.tar.gz to .data/ (git-ignored) and carry it")
    return TABLE2, [f"data.dataset=cifar10-jpeg:{data}", "lr_schedule.milestones=null", "export.onnx=false",
                    "train.checkpoint_every=5", "train.device=cuda"]


def sweep_args(config: Path, fixed: list[str], out_dir: Path, sparsities: str, jobs: int, epochs: int,
               seeds: int) -> list[list[str]]:
    """One sweep directory, filled mask by mask: the three presets, then tost-official with its jumps removed
    (a grid of its own: the field belongs to that arm alone); global scope for both masks (Table 2's)."""
    sets = [*fixed, f"train.epochs={epochs}", "mask.scope=global"]
    common = ["--grid", f"mask.sparsity={sparsities}", "--seeds", str(seeds), "--jobs", str(jobs),
              "--out", str(out_dir), *(a for s in sets for a in ("--set", s))]
    return [surgery("sweep", str(config), "--grid", f"mask.method={mask}", *(a for g in arm for a in ("--grid", g)),
                    *common) for mask in MASKS for arm in ARMS]


def probe(config: Path, fixed: list[str], work: Path, out: Path, clock: Clock) -> dict:
    """For each J of JOB_CHOICES, J one-epoch runs at once: the wall time, and each run's training
    seconds (its result.json), whose difference is the run's start-up (data, mask, LRsI, verification)."""
    timings = {}
    for jobs in JOB_CHOICES:
        directory = work / f"probe-{jobs}"
        seeds = ",".join(str(100 + i) for i in range(jobs)) + ","  # J runs: one cell, J seeds
        command = surgery("sweep", str(config), "--grid", "mask.sparsity=0.98", "--grid", "recipe=tost",
                          "--seeds", seeds, "--jobs", str(jobs), "--out", str(directory),
                          *(a for s in [*fixed, "train.epochs=1"] for a in ("--set", s)))
        start = time.monotonic()
        code = run_logged(command, out / "study.log", clock.left() - 60)
        wall = time.monotonic() - start
        with open(directory / "results.csv") as f:
            trained = [float(row["seconds"]) for row in csv.DictReader(f) if row["seconds"]]
        epoch = max(trained) if trained else wall
        timings[jobs] = {"wall": wall, "epoch": epoch, "startup": max(wall - epoch, 0.0), "exit_code": code}
        print(f"probe: {jobs} one-epoch run(s) at once: {wall:.0f} s wall, an epoch {epoch:.1f} s", flush=True)
    return timings


def sizing(timings: dict, seconds: float) -> dict:
    """The jobs that finish the grid soonest, the seeds (3 unless even MIN_EPOCHS would not fit) and the
    epochs for which it fits ``seconds``: a wave of J runs at once takes start-up + epochs x epoch (both
    measured at that J)."""

    def grid_time(jobs: int, runs: int, epochs: int) -> float:
        t = timings[jobs]
        return math.ceil(runs / jobs) * (t["startup"] + epochs * t["epoch"])

    for seeds in SEEDS:
        runs = CELLS * seeds
        jobs = min(timings, key=lambda j: grid_time(j, runs, MAX_EPOCHS))
        t, waves = timings[jobs], math.ceil(runs / jobs)
        fits = int((seconds / waves - t["startup"]) / t["epoch"]) if t["epoch"] > 0 else MAX_EPOCHS
        if fits >= MIN_EPOCHS:
            break
    epochs = max(MIN_EPOCHS, min(MAX_EPOCHS, fits))
    twelve = CELLS * SEEDS[0]
    return {"jobs": jobs, "seeds": seeds, "runs": runs, "epochs": epochs, "fits_epochs": fits,
            "speedup_12_runs": grid_time(1, twelve, epochs) / grid_time(jobs, twelve, epochs)}


def study(args: argparse.Namespace, out: Path, clock: Clock) -> None:
    config, fixed = study_settings(args)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    timings = probe(config, fixed, work, out, clock)
    plan = sizing(timings, clock.left() - 45)
    (out / "probe.json").write_text(json.dumps({"timings": timings, "plan": plan}, indent=1))
    print(f"(c) sweep: {plan['runs']} runs ({plan['seeds']} seeds), {plan['epochs']} epochs each, --jobs "
          f"{plan['jobs']} (12 runs: {plan['speedup_12_runs']:.1f}x faster than one after another)", flush=True)
    sweep_dir = work / "sweep"
    start = time.monotonic()
    grid = (plan["jobs"], plan["epochs"], plan["seeds"])
    for command in sweep_args(config, fixed, sweep_dir, "0.98", *grid):
        run_logged(command, out / "study.log", clock.left() - 20)
    took = time.monotonic() - start
    if clock.left() - 20 > took:  # then 95%, into the same sweep
        for command in sweep_args(config, fixed, sweep_dir, "0.95", *grid):
            run_logged(command, out / "study.log", clock.left() - 20)
    for name in ("results.csv", "paired-differences.png"):
        if (sweep_dir / name).is_file():
            shutil.copy(sweep_dir / name, out / name)
    write_results_section(out, sweep_dir, plan, took, "a smoke run: cifar:resnet20 on digits, CPU" if args.smoke
                          else "`cifar:grasp_resnet32` (Table 2's ResNet-32) on CIFAR-10 (45k / 5k)")


def write_results_section(out: Path, sweep_dir: Path, plan: dict, took: float, what: str) -> None:
    """docs/results.md's GPU section (results-gpu.md), from the sweep's results.md and the probe."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from report import machine

    table = (sweep_dir / "results.md").read_text().split("\n", 2)[-1] if (sweep_dir / "results.md").is_file() \
        else "(no run finished)\n"
    body = (
        f"## GPU: ToST Table 2 shrunk ({torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'})\n\n"
        f"Machine: {machine()}\n\n"
        f"`bash benchmarks/gpu_study.sh`: {what}, {plan['epochs']} epochs (LR x0.1 at 50% and 75%, the ghosts of "
        f"`tost` out before the first decay), {plan['seeds']} paired seeds, {plan['jobs']} runs at once on one GPU; "
        f"the 98% grid took "
        f"{took:.0f} s. 12 runs at --jobs {plan['jobs']} against one after another, from the 1-epoch probe's "
        f"start-up and epoch times at each concurrency: {plan['speedup_12_runs']:.1f}x faster (target: 4x).\n\n{table}"
    )
    (out / "results-gpu.md").write_text(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-study-out"), help="where results go ($OUT)")
    parser.add_argument("--work", default="gpu-study", help="the sweeps' own directories (not brought back)")
    parser.add_argument("--budget", type=float, default=570, help="seconds for all three steps (default 570)")
    parser.add_argument("--smoke", action="store_true", help="CPU, digits, 2 epochs, no tests or overhead: the logic")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(args.budget)
    if not args.smoke:
        cuda_tests(out, clock, share=60)
        overhead(out, clock, share=200)
        shutil.copy(ROOT / "docs" / "benchmarks.md", out / "benchmarks.md")
    study(args, out, clock)
    print(f"done; {clock.left():.0f} s of the budget left; results in {out}", flush=True)


if __name__ == "__main__":
    main()
