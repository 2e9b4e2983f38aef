"""summary.md: a key/value table of the run's results, its plots, the per-layer table and the config.

The outcome (status, accuracy of the kept weights, tweaks, ghost removal, verification,
ONNX export) comes from the run's record, ``result.json``; the curves' numbers (final and
best accuracy per split, epochs, steps, throughput) from ``metrics.csv``. A directory
without a record gets the rows its CSV files can give.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from surgery.compiler.masks import MaskMetadata
from surgery.errors import MaskError
from surgery.train.record import COMPLETED, read_record, recorded_holdings
from surgery.train.report.plots import (
    checked_sparsity,
    mean,
    plot_curves,
    plot_layer_sparsity,
    plot_schedules,
)
from surgery.train.report.story import (
    describe_accuracy,
    describe_ghost_cost,
    describe_ghosts,
    describe_holdings,
    describe_onnx_parity,
    describe_onnx_size,
    describe_tweaks,
    describe_verification,
    percent,
)
from surgery.train.report.tables import Table, best, last, read_metrics, read_steps
from surgery.train.run_files import RunFiles

LAYERS_SHOWN_INLINE = 10  # rows of the per-layer table outside the collapsible full table
LAYERS_WITHOUT_DETAILS = 15  # up to this many layers the table is shown whole, no <details>

Rows = list[tuple[str, str]]


def write_report(
    run_dir: str | Path,
    *,
    title: str,
    layer_sparsity: Mapping[str, float] | None = None,
    events: Sequence[tuple[int, str]] = (),
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write curves.png, schedules.png, sparsity.png (with ``layer_sparsity``) and summary.md.

    ``events`` are ``(step, label)`` pairs such as ``(3520, "ghosts removed")``, drawn on
    both plots; ``extra`` adds rows at the top of the summary table (model, mask,
    device...); a key containing "sparsity" replaces the recorded overall sparsity.
    Returns the path of summary.md. Raises ``ReportError`` when metrics.csv is missing
    or empty.
    """
    files = RunFiles(Path(run_dir))
    metrics = read_metrics(files.metrics)
    record = read_record(files)
    extra = dict(extra or {})
    fractions = checked_sparsity(layer_sparsity) if layer_sparsity else None
    steps = read_steps(files.steps)
    weighted = _mask_file_sparsity(files.masks)

    plot_curves(metrics.path, files.curves, events=events)
    plot_schedules(steps.path if steps else metrics.path, files.schedules, events)
    per = "step" if steps else "epoch"
    images = [(files.curves.name, "Loss and accuracy per epoch"), (files.schedules.name, f"Schedules per {per}")]
    if fractions:
        plot_layer_sparsity(fractions, files.sparsity_plot, overall=weighted)
        images.append((files.sparsity_plot.name, "Sparsity per layer"))

    rows = [
        *extra.items(),
        *_outcome_rows(record),
        *_accuracy_rows(metrics, "test"),
        *_accuracy_rows(metrics, "val"),
        *_training_rows(metrics, steps, record),
        *_sparsity_rows(fractions, weighted, extra, record),
        *_onnx_rows(record),
        *_preprocessing_rows(record),
        *_verification_rows(record),
    ]
    lines = [f"# {_cell(title)}", "", *_key_value_table(rows), "", *_figure_section(images)]
    if fractions:
        lines += _layer_section(fractions)
    lines += _verification_section(record)
    lines += _config_section(files.config)
    files.summary.write_text("\n".join(lines).rstrip("\n") + "\n")
    return files.summary


# ------------------------------------------------------------------ rows


