"""Seconds to compile + de-ghost + verify (a, b): torchvision ResNet-50, and every model of the zoo.

Default: torchvision ResNet-50 (target: under 0.5 s). Full ToST recipe (conv1x1 ghost skips,
PSwish, 90% random masks), example input 2x3x32x32 as in the README. Reports the median of warm
runs, stage by stage, and the first (cold) run. Writes the "compile" section of docs/benchmarks.md.

``--zoo``: every model ``make zoo`` checks (torchvision classifiers, one model per timm family,
the task families, the Hugging Face classes), each in its own process, as conformance builds and
compiles it: real weights at its zoo input size (on the meta device above ``--max-params``), in
train mode as training starts, the zoo's recipe. Stages: compile (both modes traced), de-ghost,
verify (a) against the original traced in each mode, (b) strict load. Target: at most 2 s per
model. Rows are cached in ``.compile-time-cache/`` so a stopped run resumes (``--fresh``: start
over). Writes the "compile-zoo" section.

    python benchmarks/compile_time.py [--repeats 7] [--size 32]
    python benchmarks/compile_time.py --zoo [--only torchvision|timm|hf|tasks] [--filter TEXT] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from report import write_section

import surgery

TARGET_SECONDS = 0.5
ZOO_TARGET_SECONDS = 2.0
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".compile-time-cache"
STAGES = ("compile", "deghost", "verify (a)", "verify (b)")


def one_run(model, inputs, recipe, submodule=None) -> dict[str, float]:
    """Each stage's seconds; ``recipe``: a dict, or a function compiling (model, inputs) -> ghosted."""
    gc.collect()  # what the previous run left behind is not this run's cost
    times = {}
    start = time.perf_counter()
    ghosted = recipe(model, inputs) if callable(recipe) else surgery.compile(model, inputs, recipe)
    times["compile"] = time.perf_counter() - start
    mark = time.perf_counter()
    clean = surgery.deghost(ghosted)
    times["deghost"] = time.perf_counter() - mark
    report = surgery.verify(model, clean)  # (a) isomorphic, (b) strict load; no inputs: no numeric checks
    times["verify (a)"], times["verify (b)"] = report.seconds["graph"], report.seconds["strict_load"]
    times["total"] = time.perf_counter() - start
    return times


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}


# ------------------------------------------------------------------ ResNet-50


def resnet50(repeats: int, size: int) -> None:
    import torchvision

    from surgery.pruning import random_masks

    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=100)
    x = torch.randn(2, 3, size, size)
    recipe = {"ghost_skip": {"projection": "conv1x1"}, "soft_activation": {"kind": "pswish"},
              "masks": random_masks(model, 0.9)}
    cold = one_run(model, x, recipe)
    median = median_of([one_run(model, x, recipe) for _ in range(repeats)])

    rows = "\n".join(f"| {stage} | {median[stage]:.3f} | {cold[stage]:.3f} |" for stage in cold)
    verdict = "meets" if median["total"] < TARGET_SECONDS else "misses"
    body = (
        f"torchvision ResNet-50 (num_classes=100), input 2x3x{size}x{size}, recipe: conv1x1 ghost "
        f"skips + PSwish + 90% random masks; `surgery.deghost` (a copy) and `surgery.verify(model, clean)` "
        f"(checks a and b). Median of {repeats} warm runs; the cold run is the first in the process.\n\n"
        "| stage | warm median (s) | cold (s) |\n|---|---:|---:|\n"
        f"{rows}\n\n"
        f"Total {median['total']:.3f} s warm: {verdict} the {TARGET_SECONDS} s target."
    )
    print(body)
    write_section("compile", "Compile + de-ghost + verify (ResNet-50)", body)


# ------------------------------------------------------------------ the zoo


def measure_one(spec: str, repeats: int, max_params: float) -> dict:
    """In the child process: build the model as conformance does, time the cold run and ``repeats`` warm ones."""
    import warnings

    from surgery.apps import conformance
    from surgery.zoo import catalog as zoo
    from surgery.fx.graph import as_tuple
    from surgery.zoo.tasks import default_submodule, train_inputs

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # one core, as a second job or the data loader leaves it
    params = sum(p.numel() for p in zoo.build(spec, "meta")[0].parameters())
    device = "cpu" if params <= max_params else "meta"
    model, x = zoo.build(spec, device)
    inputs = train_inputs(model, as_tuple(x), seed=0)
    submodule = default_submodule(spec)
    model.train()
    masks = conformance.zoo_masks(model, conformance.SPARSITY, 0, device == "meta", submodule or ())

    adapted = []

    def as_the_zoo(model, inputs):  # the first run: the zoo's recipe, falling back to Linear skips
        ghosted, note = conformance.compile_with_ghosts(model, inputs, masks, submodule)
        adapted.append(note)
        return ghosted

    def as_a_user(model, inputs):  # then the recipe that compiles, as a user would give it
        recipe = conformance.ghost_recipe(masks, linear=adapted[0] == conformance.LINEAR_SKIPS)
        return surgery.compile(model, inputs, recipe, submodule=submodule)

    cold = one_run(model, inputs, as_the_zoo)
    warm = median_of([one_run(model, inputs, as_a_user) for _ in range(repeats)])
    return {"model": spec, "device": device, "params": params, "repeats": repeats, "linear_skips": bool(adapted[0]),
            "cold": {k: round(v, 3) for k, v in cold.items()}, "warm": {k: round(v, 3) for k, v in warm.items()}}


