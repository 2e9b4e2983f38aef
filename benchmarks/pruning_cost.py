"""Seconds and peak memory to find SNIP, GraSP and SynFlow masks for torchvision ResNet-50 at 224x224.

ResNet-50 (num_classes=1000, torchvision's init), 90% sparsity, each method's default (global)
scope. SNIP and GraSP score one batch of 8 random 224x224 images with random labels (the cost
does not depend on the values; 8 keeps a CPU run in minutes); SynFlow is data-free and runs its
rounds (default 100) on a batch of one. Each method runs once in a fresh Python process, so
its peak memory is its own: ``ru_maxrss`` of that process minus the same reading just before
the finder is called (the model and the batch are built by then); on CUDA,
``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.

For SynFlow the forward + backward passes are counted (a forward hook on the model, which the
finder's copy inherits, and a gradient hook on each output), and its time is divided by one
forward + backward of a batch of one on the same float64, absolute-valued copy SynFlow scores:
the target is that ``rounds`` rounds cost about ``rounds`` such passes, i.e. that ranking and
masking add little. SNIP's and GraSP's times are shown next to one forward + backward of their
batch in train mode. Measures, never asserts. Writes the "pruning" section of docs/benchmarks.md.

    python benchmarks/pruning_cost.py [--device cuda] [--rounds 100] [--batch 8] [--quick]

``--quick``: ResNet-18 at 64x64, printed only (no doc written).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision
from report import write_section

import surgery.pruning.synflow as synflow
from surgery.pruning import find_masks, prunable_for
from surgery.pruning.budget import weights_of
from surgery.pruning.snip import batch_loss, scoring_copy
from surgery.pruning.synflow import linearized_copy, synflow_gradients

METHODS = ("snip", "grasp", "synflow")
TITLE = "Mask finders: SNIP, GraSP, SynFlow on ResNet-50 (224x224)"


# ------------------------------------------------------------------ one method, in its own process


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    factory = torchvision.models.resnet18 if args.quick else torchvision.models.resnet50
    model = factory(num_classes=1000).to(args.device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    y = torch.randint(1000, (args.batch,), generator=generator)
    return model, [(x.to(args.device), y.to(args.device))]


class PassCounter:
    """Counts forward passes (and their batch sizes) and backward passes through the model's output.

    The hook is a plain closure: ``copy.deepcopy`` shares functions, so the finder's copy of the
    model reports here (a bound method would be copied along with its counter)."""

    def __init__(self, model: torch.nn.Module):
        self.batch_sizes: list[int] = []
        self.backward_calls: list[int] = []
        batch_sizes, backward_calls = self.batch_sizes, self.backward_calls

        def count(module, inputs, output) -> None:
            batch_sizes.append(int(inputs[0].shape[0]))
            if output.requires_grad:
                output.register_hook(lambda grad: backward_calls.append(1))

        self.handle = model.register_forward_hook(count)

    def remove(self) -> None:
        self.handle.remove()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(step, device: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_synflow_pass(model: torch.nn.Module, args: argparse.Namespace) -> float:
    """One forward + backward of a batch of one on SynFlow's own float64, absolute-valued copy."""
    net = linearized_copy(model, torch.float64, torch.device(args.device))
    weights = weights_of(net, list(prunable_for(net)))
    ones = torch.ones(1, 3, args.size, args.size, dtype=torch.float64, device=args.device)
    return median_seconds(lambda: synflow_gradients(net, weights, ones), args.device)


def one_train_pass(model: torch.nn.Module, batches, args: argparse.Namespace) -> float:
    """One forward + backward of the batch in train mode (what SNIP runs once per batch)."""
    net = scoring_copy(model, batches)
    params = list(weights_of(net, list(prunable_for(net))).values())
    x, y = batches[0]
    return median_seconds(lambda: torch.autograd.grad(batch_loss(net, x, y), params), args.device)


def time_synflow_passes(device: str) -> list[float]:
    """Time every forward + backward SynFlow runs, inside the run (robust to a machine whose load drifts)."""
    seconds: list[float] = []

    def timed(*args, **kwargs):
        sync(device)
        start = time.perf_counter()
        grads = synflow_gradients(*args, **kwargs)
        sync(device)
        seconds.append(time.perf_counter() - start)
        return grads

    synflow.synflow_gradients = timed
    return seconds