def _outcome_rows(record: dict[str, Any] | None) -> Rows:
    """How the run ended (when not completed), what trained besides the network, which weights it kept."""
    if record is None:
        return []
    rows = []
    if record.get("status") != COMPLETED:
        message = (record.get("reason") or {}).get("message")
        rows.append(("status", f"**{record.get('status')}**" + (f": {message}" if message else "")))
    if record.get("ghosts", {}).get("kept"):
        rows.append(("architecture", f"**{record.get('architecture') or 'ghosts kept: not the original'}**"))
    if "tweaks" in record:
        rows.append(("tweaks", describe_tweaks(record["tweaks"])))
    if record.get("ghosts", {}).get("count"):
        rows.append(("ghost cost", describe_ghost_cost(record)))
    held = recorded_holdings(record)
    if held is not None:
        rows.append(("final model holds", describe_holdings(held)))
    empty = (record.get("weights") or {}).get("empty_layers")
    if empty:
        shown = ", ".join(f"`{name}`" for name in empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        rows.append(("empty layers", f"**{len(empty)}** keep no weight (mask.allow_empty_layers): {shown}"))
    accuracy = record.get("accuracy") or {}
    if (accuracy.get("best_val") or {}).get("test_acc") is not None:
        rows.append(("test accuracy (kept weights)", describe_accuracy(accuracy)))
    return rows


def _accuracy_rows(metrics: Table, split: str) -> Rows:
    """Final and best accuracy of a split with their epochs; nothing for a split never evaluated."""
    epochs, accuracy = metrics.floats("epoch"), metrics.floats(f"{split}_acc")
    final, top = last(accuracy), best(accuracy)
    if final is None or top is None:
        return [(f"{split} accuracy", "not evaluated")] if split == "test" else []
    return [
        (f"final {split} accuracy", f"{percent(final[1])} (epoch {epochs[final[0]]:g})"),
        (f"best {split} accuracy", f"{percent(top[1])} (epoch {epochs[top[0]]:g})"),
    ]


def _training_rows(metrics: Table, steps: Table | None, record: dict[str, Any] | None) -> Rows:
    rows = []
    loss, accuracy = last(metrics.floats("train_loss")), last(metrics.floats("train_acc"))
    if loss and accuracy:
        rows.append(("final train loss / accuracy", f"{loss[1]:.4f} / {percent(accuracy[1])}"))
    epochs = last(metrics.floats("epoch"))
    rows.append(("epochs", f"{epochs[1]:g}" if epochs else "?"))
    step = last(metrics.floats("step")) or (last(steps.floats("step")) if steps else None)
    if step:
        rows.append(("optimizer steps", f"{step[1]:,.0f}"))
    if record is not None and "ghosts" in record and epochs:
        rows.append(("ghosts", describe_ghosts(record["ghosts"], int(epochs[1]))))
    speeds = [v for v in metrics.floats("images_per_s") if math.isfinite(v)]
    if speeds:
        rows.append(("throughput", f"{mean(speeds):,.0f} images/s (mean over epochs)"))
    wall = last(metrics.floats("seconds"))
    if wall:
        rows.append(("wall time", _duration(wall[1])))
    return rows


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _mask_file_sparsity(path: Path) -> float | None:
    """The size-weighted sparsity `save_masks` records in the mask file's metadata, if readable."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            value = MaskMetadata.read(handle.metadata() or {}, path).sparsity
    except (SafetensorError, OSError, MaskError):
        return None  # an unreadable or foreign mask file only costs the report this one number
    return value if value is not None and 0.0 <= value <= 1.0 else None


def _sparsity_rows(
    layer_sparsity: Mapping[str, float] | None, weighted: float | None, extra: Mapping[str, str],
    record: dict[str, Any] | None,
) -> Rows:
    """Overall sparsity, unless the caller's ``extra`` already states it."""
    if any("sparsity" in key.lower() for key in extra):
        return []
    if record is not None and record.get("sparsity") is not None:
        return [("sparsity", f"{percent(record['sparsity'])} of conv/linear weights are zero")]
    if weighted is not None:
        return [("sparsity (mask file, weighted by layer size)", percent(weighted))]
    if layer_sparsity:
        return [("sparsity (mean over layers, unweighted)", percent(mean(list(layer_sparsity.values()))))]
    return []


def _onnx_rows(record: dict[str, Any] | None) -> Rows:
    export = (record or {}).get("export")
    if not export:
        return []
    return [("ONNX size", describe_onnx_size(export)), ("ONNX parity", describe_onnx_parity(export))]


def _preprocessing_rows(record: dict[str, Any] | None) -> Rows:
    """How to feed the model: what a deployment needs and would otherwise have to guess."""
    preprocessing = (record or {}).get("preprocessing")
    return [("preprocessing", preprocessing["summary"])] if preprocessing else []


def _verification_rows(record: dict[str, Any] | None) -> Rows:
    verification = (record or {}).get("verification")
    if not verification:
        return []
    return [("verification", describe_verification(verification, bold=True))]


# ------------------------------------------------------------------ markdown


def _cell(text: str) -> str:
    """Table-safe text: one line, pipes escaped so they do not split the cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _key_value_table(rows: Sequence[tuple[str, str]]) -> list[str]:
    return ["| | |", "|:---|:---|", *(f"| {_cell(key)} | {_cell(value)} |" for key, value in rows)]


def _fence(text: str, language: str) -> list[str]:
    """A fenced block longer than any backtick run inside ``text``, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", text.rstrip("\n"), fence]


def _details(summary: str, body: list[str]) -> list[str]:
    return ["<details>", f"<summary>{summary}</summary>", "", *body, "", "</details>", ""]


def _layer_table(names: Sequence[str], fractions: Sequence[float]) -> list[str]:
    return ["| layer | sparsity |", "|---|---:|",
            *(f"| `{_cell(name)}` | {fraction:.1%} |" for name, fraction in zip(names, fractions))]


def _layer_section(layer_sparsity: Mapping[str, float]) -> list[str]:
    """The first layers inline, the densest and sparsest named, and every layer behind <details>."""
    names, fractions = list(layer_sparsity), list(layer_sparsity.values())
    lines = ["## Per-layer sparsity", ""]
    if len(names) <= LAYERS_WITHOUT_DETAILS:
        return [*lines, *_layer_table(names, fractions), ""]
    densest = min(range(len(names)), key=fractions.__getitem__)
    sparsest = max(range(len(names)), key=fractions.__getitem__)
    lines += [
        (
            f"{len(names)} layers; densest `{_cell(names[densest])}` ({fractions[densest]:.1%}), "
            f"sparsest `{_cell(names[sparsest])}` ({fractions[sparsest]:.1%}). The first {LAYERS_SHOWN_INLINE}:"
        ),
        "",
        *_layer_table(names[:LAYERS_SHOWN_INLINE], fractions[:LAYERS_SHOWN_INLINE]),
        "",
    ]
    return lines + _details(f"All {len(names)} layers", _layer_table(names, fractions))


def _figure_section(images: Sequence[tuple[str, str]]) -> list[str]:
    lines = ["## Plots", ""]
    for file_name, caption in images:
        lines += [f"![{caption}]({file_name})", ""]
    return lines


def _verification_section(record: dict[str, Any] | None) -> list[str]:
    """The checks that passed, or the failure's whole message."""
    verification = (record or {}).get("verification")
    if not verification:
        return []
    text = "\n".join(verification.get("checks") or []) or verification.get("message") or ""
    return ["## Verification", "", *_fence(text, "text"), ""] if text.strip() else []


def _config_section(path: Path) -> list[str]:
    if not path.is_file():
        return ["## Config", "", f"No {path.name} in the run directory.", ""]
    return ["## Config", "", *_details(path.name, _fence(path.read_text(), "yaml"))]
