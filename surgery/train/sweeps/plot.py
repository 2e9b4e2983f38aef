"""``accuracy-vs-sparsity.png``: one line per combination of the grid's other fields (method x recipe),
mean test accuracy over seeds with a std error bar at each sparsity (``accuracy-vs-effective-sparsity.png``: the
same at the sparsity that counts kept ghosts' parameters, drawn when some arm keeps them); ``paired-differences.png``: each arm's
per-seed differences from plain sparse training, their mean and its 95% interval.

A recipe keeps one colour and a method one line style across the figure, so "ToST vs none" reads
the same in every method; lines are nudged apart along x so their error bars do not hide each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from surgery.train.report.plots import paper_figure, save_figure
from surgery.train.sweeps.paired import EQUAL_SIZE, Comparison
from surgery.train.sweeps.table import Cell

SPARSITY, RECIPE, EFFECTIVE = "mask.sparsity", "recipe", "effective_sparsity"
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
LABEL_CHARACTERS = 44
NUDGE = 0.012  # of the x range, between neighbouring lines
SINGLE_SPAN = 20.0  # percentage points of x shown around a grid with one sparsity


def plot_accuracy(cells: Sequence[Cell], fields: Sequence[str], metric: str, out_png: Path, title: str, *,
                  x_axis: str = "sparsity") -> Path | None:
    """Draw the cells that completed; None when none did. ``x_axis``: ``sparsity`` (the grid's value, else what
    the runs reached) or ``effective_sparsity`` (counting the parameters of ghosts kept to the end)."""
    lines: dict[tuple, list[tuple[float, float, float]]] = {}
    others = [f for f in fields if f != SPARSITY]
    for cell in cells:
        stat, reached = cell.stats[metric], cell.stats[x_axis]
        if not stat.n:
            continue
        given = cell.values.get(SPARSITY) if x_axis == "sparsity" else None
        x = float(given) if isinstance(given, (int, float)) else reached.mean
        key = tuple(str(cell.values.get(f)) for f in others)
        lines.setdefault(key, []).append((x * 100, stat.mean * 100, (stat.std or 0.0) * 100))
    if not lines:
        return None
    recipes = list(dict.fromkeys(_part(key, others, RECIPE) for key in lines))
    groups = list(dict.fromkeys(_rest(key, others) for key in lines))
    sparsities = sorted({x for points in lines.values() for x, _, _ in points})
    step = NUDGE * ((sparsities[-1] - sparsities[0]) or SINGLE_SPAN)
    with paper_figure(8.0, 4.0) as figure:
        import matplotlib

        ax = figure.add_subplot()
        cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        colour = {recipe: cycle[i % len(cycle)] for i, recipe in enumerate(recipes)}
        for i, (key, points) in enumerate(lines.items()):
            xs, ys, errors = zip(*sorted(points))
            shift = (i - (len(lines) - 1) / 2) * step
            group = groups.index(_rest(key, others))
            ax.errorbar([x + shift for x in xs], ys, yerr=errors, capsize=2.5, markersize=4,
                        color=colour[_part(key, others, RECIPE)], linestyle=LINE_STYLES[group % len(LINE_STYLES)],
                        marker=MARKERS[group % len(MARKERS)], label=_label(key, others))
        sparsity_axis(ax, sparsities, effective=x_axis == EFFECTIVE)
        what = "best-validation epoch" if metric == "test_acc_best_val" else "last epoch"
        ax.set_ylabel(f"test accuracy, {what} (%)")
        ax.set_title(title)
        if len(lines) > 1 or others:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
        return save_figure(figure, out_png)


def sparsity_axis(ax, sparsities: Sequence[float], *, effective: bool = False) -> None:
    """Ticks at the sparsities the grid ran (the lines are nudged around them), no offset notation, and a
    readable span when there is only one."""
    ax.set_xticks(list(sparsities), [f"{x:.4g}%" for x in sparsities], fontsize=7 if len(sparsities) > 4 else None)
    if len(sparsities) == 1:
        ax.set_xlim(sparsities[0] - SINGLE_SPAN / 2, sparsities[0] + SINGLE_SPAN / 2)
    ax.set_xlabel("effective sparsity (% of conv/linear weights and kept ghost parameters zero)" if effective
                  else "sparsity (% of prunable weights zero)")


def differs_in_effect(cells: Sequence[Cell]) -> bool:
    """Whether any cell's effective sparsity is not its sparsity (ghosts kept): then a second plot says so."""
    return any(c.stats[EFFECTIVE].n and abs(c.stats[EFFECTIVE].mean - c.stats["sparsity"].mean) > 1e-9 for c in cells)


def _part(key: tuple, fields: Sequence[str], field: str) -> str:
    return key[fields.index(field)] if field in fields else ""


def _rest(key: tuple, fields: Sequence[str]) -> tuple:
    return tuple(v for f, v in zip(fields, key) if f != RECIPE)


def _label(key: tuple, fields: Sequence[str]) -> str:
    text = ", ".join(f"{f.rsplit('.', 1)[-1]}={v}" for f, v in zip(fields, key) if v != "None") or "runs"
    return text if len(text) <= LABEL_CHARACTERS else text[:LABEL_CHARACTERS - 1] + "…"


def plot_differences(comparisons: Sequence[Comparison], fields: Sequence[str], metric: str, out_png: Path,
                     title: str) -> Path | None:
    """One row per arm: each seed's paired difference (a dot), their mean and its 95% interval (a bar);
    the line at 0 is plain sparse training. None when no arm has a pair."""
    shown = [c for c in comparisons if c.n]
    if not shown:
        return None
    labels = [", ".join(f"{f.rsplit('.', 1)[-1]}={c.values[f]}" for f in fields if f in c.values)
              + (" vs none of its size" if c.kind == EQUAL_SIZE else "") for c in shown]
    with paper_figure(8.0, 0.9 + 0.45 * len(shown)) as figure:
        ax = figure.add_subplot()
        for row, comparison in enumerate(shown):
            y = len(shown) - 1 - row
            ax.scatter(list(comparison.differences.values()), [y] * comparison.n, s=14, color="0.55", zorder=2)
            interval = comparison.interval
            if interval is not None:
                ax.plot(interval, [y, y], color="black", linewidth=2.0, zorder=3)
            ax.plot([comparison.mean], [y], marker="D", color="black", markersize=5, zorder=4)
        ax.axvline(0.0, color="tab:red", linewidth=1.0, linestyle="--")
        ax.set_yticks(range(len(shown)), list(reversed(labels)), fontsize=7)
        what = "best-validation epoch" if metric == "test_acc_best_val" else "last epoch"
        ax.set_xlabel(f"test accuracy minus `none`, same seed ({what}, points)")
        ax.set_title(title)
        return save_figure(figure, out_png)
