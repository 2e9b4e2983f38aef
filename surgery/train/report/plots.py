"""The report's figures: training curves, schedules and per-layer sparsity.

Plots are drawn on ``matplotlib.figure.Figure`` objects with an Agg canvas, never through
pyplot, so a user's interactive backend and open figures are untouched; matplotlib is
imported inside the functions so that importing ``surgery`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from surgery.errors import ReportError
from surgery.train.report.tables import Table, present, read_metrics, read_table

SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
EVENT_COLOUR = "#7f7f7f"
# Line styles of distinct event texts in a legend (cycled): grey shades and dash patterns.
EVENT_STYLES = (
    {"color": "#555555", "linestyle": "--"},
    {"color": "#9467bd", "linestyle": ":"},
    {"color": "#8c564b", "linestyle": "-."},
    {"color": "#aaaaaa", "linestyle": (0, (5, 1, 1, 1, 1, 1))},
)
MARKERS_UP_TO = 40  # points per line; beyond this markers only clutter the curve
LOG_SCALE_DECADES = 2.0  # a schedule spanning more than this many decades goes on a log axis
VALUE_LABELS_UP_TO = 40  # layers whose bars get their value written on them
MIN_ROW_INCHES = 0.085  # the height a 5 pt layer name needs; below it only every k-th is named
MAX_FIGURE_INCHES = 600  # 60,000 px at 100 dpi: under Agg's 2**16 px limit
DPI = 150

# The rcParams every report figure is drawn with; applied only while drawing.
PAPER_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "lines.linewidth": 1.5,
}



# ------------------------------------------------------------------ figures


@contextmanager
def paper_figure(width: float, height: float) -> Iterator[Any]:
    """A Figure on its own Agg canvas, drawn in PAPER_STYLE; pyplot's state is never touched."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(PAPER_STYLE):
        figure = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(figure)
        yield figure


def save_figure(figure: Any, out_png: str | Path, dpi: int = DPI) -> Path:
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def _line(ax: Any, xs: Sequence[float], ys: Sequence[float], **style: Any) -> bool:
    """Plot the finite points of a series; markers when there are few. False when nothing to draw."""
    xs, ys = present(xs, ys)
    if not xs:
        return False
    marker = "o" if len(xs) <= MARKERS_UP_TO else None
    ax.plot(xs, ys, marker=marker, markersize=3.5, **style)
    return True


def _pad_x(ax: Any, xs: Sequence[float]) -> None:
    """Limits with a margin that also works for a single epoch."""
    finite = [x for x in xs if math.isfinite(x)]
    if finite:
        low, high = min(finite), max(finite)
        pad = max(0.5, 0.02 * (high - low))
        ax.set_xlim(low - pad, high + pad)


def _label_events(axes: Sequence[Any], events: Sequence[tuple[float, str]], label_axis: Any) -> None:
    """A dashed vertical line per event on every panel, its text written once along the line
    (texts of events at the same x joined, so they do not print over each other)."""
    texts_at: dict[float, list[str]] = {}
    for x, text in events:
        texts_at.setdefault(x, []).append(text)
    for x, texts in texts_at.items():
        for ax in axes:
            ax.axvline(x, color=EVENT_COLOUR, linestyle="--", linewidth=0.9, zorder=1)
        label_axis.text(
            x, 0.97, ", ".join(dict.fromkeys(texts)), transform=label_axis.get_xaxis_transform(),
            rotation=90, ha="right", va="top", fontsize=7, color="#404040",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 1},
        )


def _legend_events(axes: Sequence[Any], events: Sequence[tuple[float, str]]) -> None:
    """A vertical line per event, styled by its text and named once in the legend (no text on the plot)."""
    styles: dict[str, dict[str, Any]] = {}
    for x, text in events:
        style = styles.setdefault(text, EVENT_STYLES[len(styles) % len(EVENT_STYLES)])
        for ax in axes:
            ax.axvline(x, linewidth=1.0, zorder=1, **style)
    for text, style in styles.items():  # legend handles only: the lines above carry no label
        axes[-1].plot([], [], linewidth=1.0, label=text, **style)


