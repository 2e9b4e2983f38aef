"""What `surgery sweep` adds to its runs: a 4-run sweep against the same 4 runs launched by hand.

The same four runs (the CPU study's config and schedule: two sparsities x ToST / none,
seed 0) go twice through each side, alternating which side starts, so load drift hits both
alike:

    by hand   ``surgery run CONFIG --set FIELD=VALUE ...`` once per run, one after another
    sweep     ``surgery sweep CONFIG --grid mask.sparsity=... --grid recipe=tost,none --jobs 1``

Both sides get every core (``OMP_NUM_THREADS``) and the same fields; the sweep also plans,
writes each run's config, polls, and writes results.csv / results.md / the plot. The verdict
is the summed wall time of the sweeps over that of the runs by hand; the target is under 2%.
Measures, never asserts. Writes the "sweep" section of docs/benchmarks.md.

    python benchmarks/sweep_overhead.py [--epochs 30] [--rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from report import write_section

from surgery.train.sweeps.grid import fields_of

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "configs" / "sweep-digits.yaml"
GRID = {"mask.sparsity": [0.9, 0.95], "recipe": ["tost", "none"]}
TARGET = 0.02


def surgery(*args: str) -> list[str]:
    return [sys.executable, "-m", "surgery", *args]


def fixed(epochs: int) -> list[str]:
    return [f"train.epochs={epochs}"]


def by_hand_commands(out: Path, epochs: int) -> list[list[str]]:
    """One `surgery run` per cell, each grid value spelt as the --set fields the sweep would set."""
    commands = []
    for sparsity in GRID["mask.sparsity"]:
        for recipe in GRID["recipe"]:
            fields = {**fields_of("mask.sparsity", sparsity), **fields_of("recipe", recipe)}
            sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                    for k, v in fields.items()] + fixed(epochs)
            name = f"s{sparsity}-{recipe}"
            commands.append(surgery("run", str(CONFIG), "--seed", "0", "--out", str(out / name),
                                    *(a for s in sets for a in ("--set", s))))
    return commands


def sweep_command(out: Path, epochs: int) -> list[str]:
    grid = [a for field, values in GRID.items() for a in ("--grid", f"{field}={','.join(map(str, values))}")]
    return surgery("sweep", str(CONFIG), *grid, "--seeds", "1", "--jobs", "1", "--out", str(out),
                   *(a for s in fixed(epochs) for a in ("--set", s)))


def timed(commands: list[list[str]], env: dict[str, str]) -> float:
    start = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run (default 30, the study's schedule)")
    parser.add_argument("--rounds", type=int, default=2, help="times each side runs, alternating (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 round: a smoke run; prints, writes no doc")
    args = parser.parse_args()
    epochs, rounds = (1, 1) if args.quick else (args.epochs, args.rounds)
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": str(cores), "MKL_NUM_THREADS": str(cores), "PYTHONPATH": str(ROOT)}

    hand, swept = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            sides = [("hand", lambda: timed(by_hand_commands(Path(tmp) / f"hand{r}", epochs), env)),
                     ("sweep", lambda: timed([sweep_command(Path(tmp) / f"sweep{r}", epochs)], env))]
            for side, run in sides if r % 2 == 0 else reversed(sides):
                seconds = run()
                (hand if side == "hand" else swept).append(seconds)
                print(f"round {r + 1}: {side}: {seconds:.1f} s", flush=True)
        # the driver alone: the same sweep again, every run complete (start-up, planning, table, plot)
        fixed = statistics.median(timed([sweep_command(Path(tmp) / "sweep0", epochs)], env) for _ in range(3))
    overhead = sum(swept) / sum(hand) - 1
    per_sweep = statistics.fmean(hand)
    print(f"sweep overhead: {overhead:+.2%} (target < {TARGET:.0%}); the driver alone: {fixed:.2f} s "
          f"= {fixed / per_sweep:.2%} of a sweep's runs")
    if args.quick:
        return
    rows = "\n".join(f"| {r + 1} | {h:.1f} | {s:.1f} | {s / h - 1:+.2%} |" for r, (h, s) in enumerate(zip(hand, swept)))
    example = " ".join(shlex.quote(a) for a in by_hand_commands(Path("runs"), epochs)[0][1:]).replace(f"{ROOT}/", "")
    body = (
        f"Four runs of `{CONFIG.relative_to(ROOT)}` (cifar:resnet20 on digits, {epochs} epochs, mask.sparsity "
        f"0.9 / 0.95 x recipe tost / none, seed 0), launched one after another by hand (`python {example}` and "
        "the three others) and as one `surgery sweep ... --jobs 1`, alternating which side starts; every core "
        "for each run on both sides. The sweep's wall time includes planning, writing each run's config, "
        "polling and writing results.csv, results.md and the plot.\n\n"
        "| round | by hand (s) | sweep (s) | overhead |\n| --- | --- | --- | --- |\n" + rows + "\n\n"
        f"**Overhead of the driver: {overhead:+.2%} of the summed run time** (target: under {TARGET:.0%}; "
        f"{'met' if overhead < TARGET else 'missed'}). The driver's own time, measured alone (the same sweep "
        f"run again once every run is complete: Python and torch start-up, planning, the table and the plot; "
        f"median of 3): {fixed:.2f} s, {fixed / per_sweep:.2%} of the four runs' {per_sweep:.0f} s; a fixed cost per "
        "`surgery sweep`, so a smaller share of longer runs. The rest of the difference is within the two "
        "sides' round-to-round spread.\n\n"
        "Run: `python benchmarks/sweep_overhead.py` (`--epochs`, `--rounds`, `--quick`)."
    )
    write_section("sweep", "Sweep overhead (4 runs on CPU)", body)


if __name__ == "__main__":
    main()
