"""Where a run's time goes: `surgery demo` stage by stage, before and after the cuts of issue 22, side by side.

The same command, ``surgery demo --no-progress`` run as ``python -m surgery_launch`` (every checkout has it; the 30-epoch demo: ResNet-20 on digits,
ToST with LRsI, verification in both modes, sparse ONNX with onnxruntime parity, the report), runs as its own
process from two checkouts, alternating which goes first so load drift hits both alike:

    before   REF (default ``BEFORE``: the commit that timed the stages, before any cut), a temporary git worktree
    after    this checkout

Each run's result.json gives its stages (``surgery.train.record.STAGES``) and the trainer's own seconds
(``training.seconds``); the wall time, taken from outside the process, adds what follows the record (the summary
printed, the interpreter's exit). Outside training is that wall time less ``training.seconds``, as the issue
counted it. Medians over the rounds; both sides get the same environment: torch's own thread count, as
``surgery demo`` runs, or ``--threads N`` (``OMP_NUM_THREADS``; on a machine other jobs load, one thread keeps
each op from waiting on a preempted sibling). Measures, never asserts. Writes the "stages" section of
docs/benchmarks.md.

    python benchmarks/run_stages.py [--epochs 30] [--rounds 2] [--threads N] [--before REF] [--quick] [--print-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from report import write_section

from surgery.train.record import STAGES

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "6f0105cc9d3b"  # issue 22: stages timed, nothing cut yet
TARGET = 0.5  # outside training, after / before
# The table's rows in the order a run meets them; the training stage's own row is what it spends besides the loop.
SETUP = "training set-up"
ROWS = (*(SETUP if stage == "training" else stage for stage in STAGES), "exit", "other")
WHAT = {
    "startup": "interpreter and imports, to `run()`",
    "data": "load digits, loaders",
    "model": "build ResNet-20",
    "mask": "random mask, pairing digests, config and mask files",
    "compile": "trace both modes, shapes, ghost passes",
    "lrsi": "LRsI: 11 GradInit iterations",
    SETUP: "the optimizer (torch imports torch._dynamo here), checkpoint store",
    "deghost": "strip ghosts, bake masks, save weights",
    "verify": "graph, strict load, outputs in eval and train mode",
    "export": "torch.onnx (dynamo), sparse initializers, checker, onnxruntime parity",
    "report": "summary.md and three plots",
    "exit": "the CLI summary, interpreter shutdown",
    "other": "between stages",
}
CHECKS = {"graph": "graph", "strict_load": "strict load", "outputs": "eval-mode outputs",
          "train_outputs": "train-mode outputs"}  # VerifyReport.seconds, in the order verify runs them


def checkout(ref: str, where: Path) -> Path:
    """``ref`` in a temporary git worktree at ``where``."""
    known = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                           stdout=subprocess.DEVNULL)
    if known.returncode:
        sys.exit(f"run_stages: no commit {ref} in this repository; pass --before REF, the code to compare with.")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return where


def run_demo(tree: Path, out: Path, epochs: int, threads: int | None) -> dict[str, Any]:
    """One `surgery demo` from ``tree``: its record and its wall time taken from outside, and the load around it."""
    env = {**os.environ, "PYTHONPATH": str(tree)}  # ahead of an editable install of the project
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "surgery_launch", "demo", "--no-progress", "--epochs", str(epochs), "--out", str(out)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    record = json.loads((out / "result.json").read_text())
    return {"wall": wall, "record": record, "load": (load + os.getloadavg()[0]) / 2}


def breakdown(run: dict[str, Any]) -> dict[str, float | None]:
    """Seconds per row of the table; stage rows are None for a checkout whose record has no stages."""
    record, wall = run["record"], run["wall"]
    training = record["training"]["seconds"]
    stages = record.get("stages")
    rows: dict[str, float | None] = dict.fromkeys(ROWS)
    if stages:
        rows.update({stage: stages[stage] for stage in STAGES if stage != "training"})
        rows[SETUP] = stages["training"] - training
        rows["exit"] = wall - (stages["startup"] or 0.0) - record["timings"]["seconds"]
        rows["other"] = wall - training - sum(v for k, v in rows.items() if k != "other" and v)
    return {**rows, "outside training": wall - training, "training": training, "wall": wall}


def median_rows(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    rows = [breakdown(run) for run in runs]
    return {key: None if rows[0][key] is None else statistics.median(r[key] for r in rows) for key in rows[0]}


def verify_checks(runs: list[dict[str, Any]]) -> dict[str, float]:
    """verify's seconds check by check (eval- and train-mode outputs apart), medians; empty before they were kept."""
    per_run = [((run["record"].get("verification") or {}).get("report") or {}).get("seconds") or {} for run in runs]
    return {check: statistics.median(r.get(check, 0.0) for r in per_run) for check in per_run[0]}


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def change(before: float | None, after: float | None) -> str:
    if before is None or after is None or before < 0.05:
        return ""
    return f"{after / before - 1:+.0%}"


