"""``accuracy-vs-sparsity.png``: one line per combination of the grid's other fields (method x recipe),
mean test accuracy over seeds with a std error bar at each sparsity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from surgery.train.report.plots import paper_figure, save_figure
from surgery.train.sweeps.table import Cell

SPARSITY = "mask.sparsity"


def plot_accuracy(cells: Sequence[Cell], fields: Sequence[str], metric: str, out_png: Path, title: str) -> Path | None:
    """Draw the cells that completed; None when none did. Without a sparsity field every line is one point
    at the base config's sparsity, read from the runs."""
    lines: dict[str, list[tuple[float, float, float]]] = {}
    others = [f for f in fields if f != SPARSITY]
    for cell in cells:
        stat, sparsity = cell.stats[metric], cell.stats["sparsity"]
        if not stat.n:
            continue
        x = float(cell.values[SPARSITY]) if SPARSITY in cell.values else sparsity.mean
        name = ", ".join(f"{f.rsplit('.', 1)[-1]}={cell.values[f]}" for f in others) or "runs"
        lines.setdefault(name, []).append((x * 100, stat.mean * 100, (stat.std or 0.0) * 100))
    if not lines:
        return None
    with paper_figure(5.5, 3.6) as figure:
        ax = figure.add_subplot()
        for name, points in lines.items():
            xs, ys, errors = zip(*sorted(points))
            ax.errorbar(xs, ys, yerr=errors, marker="o", markersize=3.5, capsize=3, label=name)
        ax.set_xlabel("sparsity (% of prunable weights zero)")
        what = "best-validation epoch" if metric == "test_acc_best_val" else "last epoch"
        ax.set_ylabel(f"test accuracy, {what} (%)")
        ax.set_title(title)
        ax.legend(loc="best")
        return save_figure(figure, out_png)