def _constant(values: Sequence[float]) -> float | None:
    """The one value of a series that never changes; None when it varies or is empty."""
    finite = {v for v in values if math.isfinite(v)}
    return finite.pop() if len(finite) == 1 else None


# ------------------------------------------------------------------ curves


def _epoch_of_step(metrics: Table) -> Any:
    """step -> fractional epoch by the step each epoch ended at (epoch e spans (e-1, e]); None without steps."""
    import numpy as np

    steps, epochs = present(metrics.floats("step"), metrics.floats("epoch"))
    if not steps:
        return None
    order = np.argsort(steps, kind="stable")
    xp = np.concatenate([[0.0], np.asarray(steps)[order]])
    fp = np.concatenate([[min(epochs) - 1.0], np.asarray(epochs)[order]])
    return lambda step: float(np.interp(step, xp, fp))


def _ghost_removal_epoch(metrics: Table) -> float | None:
    """Between the last epoch logged with ghosts on and the first logged with them removed."""
    states, epochs = metrics.text("ghosts"), metrics.floats("epoch")
    for i, state in enumerate(states):
        if state == "removed":
            previous = [epochs[j] for j in range(i) if states[j] == "on"]
            return (previous[-1] + epochs[i]) / 2 if previous else epochs[i] - 0.5
    return None


def _curve_events(metrics: Table, events: Sequence[tuple[int, str]]) -> list[tuple[float, str]]:
    """Events placed on the epoch axis; without any, the ghost removal read from the ghosts column."""
    convert = _epoch_of_step(metrics)
    if events and convert is not None:
        return [(convert(float(step)), text) for step, text in events]
    removal = _ghost_removal_epoch(metrics)
    return [(removal, "ghosts removed")] if removal is not None else []


def _mark_best(ax: Any, epochs: Sequence[float], accuracy: Sequence[float], colour: str) -> None:
    xs, ys = present(epochs, accuracy)
    if len(xs) < 2:
        return
    best = max(range(len(ys)), key=ys.__getitem__)
    ax.plot([xs[best]], [ys[best]], marker="*", markersize=10, color=colour, zorder=5, linestyle="none")
    ax.annotate(  # above the star: nothing of the test curve is higher
        f"best {ys[best]:.2%}", (xs[best], ys[best]), textcoords="offset points", xytext=(0, 7),
        ha="center", va="bottom", fontsize=7, color=colour,
    )


def plot_curves(
    metrics_csv: str | Path, out_png: str | Path, *, events: Sequence[tuple[int, str]] = ()
) -> Path:
    """Loss (left) and accuracy (right) of train / val / test against epoch; returns ``out_png``.

    ``events`` are ``(step, text)`` pairs, placed on the epoch axis by the steps in
    metrics.csv; without them, the epoch where the ``ghosts`` column turns ``removed``
    is marked.
    """
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    metrics = read_metrics(metrics_csv)
    epochs = metrics.floats("epoch")
    with paper_figure(9.0, 3.4) as figure:
        loss_ax, acc_ax = figure.subplots(1, 2)
        for split, colour in SPLIT_COLOURS.items():
            _line(loss_ax, epochs, metrics.floats(f"{split}_loss"), color=colour, label=split)
            _line(acc_ax, epochs, metrics.floats(f"{split}_acc"), color=colour, label=split)
        _mark_best(acc_ax, epochs, metrics.floats("test_acc"), SPLIT_COLOURS["test"])
        _legend_events((loss_ax, acc_ax), _curve_events(metrics, events))
        loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
        acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
        acc_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        for ax in (loss_ax, acc_ax):
            _pad_x(ax, epochs)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best")
        return save_figure(figure, out_png)


# ------------------------------------------------------------------ schedules