def table(before: dict[str, float | None], after: dict[str, float | None]) -> str:
    lines = ["| stage | what | before (s) | after (s) | change |", "| --- | --- | ---: | ---: | ---: |"]
    for row in ROWS:
        lines.append(f"| {row} | {WHAT[row]} | {seconds(before[row])} | {seconds(after[row])} | "
                     f"{change(before[row], after[row])} |")
    for row, words in (("outside training", "**outside training**"), ("training", "training (the loop)"),
                       ("wall", "wall, whole process")):
        lines.append(f"| {words} | | {seconds(before[row])} | {seconds(after[row])} | {change(before[row], after[row])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="demo epochs (default 30, the demo's own)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per side, alternating (default 2)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both sides (default: torch's own)")
    parser.add_argument("--before", default=BEFORE, help=f"git ref of the code before the cuts (default {BEFORE})")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 round: a smoke run; prints, writes no doc")
    parser.add_argument("--print-only", action="store_true",
                        help="print the table, leave docs/benchmarks.md as it is (a check against another ref)")
    args = parser.parse_args()
    epochs, rounds = (1, 1) if args.quick else (args.epochs, args.rounds)

    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": checkout(args.before, Path(tmp) / "before"), "after": ROOT}
        try:
            for r in range(rounds):
                sides = ["before", "after"] if r % 2 == 0 else ["after", "before"]
                for side in sides:
                    run = run_demo(trees[side], Path(tmp) / f"{side}{r}", epochs, args.threads)
                    runs[side].append(run)
                    print(f"round {r + 1}: {side}: {run['wall']:.1f} s, {breakdown(run)['outside training']:.1f} s "
                          f"outside training (load {run['load']:.1f})", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees["before"])], check=False)
    before, after = median_rows(runs["before"]), median_rows(runs["after"])
    ratio = after["outside training"] / before["outside training"]
    print(table(before, after))
    print(f"outside training: {before['outside training']:.1f} s -> {after['outside training']:.1f} s "
          f"({ratio:.2f}x; target <= {TARGET:.2f}x)")
    if args.quick or args.print_only:
        return
    loads = [run["load"] for side in runs.values() for run in side]
    write_section("stages", "Where a run's time goes (`surgery demo`)",
                  section(before, after, verify_checks(runs["after"]), loads, epochs, rounds, args.before,
                          args.threads))


def reach(before: dict[str, float | None], after: dict[str, float | None]) -> str:
    """How much of what is left LRsI and the exporter hold, against the target."""
    held = (after["lrsi"] or 0.0) + (after["export"] or 0.0)
    share = held / before["outside training"]
    beyond = share > TARGET  # those two alone exceed the target: it needs cutting into one of them
    return (f"LRsI and the export alone take {held:.1f} s, {share:.0%} of the time outside training before"
            + (f": the {TARGET:.2f}x target is out of reach without changing one of them (fewer LRsI iterations, "
               "another exporter)." if beyond else "."))