def cached_row(spec: str, repeats: int, max_params: float, timeout: float, fresh: bool) -> dict:
    path = CACHE / (spec.replace(":", "__").replace("/", "_") + ".json")
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    command = [sys.executable, __file__, "--one", spec, "--repeats", str(repeats), "--max-params", str(max_params)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        row = json.loads(lines[-1]) if lines else {"model": spec, "error": done.stderr.strip()[-300:]}
    except subprocess.TimeoutExpired:
        row = {"model": spec, "error": f"timed out after {timeout:.0f} s"}
    CACHE.mkdir(exist_ok=True)
    path.write_text(json.dumps(row))
    return row


def zoo_body(rows: list[dict], repeats: int) -> str:
    measured = [r for r in rows if "warm" in r]
    failed = [r for r in rows if "warm" not in r]
    over = sorted((r for r in measured if r["warm"]["total"] > ZOO_TARGET_SECONDS), key=lambda r: -r["warm"]["total"])
    totals = sorted(r["warm"]["total"] for r in measured)
    lines = [
        f"Every model of the conformance zoo ({len(rows)}), each in its own process on one thread, built and compiled "
        "as `make zoo` does: real weights at its zoo input size (on the meta device above the size limit), train "
        "mode, the zoo's recipe (conv1x1 ghost skips, PSwish, 90% random masks; Linear skips where the body has "
        f"no spatial conv). Median of {repeats} warm runs after a cold one, each after `gc.collect()`; the cold run "
        "compiles as the zoo does, so for a model that needs Linear skips it includes the attempt with conv skips "
        "that finds none, and the warm runs give the recipe that compiles, as a user would. Target: "
        f"compile + de-ghost + verify (a, b) at most {ZOO_TARGET_SECONDS:.0f} s.\n",
        f"**{len(measured) - len(over)} of {len(measured)} measured models within {ZOO_TARGET_SECONDS:.0f} s** "
        + (f"(median {statistics.median(totals):.2f} s, slowest {totals[-1]:.2f} s)" if totals else "")
        + (f"; {len(failed)} not measured: " + ", ".join(f"`{r['model']}` ({_last_line(r['error'])})" for r in failed)
           if failed else "") + ".\n",
    ]
    header = "| model | device | parameters | " + " | ".join(STAGES) + " | total (s) | cold (s) |"
    rule = "|---|---|---:|" + "---:|" * (len(STAGES) + 2)

    def row(r: dict) -> str:
        stages = " | ".join(f"{r['warm'][s]:.2f}" for s in STAGES)
        return (f"| `{r['model']}` | {r['device']} | {r['params'] / 1e6:.1f}M | {stages} | "
                f"{r['warm']['total']:.2f} | {r['cold']['total']:.2f} |")

    if over:
        lines += ["Over the target, slowest first, with the stage that takes most of it:\n",
                  header.replace(" cold (s) |", " cold (s) | most |"), rule + "---|",
                  *(row(r) + f" {_largest_stage(r)} |" for r in over), ""]
    lines += ["<details><summary>Every model</summary>\n", header, rule,
              *map(row, sorted(measured, key=lambda r: r["model"])), "\n</details>"]
    return "\n".join(lines)


def _last_line(error: str) -> str:
    """The exception's own line of a child's stderr."""
    return (error.strip().splitlines() or [""])[-1][:160].replace("|", "\\|")


def _largest_stage(row: dict) -> str:
    stage = max(STAGES, key=lambda s: row["warm"][s])
    return f"{stage} ({100 * row['warm'][stage] / row['warm']['total']:.0f}%)"


def zoo_specs(only: str | None, text: str | None) -> list[str]:
    from zoo import HF_GROUP, TASK_GROUPS, zoo_groups

    chosen = {None: lambda name: True, "torchvision": lambda name: name == "torchvision",
              "timm": lambda name: name.startswith("timm"), "hf": lambda name: name == HF_GROUP,
              "tasks": lambda name: name in TASK_GROUPS.values()}[only]
    specs = [spec for name, specs in zoo_groups().items() if chosen(name) for spec in specs]
    return [s for s in specs if text in s] if text else specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="warm runs per model (default 7; --zoo: 3)")
    parser.add_argument("--size", type=int, default=32, help="ResNet-50's input size")
    parser.add_argument("--zoo", action="store_true", help="every zoo model -> the compile-zoo section")
    parser.add_argument("--only", choices=("torchvision", "timm", "hf", "tasks"), help="--zoo: only this group")
    parser.add_argument("--filter", metavar="TEXT", help="--zoo: only models whose spec contains TEXT")
    parser.add_argument("--max-params", type=float, default=350e6, help="--zoo: larger models compile on meta")
    parser.add_argument("--timeout", type=float, default=600, help="--zoo: seconds per model")
    parser.add_argument("--fresh", action="store_true", help="--zoo: measure again, ignoring the cache")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.repeats or 3, args.max_params)))
        return
    if not args.zoo:
        resnet50(args.repeats or 7, args.size)
        return
    specs = zoo_specs(args.only, args.filter)
    rows = []
    for i, spec in enumerate(specs, 1):
        row = cached_row(spec, args.repeats or 3, args.max_params, args.timeout, args.fresh)
        rows.append(row)
        shown = f"{row['warm']['total']:.2f} s" if "warm" in row else "not measured: " + row["error"][:100]
        print(f"[{i}/{len(specs)}] {spec}: {shown}", flush=True)
    if args.only or args.filter:  # a part: the section keeps every cached row
        rows = [json.loads(p.read_text()) for p in sorted(CACHE.glob("*.json"))]
    write_section("compile-zoo", "Compile + de-ghost + verify, every zoo model", zoo_body(rows, args.repeats or 3))
    print(f"{sum('warm' in r and r['warm']['total'] <= ZOO_TARGET_SECONDS for r in rows)} of {len(rows)} within "
          f"{ZOO_TARGET_SECONDS:.0f} s")


if __name__ == "__main__":
    main()