def measure(method: str, args: argparse.Namespace) -> dict[str, object]:
    model, batches = build(args)
    pass_seconds = time_synflow_passes(args.device) if method == "synflow" else []
    data = None if method == "synflow" else batches
    options = {"rounds": args.rounds, "input_shape": (3, args.size, args.size)} if method == "synflow" else {}
    counter = PassCounter(model) if method == "synflow" else None
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before_mib = torch.cuda.memory_allocated() / 2**20 if cuda else peak_rss_mib()
    start = time.perf_counter()
    masks = find_masks(model, method, args.sparsity, batches=data, **options)
    sync(args.device)
    seconds = time.perf_counter() - start
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    result: dict[str, object] = {
        "method": method, "seconds": seconds, "peak_mib": peak_mib - before_mib, "base_mib": before_mib,
        "sparsity": 1 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()),
    }
    if counter is not None:
        counter.remove()
        result.update(forwards=len(counter.batch_sizes), backwards=len(counter.backward_calls),
                      batch_sizes=sorted(set(counter.batch_sizes)), in_passes=sum(pass_seconds),
                      one_pass=one_synflow_pass(model, args))
    else:
        result["one_pass"] = one_train_pass(model, batches, args)
    return result


# ------------------------------------------------------------------ the driver


def run_isolated(method: str, args: argparse.Namespace) -> dict[str, object]:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", method, "--device", args.device,
               "--rounds", str(args.rounds), "--batch", str(args.batch), "--sparsity", str(args.sparsity)]
    if args.quick:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict], args: argparse.Namespace) -> str:
    cuda = args.device.startswith("cuda")
    model = "ResNet-18" if args.quick else "ResNet-50"
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    memory = "peak CUDA memory over the model's (MiB)" if cuda else "peak RSS increase (MiB)"
    rows = []
    for method, r in results.items():
        passes = (f"{r['forwards']} fwd + {r['backwards']} bwd, batch {r['batch_sizes']}" if method == "synflow"
                  else f"1 batch of {args.batch}")
        rows.append(f"| {method} | {passes} | {r['seconds']:.1f} | {r['one_pass']:.3f} | "
                    f"{r['seconds'] / r['one_pass']:.1f} | {r['peak_mib']:.0f} | {r['sparsity']:.4f} |")
    body = (
        f"torchvision {model} (num_classes=1000), {args.size}x{args.size}, {args.sparsity:.0%} sparsity, global "
        f"ranking, on {device}. SNIP and GraSP: one batch of {args.batch} random images; SynFlow: data-free, "
        f"{args.rounds} rounds on a batch of one in float64. One run per method, each in a fresh process "
        "(cold: the model copy and first-call costs included). \"one pass\" is one forward + backward: of the "
        "batch in train mode for SNIP / GraSP, of a batch of one on SynFlow's float64 copy for SynFlow.\n\n"
        f"| method | data / passes | seconds | one pass (s) | seconds / one pass | {memory} | sparsity |\n"
        "|---|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
    )
    found = results.get("synflow")
    if found:
        passes = found["seconds"] / found["one_pass"]
        rest = found["seconds"] - found["in_passes"]
        body += (f"\n\nSynFlow ran {found['forwards']} forward and {found['backwards']} backward passes for "
                 f"{args.rounds} rounds and took as long as {passes:.0f} standalone passes of a batch of one "
                 f"(target: about {args.rounds}). Timed inside the run, its passes took {found['in_passes']:.1f} s "
                 f"and everything else (the copy, ranking, masking) {rest:.1f} s, "
                 f"{rest / found['seconds']:.0%} of the total.")
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--quick", action="store_true", help="ResNet-18 at 64x64, print only")
    parser.add_argument("--measure", choices=METHODS, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    args.size = 64 if args.quick else 224

    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return
    results = {}
    for method in METHODS:
        results[method] = run_isolated(method, args)
        print(f"{method}: {results[method]['seconds']:.1f} s", flush=True)
    body = report(results, args)
    print(body)
    if not args.quick:
        write_section("pruning", TITLE, body)


if __name__ == "__main__":
    main()