def section(before: dict[str, float | None], after: dict[str, float | None], checks: dict[str, float],
            loads: list[float], epochs: int, rounds: int, ref: str, threads: int | None) -> str:
    ratio = after["outside training"] / before["outside training"]
    without_lrsi = [row["outside training"] - (row["lrsi"] or 0.0) for row in (before, after)]
    largest = sorted((row for row in ROWS if (after[row] or 0) >= 0.05), key=lambda row: -(after[row] or 0))
    cores = len(os.sched_getaffinity(0))
    shared = max(loads) > cores / 2  # other work on the cores: everything slower than on an idle machine
    return (
        f"`surgery demo --no-progress` (run as `python -m surgery_launch`; {epochs} epochs: cifar:resnet20 on digits, the `tost` recipe "
        "with LRsI, verification in eval and train mode, sparse ONNX export with onnxruntime parity, the report) "
        f"from two checkouts, each its own process, alternating which starts, median of {rounds} rounds: "
        f"**before** is `{ref}` (stages timed, nothing cut), **after** this tree; "
        + (f"`OMP_NUM_THREADS={threads}` for both. " if threads else "torch's own thread count for both. ")
        + "Stages come from each run's "
        "`result.json` (`stages`), the wall time from outside the process; outside training is the wall time "
        "less the trainer's loop (`training.seconds`), as the issue counted it.\n\n"
        f"**Load:** the 1-minute load average was {min(loads):.1f} to {max(loads):.1f} on {cores} cores during the "
        "runs" + (": other jobs shared the machine, so every number is slower than on an idle one, the "
                  "compute of LRsI and training most.\n\n" if shared else ".\n\n")
        + table(before, after) + "\n\n"
        f"**Outside training: {before['outside training']:.1f} s -> {after['outside training']:.1f} s "
        f"({ratio:.2f}x; target <= {TARGET:.2f}x: {'met' if ratio <= TARGET else 'missed'}).** Without LRsI, whose "
        f"iterations the recipe sets: {without_lrsi[0]:.1f} s -> {without_lrsi[1]:.1f} s "
        f"({without_lrsi[1] / without_lrsi[0]:.2f}x). Verify, check by check (after): "
        + ", ".join(f"{words} {checks[check]:.3f} s" for check, words in CHECKS.items() if check in checks) + ".\n\n"
        "What was cut, every check kept: `import surgery.apps.cli` no longer imports SciPy's stats (only a sweep's "
        "paired interval needs it); the digits are read from the file scikit-learn ships rather than through "
        "`sklearn.datasets`, which imports SciPy too; the CLI freezes the garbage collector as its command ends, "
        "so the interpreter's exit no longer walks every object torch, its ONNX exporter and matplotlib made.\n\n"
        "Where the rest goes (after, largest first: "
        + ", ".join(f"{row} {after[row]:.1f} s" for row in largest) + "): **lrsi** is GradInit's double backward "
        "through the ghosted network once per training batch, compute the recipe asks for. **export** is almost "
        "all torch.onnx's dynamo exporter: importing onnx and onnxscript, building the torchlib registry "
        "(onnxscript parses every op's source), torch.export, its decompositions and the ONNX optimizer; our "
        "sparse initializers, the checker and both onnxruntime parity runs are a small part. **startup** is "
        "mostly `import torch`. The **training set-up** is mostly torch importing torch._dynamo for the first "
        "optimizer (the exporter would import it anyway). **report** is matplotlib: its import and three figures "
        "at 150 dpi. **exit** is what is left of the interpreter's shutdown. "
        + reach(before, after) + "\n\n"
        "Run: `python benchmarks/run_stages.py` (`--epochs`, `--rounds`, `--threads N`, `--before REF`, `--quick`, `--print-only`)."
    )


if __name__ == "__main__":
    main()
