"""A sweep's results, read from its run directories alone: one row per run, one summary per cell.

``collect(out)`` reads every ``DIR/runs/*/`` a sweep made (its ``cell.json`` and the run's
``result.json``) into rows; ``write_csv`` writes them; ``summarize`` groups them by cell
(mean ± std over seeds, n); ``markdown`` renders the cells with the best per column in bold,
the paper's number where the config names one, and every recipe against plain sparse training, pair by pair
(``paired``).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgery.train.pairing import PARTS
from surgery.train.record import COMPLETED, FAILED, read_record, recorded_holdings
from surgery.train.run_files import RunFiles
from surgery.train.sweeps import paired
from surgery.train.sweeps.grid import RUNS_DIR
from surgery.train.sweeps.paired import PAIRING_COLUMNS

PENDING = "pending"  # planned, never launched
# what each run's final model holds (``record.holdings``): mask weights kept, ghost parameters kept, all trainable
HOLDINGS = ("kept_weights", "ghost_parameters", "trainable_parameters")
METRICS = ("test_acc", "test_acc_last", "test_acc_best_val", "sparsity", "effective_sparsity", *HOLDINGS, "seconds")
COLUMNS = ("seed", "status", *METRICS, *PAIRING_COLUMNS, "error", "run_dir")


def read_cell(files: RunFiles) -> dict[str, Any] | None:
    try:
        data = json.loads(files.sweep_cell.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("cell"), dict) else None


def run_dirs(out: Path) -> list[Path]:
    root = Path(out) / RUNS_DIR
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def collect(out: Path, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per run directory of the sweep in ``out`` (only ``names``, in that order, when given)."""
    dirs = [Path(out) / RUNS_DIR / n for n in names] if names is not None else run_dirs(out)
    rows = []
    for directory in dirs:
        files = RunFiles(directory)
        cell = read_cell(files)
        if cell is not None:
            rows.append(row_of(files, cell))
    return rows


def row_of(files: RunFiles, cell: Mapping[str, Any]) -> dict[str, Any]:
    """A run's row: its cell, seed, status (and error), accuracies, sparsity, what its final model holds, seconds
    and directory."""
    record = read_record(files)
    row: dict[str, Any] = {**cell["cell"], "seed": cell["seed"], "run_dir": str(files.root), "error": ""}
    row.update(dict.fromkeys(METRICS))
    if record is None:
        started = files.log.is_file()
        row.update(status=FAILED if started else PENDING, error=last_line(files.log) if started else "")
        return row
    row["status"] = record.get("status")
    reason = record.get("reason") or {}
    row["error"] = reason.get("message", "") if row["status"] != COMPLETED else ""
    accuracy = record.get("accuracy") or {}
    best = accuracy.get("best_val") or {}
    row.update(test_acc=accuracy.get("test"), test_acc_last=accuracy.get("test_last"),
               test_acc_best_val=best.get("test_acc"), sparsity=record.get("sparsity"),
               seconds=(record.get("training") or {}).get("seconds"))
    held = recorded_holdings(record) if row["status"] == COMPLETED else None
    if held is not None:
        row.update(effective_sparsity=held["effective_sparsity"], kept_weights=held["kept"],
                   ghost_parameters=held["ghosts"], trainable_parameters=held["trainable"])
    row.update(zip(PAIRING_COLUMNS, ((record.get("pairing") or {}).get(part) for part in PARTS)))
    return row


def last_line(path: Path) -> str:
    """The last line a run printed: the CLI's one-line error when it failed before writing its record."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def write_csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*fields, *COLUMNS], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


# ------------------------------------------------------------------ cells


@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:  # over seeds: the sample standard deviation
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass
class Cell:
    values: dict[str, Any]  # grid field -> label
    failed: int = 0
    unfinished: int = 0  # pending, running or interrupted: a later `surgery sweep` finishes them
    stats: dict[str, Stat] = field(default_factory=dict)  # metric -> over the completed runs

    @property
    def n(self) -> int:
        return self.stats["test_acc"].n


def summarize(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> list[Cell]:
    """Rows grouped by their grid values, in the order cells first appear."""
    cells: dict[tuple, Cell] = {}
    for row in rows:
        key = tuple(_key(row.get(f)) for f in fields)
        cell = cells.setdefault(key, Cell({f: row.get(f) for f in fields}, stats={m: Stat([]) for m in METRICS}))
        if row["status"] == COMPLETED:
            for metric in METRICS:
                if row.get(metric) is not None:
                    cell.stats[metric].values.append(float(row[metric]))
        elif row["status"] == FAILED:
            cell.failed += 1
        else:
            cell.unfinished += 1
    return list(cells.values())


def headline(cells: Sequence[Cell]) -> str:
    """The accuracy a sweep is judged by: the best-validation epoch's when every run has one (ToST's
    code keeps it), else the last epoch's."""
    with_runs = [c for c in cells if c.n]
    if with_runs and all(c.stats["test_acc_best_val"].n == c.n for c in with_runs):
        return "test_acc_best_val"
    return "test_acc_last"


