"""Seconds to compile + de-ghost + verify (a, b) torchvision ResNet-50 (target: under 0.5 s).

Full ToST recipe (conv1x1 ghost skips, PSwish, 90% random masks), example input
2x3x32x32 as in the README. Reports the median of warm runs, stage by stage, and the
first (cold) run. Writes the "compile" section of docs/benchmarks.md.

    python benchmarks/compile_time.py [--repeats 7] [--size 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from report import write_section

import surgery
from surgery.pruning import random_masks

TARGET_SECONDS = 0.5


def one_run(model, x, masks) -> dict[str, float]:
    recipe = {"ghost_skip": {"projection": "conv1x1"}, "soft_activation": {"kind": "pswish"}, "masks": masks}
    times = {}
    start = time.perf_counter()
    ghosted = surgery.compile(model, x, recipe)
    times["compile"] = time.perf_counter() - start
    mark = time.perf_counter()
    clean = surgery.deghost(ghosted)
    times["deghost"] = time.perf_counter() - mark
    mark = time.perf_counter()
    surgery.verify(model, clean)  # (a) isomorphic, (b) strict load; no inputs: no numeric checks
    times["verify (a, b)"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=100)
    x = torch.randn(2, 3, args.size, args.size)
    masks = random_masks(model, 0.9)
    cold = one_run(model, x, masks)
    warm = [one_run(model, x, masks) for _ in range(args.repeats)]
    median = {stage: statistics.median(run[stage] for run in warm) for stage in cold}

    rows = "\n".join(f"| {stage} | {median[stage]:.3f} | {cold[stage]:.3f} |" for stage in cold)
    verdict = "meets" if median["total"] < TARGET_SECONDS else "misses"
    body = (
        f"torchvision ResNet-50 (num_classes=100), input 2x3x{args.size}x{args.size}, recipe: conv1x1 ghost "
        f"skips + PSwish + 90% random masks; `surgery.deghost` (a copy) and `surgery.verify(model, clean)` "
        f"(checks a and b). Median of {args.repeats} warm runs; the cold run is the first in the process.\n\n"
        "| stage | warm median (s) | cold (s) |\n|---|---:|---:|\n"
        f"{rows}\n\n"
        f"Total {median['total']:.3f} s warm: {verdict} the {TARGET_SECONDS} s target."
    )
    print(body)
    write_section("compile", "Compile + de-ghost + verify (ResNet-50)", body)


if __name__ == "__main__":
    main()
