"""What one graph per mode costs: the second trace at compile, and the forward's dispatch.

``surgery.compile`` traces every model in train and in eval mode to find out whether its forward
branches on ``self.training``. This measures, side by side in one run: a single ``surgery.trace``
against ``surgery.fx.modes.trace_modes`` on torchvision ResNet-50 (one graph: the extra cost is the
second trace), and the eval forward of a de-ghosted GoogLeNet (two graphs) against a plain
GraphModule of its eval program (the dispatch on ``self.training``). Medians of interleaved rounds,
one thread. Writes the "modes" section of docs/benchmarks.md.

    python benchmarks/modes_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torchvision
from report import write_section
from torch import fx

import surgery
from surgery.fx.modes import EVAL, mode_graph, trace_modes
from surgery.fx.tracing import trace


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tracing_cost(rounds: int) -> tuple[float, float]:
    model = torchvision.models.resnet50(num_classes=100)
    pairs = [(median_seconds(lambda: trace(model), 3), median_seconds(lambda: trace_modes(model), 3)) for _ in range(rounds)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


@torch.no_grad()
def dispatch_ratio(rounds: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's note on GoogLeNet's init
        model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    x = torch.randn(1, 3, 64, 64)
    two = surgery.deghost(surgery.compile(model, x)).eval()
    plain = fx.GraphModule(two, mode_graph(two.union, EVAL)).eval()
    for _ in range(3):
        two(x), plain(x)
    return statistics.median(median_seconds(lambda: two(x), 20) / median_seconds(lambda: plain(x), 20)
                             for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    one, both = tracing_cost(args.rounds)
    ratio = dispatch_ratio(args.rounds)
    body = (
        "| measured | value |\n|---|---:|\n"
        f"| ResNet-50 (one graph): `surgery.trace` | {one * 1000:.0f} ms |\n"
        f"| ResNet-50 (one graph): `trace_modes` (both modes, compared) | {both * 1000:.0f} ms |\n"
        f"| GoogLeNet (two graphs): eval forward, two-mode module / plain GraphModule of its eval program | "
        f"{ratio:.3f} |\n\n"
        f"The second trace adds {(both - one) * 1000:.0f} ms to compiling a one-graph ResNet-50 (and as much to "
        "`verify`, which traces the original in both modes); a model with two graphs runs its program with no "
        "measurable dispatch cost. Medians of interleaved rounds on one thread."
    )
    write_section("modes", "One graph per mode: what it costs", body)


if __name__ == "__main__":
    main()