# (column, axis label) of each schedule panel, top to bottom.
SCHEDULE_PANELS = (
    ("lr", "learning rate"),
    ("alpha", "ghost skip α"),
    ("beta", "PSwish β"),
    ("label_smoothing", "label smoothing"),
    ("loss", "train loss"),
)


def _decades(values: Sequence[float]) -> float:
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return math.log10(max(positive) / min(positive)) if positive else 0.0


def _set_scale(ax: Any, values: Sequence[float]) -> None:
    """Log axis for a schedule spanning > LOG_SCALE_DECADES (symlog when it also holds zeros)."""
    if _decades(values) <= LOG_SCALE_DECADES:
        return
    finite = [v for v in values if math.isfinite(v)]
    if min(finite) > 0:
        ax.set_yscale("log")
    elif min(finite) == 0:
        ax.set_yscale("symlog", linthresh=min(v for v in finite if v > 0))


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` finite values (NaN where none yet)."""
    out, kept, total = [], [], 0.0
    for value in values:
        if math.isfinite(value):
            kept.append(value)
            total += value
            if len(kept) > window:
                total -= kept[-window - 1]
        out.append(total / min(len(kept), window) if kept else math.nan)
    return out


def _draw_schedule(ax: Any, column: str, xs: Sequence[float], ys: Sequence[float]) -> None:
    if column == "loss" and len(ys) > MARKERS_UP_TO:  # noisy per-step loss: raw faint, smoothed bold
        _line(ax, xs, ys, color=SPLIT_COLOURS["train"], alpha=0.25, linewidth=0.8, label="per step")
        smooth = _moving_average(ys, max(2, len(ys) // 50))
        _line(ax, xs, smooth, color=SPLIT_COLOURS["train"], label="moving average")
        ax.legend(loc="upper right")
    else:
        _line(ax, xs, ys, color="#333333" if column != "loss" else SPLIT_COLOURS["train"])
        _set_scale(ax, ys)


def _schedule_axis(table: Table) -> tuple[str, list[float]]:
    """Optimizer step when the table records it, else epoch (a metrics.csv without steps)."""
    return ("step", table.floats("step")) if table.has("step") else ("epoch", table.floats("epoch"))


def plot_schedules(
    steps_csv: str | Path, out_png: str | Path, events: Sequence[tuple[int, str]] = ()
) -> Path:
    """LR, alpha, beta and label smoothing (and the logged loss) against step, one panel each.

    ``steps_csv`` is steps.csv, or metrics.csv for a run that logged no steps (one point
    per epoch). Columns empty throughout (no ghosts, say) are left out, columns that never
    change are named with their value above the panels; alpha and beta end where the
    ghosts were removed. ``events`` are ``(step, text)``
    pairs drawn as labelled vertical lines across all panels.
    """
    path = Path(steps_csv)
    if not path.is_file():
        raise ReportError(f"no {path.name} in {path.parent}; pass steps.csv or metrics.csv of a run.")
    table = read_table(path)
    if table.rows == 0:
        raise ReportError(f"{path} has no rows; plot the schedules once the run has logged a step.")
    x_name, xs = _schedule_axis(table)
    series = [(column, label, table.floats(column)) for column, label in SCHEDULE_PANELS if table.has(column)]
    # A schedule that never moves (label smoothing 0.1 throughout) is one number: a note, not a panel.
    constants = [f"{label} = {_constant(ys):g}" for column, label, ys in series
                 if column != "loss" and _constant(ys) is not None]
    constant_note = ("constant throughout: " if table.rows > 1 else "one logged point: ") + ", ".join(constants)
    panels = [(column, label, ys) for column, label, ys in series if column == "loss" or _constant(ys) is None]
    with paper_figure(7.0, 0.6 + 1.45 * max(1, len(panels))) as figure:
        if constants and panels:
            figure.suptitle(constant_note, fontsize=8)
        if not panels:
            ax = figure.subplots()
            ax.set_axis_off()
            note = constant_note if constants else f"no schedule in {path.name}"
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
            return save_figure(figure, out_png)
        axes = list(figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
        for ax, (column, label, ys) in zip(axes, panels):
            _draw_schedule(ax, column, xs, ys)
            ax.set_ylabel(label)
        axes[-1].set_xlabel(x_name)
        if x_name == "step":
            _label_events(axes, [(float(step), text) for step, text in events], axes[0])
        else:
            _pad_x(axes[-1], xs)
        return save_figure(figure, out_png)


# ------------------------------------------------------------------ sparsity


def checked_sparsity(layer_sparsity: Mapping[str, float]) -> dict[str, float]:
    if not layer_sparsity:
        raise ReportError("layer_sparsity is empty; pass {layer name: fraction of zeros}, or None for no plot.")
    checked = {}
    for name, value in layer_sparsity.items():
        try:
            fraction = float(value)
        except (TypeError, ValueError):
            fraction = math.nan
        if not 0.0 <= fraction <= 1.0:
            raise ReportError(
                f"layer_sparsity['{name}'] = {value!r} is not a fraction in [0, 1]; "
                "pass zeros / numel (0.9 for 90%), not a percentage."
            )
        checked[str(name)] = fraction
    return checked


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _row_height(layers: int) -> float:
    """Inches per bar: generous for a few layers, tighter for many, within MAX_FIGURE_INCHES."""
    return min(0.22, max(MIN_ROW_INCHES, 24.0 / layers), MAX_FIGURE_INCHES / layers)


def _label_size(layers: int) -> float:
    return 8.0 if layers <= 30 else 6.5 if layers <= 80 else 5.0


def _write_values(ax: Any, values: Sequence[float], size: float) -> None:
    """Each value at the start of its bar (where no reference line runs), outside a bar too short for it."""
    for position, value in enumerate(values):
        inside = value >= 0.12
        ax.text(0.01 if inside else value + 0.01, position, f"{value:.1%}", va="center", fontsize=size,
                color="white" if inside else "#333333")


def plot_layer_sparsity(
    layer_sparsity: Mapping[str, float], out_png: str | Path, *, overall: float | None = None
) -> Path:
    """One horizontal bar per layer (in the given order, top to bottom) with the mean as a line.

    The figure grows with the number of layers and its labels shrink, so 100+ layer
    names stay legible; up to VALUE_LABELS_UP_TO bars carry their value. The red line
    is the unweighted mean over layers; ``overall`` (the size-weighted sparsity, e.g.
    from the mask file) is drawn too when given.
    """
    from matplotlib.ticker import PercentFormatter

    fractions = checked_sparsity(layer_sparsity)
    names, values = list(fractions), list(fractions.values())
    count, row = len(names), _row_height(len(names))
    height = 1.3 + row * count
    with paper_figure(7.0, height) as figure:
        ax = figure.subplots()
        positions = list(range(count))
        ax.barh(positions, values, height=0.75, color="#4c72b0")
        if count <= VALUE_LABELS_UP_TO:
            _write_values(ax, values, _label_size(count) - 1)
        stride = math.ceil(MIN_ROW_INCHES / row)  # 1 unless the rows are too thin for every name
        ax.set_yticks(positions[::stride], names[::stride], fontsize=_label_size(count))
        ax.set_ylim(count - 0.5, -0.5)  # first layer on top
        ax.grid(axis="y", visible=False)
        average = mean(values)
        ax.axvline(average, color="#c44e52", linestyle="--", linewidth=1.2,
                   label=f"mean over layers (unweighted): {average:.1%}")
        if overall is not None:
            ax.axvline(overall, color="black", linestyle=":", linewidth=1.2,
                       label=f"overall (weighted by size): {overall:.1%}")
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set_xlabel("sparsity (fraction of zero weights)")
        ax.tick_params(axis="x", top=True, labeltop=count > 30)  # scale at both ends of a tall plot
        figure.legend(loc="outside upper left", ncols=2)  # above the top tick labels, whatever the height
        return save_figure(figure, out_png, dpi=DPI if height <= 100 else 100)
