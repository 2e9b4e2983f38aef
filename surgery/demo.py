"""The embedded demo job (``surgery demo``): compile -> train -> de-ghost -> verify -> sparse ONNX.

Offline and on CPU: a ResNet-18, random 90% masks, the full ToST recipe, a short SGD
run on one fixed random batch while alpha goes 1 -> 0 and beta up, then de-ghosting,
verification and a sparse ONNX export. One function per stage; ``run`` chains them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from torch import nn

import surgery
from surgery.graph import deepcopy_module
from surgery.masks import save_masks, weight_sparsity
from surgery.models import build_model
from surgery.pruning import random_masks
from surgery.recipe import TOST_RECIPE


@dataclass
class DemoConfig:
    """The embedded demo job; stages read only this, so a real dataset replaces ``demo_batch`` alone."""

    model: str = "torchvision:resnet18"
    num_classes: int = 10
    input_size: int = 32
    batch_size: int = 8
    sparsity: float = 0.9
    steps: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    beta_end: float = 50.0  # PSwish's beta at the last step (ReLU in the limit)
    seed: int = 0


@dataclass
class DemoResult:
    losses: list[float]
    deghosted_loss: float
    sparsity: float
    export: Any  # surgery.ExportInfo
    seconds: float


def run(config: DemoConfig, out: Path, console: Console) -> DemoResult:
    """Run every stage with progress bars, print the verification and a summary; return the result."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    with _progress(console) as progress:
        model, ghosted, (x, y) = prepare(config, out, progress)
        losses = train(ghosted, x, y, config, progress)
        clean, report = finish(model, ghosted, x, progress)
        info = export(clean, x, out, progress)
    result = DemoResult(losses, batch_loss(clean, x, y), weight_sparsity(clean), info, time.perf_counter() - start)
    console.print(str(report), markup=False)
    print_summary(console, config, result, out)
    return result


def batch(config: DemoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch of images and labels: the whole 'dataset' of the offline demo."""
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.randn(config.batch_size, 3, config.input_size, config.input_size, generator=generator)
    y = torch.randint(0, config.num_classes, (config.batch_size,), generator=generator)
    return x, y


def prepare(config: DemoConfig, out: Path, progress: Progress):
    """Build the model, draw and save random masks, compile with the full ToST recipe."""
    task = progress.add_task("build, mask, compile", total=1)
    model = build_model(config.model, config.num_classes)
    masks = random_masks(model, config.sparsity, seed=config.seed)
    save_masks(masks, out / "masks.safetensors", method="random", model=config.model, seed=config.seed)
    x, y = batch(config)
    ghosted = surgery.compile(model, x, {**TOST_RECIPE, "masks": masks})
    progress.update(task, completed=1)
    return model, ghosted, (x, y)


def train(ghosted: nn.Module, x: torch.Tensor, y: torch.Tensor, config: DemoConfig, progress: Progress):
    """SGD on the batch while alpha goes 1 -> 0 and beta 1 -> beta_end, linearly; returns the losses."""
    optimizer = torch.optim.SGD(
        ghosted.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    task = progress.add_task("train (alpha 1->0, beta up)", total=config.steps)
    ghosted.train()
    losses = []
    for step in range(config.steps):
        surgery.set_ghost_strength(ghosted, **ghost_strength(step, config))
        loss = F.cross_entropy(ghosted(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        progress.update(task, advance=1, loss=losses[-1])
    return losses


def ghost_strength(step: int, config: DemoConfig) -> dict[str, float]:
    """Linear schedules: alpha reaches 0 and beta reaches ``beta_end`` at the last step."""
    t = step / max(config.steps - 1, 1)
    return {"alpha": 1.0 - t, "beta": 1.0 + t * (config.beta_end - 1.0)}


def finish(model: nn.Module, ghosted: torch.fx.GraphModule, x: torch.Tensor, progress: Progress):
    """De-ghost (masks baked in) and verify the result against the original ResNet-18."""
    task = progress.add_task("de-ghost, verify", total=1)
    clean = surgery.deghost(ghosted)
    report = surgery.verify(model, clean, x, ghosted=ghosted)
    progress.update(task, completed=1)
    return clean, report


def export(clean: nn.Module, x: torch.Tensor, out: Path, progress: Progress):
    task = progress.add_task("export sparse ONNX", total=1)
    info = surgery.export_onnx(clean, x[:2], out / "model.onnx", sparse=True)
    progress.update(task, completed=1)
    return info


@torch.no_grad()
def batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Cross-entropy with batch statistics (train-mode norms), on a copy so no running stat moves."""
    probe = deepcopy_module(model).train()
    return F.cross_entropy(probe(x), y).item()


def print_summary(console: Console, config: DemoConfig, result: DemoResult, out: Path) -> None:
    info = result.export
    table = Table(title="surgery demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    size, losses = config.input_size, result.losses
    table.add_row("model", f"{config.model}, {config.num_classes} classes, {size}x{size} inputs")
    table.add_row("training loss", f"{losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
    table.add_row("after de-ghosting", f"loss {result.deghosted_loss:.4f} on the same batch (ghosts gone)")
    table.add_row("sparsity", f"{result.sparsity:.1%} of conv/linear weights are zero (target {config.sparsity:.0%})")
    sizes = f"{info.sparse_bytes / 1e6:.2f} MB sparse, {info.dense_bytes / 1e6:.2f} MB dense"
    table.add_row("ONNX size", f"{sizes} ({info.size_ratio:.0%} of dense)")
    table.add_row("ONNX parity", f"max |diff| vs PyTorch {info.max_abs_error:.2g} (onnxruntime)")
    table.add_row("written to", str(out))
    table.add_row("files", ", ".join(sorted(p.name for p in out.iterdir())))
    table.add_row("time", f"{result.seconds:.1f} s")
    console.print(table)


class LossColumn(ProgressColumn):
    """The latest loss of a task that reports one."""

    def render(self, task) -> Text:
        loss = task.fields.get("loss")
        return Text("" if loss is None else f"loss {loss:.3f}")


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        LossColumn(),
        TimeElapsedColumn(),
        console=console,
    )