def _key(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str)


# ------------------------------------------------------------------ markdown


def markdown(cells: Sequence[Cell], fields: Sequence[str], *, title: str, reference: Mapping[str, Any] | None = None,
             base: Mapping[str, Any] | None = None, rows: Sequence[Mapping[str, Any]] = (),
             comparisons: Sequence[paired.Comparison] = ()) -> str:
    """The cells as a table (best per accuracy column in bold), then each recipe against ``none`` seed by seed
    (``comparisons``, ``paired.compare``), then the failed runs of ``rows`` with the first line of their errors."""
    reference, base = reference or {}, base or {}
    accuracy_columns = [m for m in ("test_acc_last", "test_acc_best_val") if any(c.stats[m].n for c in cells)]
    names = {"test_acc_last": "test acc, last epoch (%)", "test_acc_best_val": "test acc, best-val epoch (%)"}
    papers = [paper_number(reference.get("results", []), c.values, base) for c in cells]
    header = [*fields, "n", *(names[m] for m in accuracy_columns), "sparsity (%)", "effective sparsity (%)",
              "trainable parameters", "seconds"]
    if any(papers):
        header.append(f"paper ({reference.get('source') or 'reference'})")
    best = {m: max((c.stats[m].mean for c in cells if c.stats[m].n), default=None) for m in accuracy_columns}
    lines = [f"# {title}", "", _row(header), _row(["---"] * len(header))]
    for cell, paper in zip(cells, papers):
        row = [_show(cell.values[f]) for f in fields]
        others = [f"{k} {what}" for k, what in ((cell.failed, "failed"), (cell.unfinished, "unfinished")) if k]
        row.append(f"{cell.n}" + (f" ({', '.join(others)})" if others else ""))
        for metric in accuracy_columns:
            text = mean_std(cell.stats[metric], percent=True)
            row.append(f"**{text}**" if cell.stats[metric].n and cell.stats[metric].mean == best[metric] else text)
        row.append(mean_std(cell.stats["sparsity"], percent=True, std=False))
        row.append(mean_std(cell.stats["effective_sparsity"], percent=True, std=False))
        row.append(count(cell.stats["trainable_parameters"]))
        row.append(mean_std(cell.stats["seconds"], std=False, digits=0))
        if any(papers):
            row.append(paper or "")
        lines.append(_row(row))
    lines += ["", "mean ± sample std over seeds; n: completed runs of the cell; effective sparsity counts the dense "
              "parameters of ghosts kept to the end as weights; trainable parameters: every parameter of the final "
              "model except the mask's zeros; seconds: training time per run."]
    comparison = paired.markdown(comparisons, fields, headline(cells))
    if comparison:
        lines += ["", *comparison]
    failed = [row for row in rows if row["status"] == FAILED]
    if failed:
        lines += ["", "## Failed runs", "", _row(["run", "error"]), _row(["---", "---"]),
                  *(_row([_show(Path(row["run_dir"]).name), _show(row["error"])]) for row in failed)]
    return "\n".join(lines) + "\n"


def paper_number(results: Sequence[Mapping[str, Any]], values: Mapping[str, Any], base: Mapping[str, Any]) -> str | None:
    """The published accuracy whose fields all match this cell (a field outside the grid: the base config's)."""
    for entry in results:
        keys = [k for k in entry if k not in ("accuracy", "std")]
        if keys and all(_same(entry[k], values[k] if k in values else _dotted(base, k)) for k in keys):
            std = entry.get("std")
            return f"{entry['accuracy']:.2f}" + (f" ± {std:.2f}" if isinstance(std, (int, float)) else "")
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _dotted(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def mean_std(stat: Stat, *, percent: bool = False, std: bool = True, digits: int = 2) -> str:
    if not stat.n:
        return "—"
    scale = 100 if percent else 1
    text = f"{stat.mean * scale:.{digits}f}"
    if std:
        text += f" ± {stat.std * scale:.{digits}f}" if stat.std is not None else " (1 run)"
    return text


def count(stat: Stat) -> str:
    """A parameter count over seeds: one number when every seed holds the same, else the mean and range."""
    if not stat.n:
        return "—"
    low, high = min(stat.values), max(stat.values)
    return f"{low:,.0f}" if low == high else f"{stat.mean:,.0f} ({low:,.0f}-{high:,.0f})"


def _show(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
