"""A run's CSV files as columns: ``metrics.csv`` (one row per epoch) and ``steps.csv`` (one per step).

Empty cells (alpha/beta after ghost removal, epochs without evaluation, no validation
split) are missing values, NaN in a float column, never zeros.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgery.errors import ReportError


@dataclass
class Table:
    """The rows of a CSV file as columns of strings; absent columns read as all-empty."""

    path: Path
    columns: dict[str, list[str]]
    rows: int

    def has(self, name: str) -> bool:
        return any(cell.strip() for cell in self.columns.get(name, ()))

    def text(self, name: str) -> list[str]:
        return [cell.strip() for cell in self.columns.get(name, [""] * self.rows)]

    def floats(self, name: str) -> list[float]:
        """The column as floats, NaN where a cell is empty; a non-number raises ReportError."""
        values = []
        for row, cell in enumerate(self.text(name), start=2):  # row 1 is the header
            if not cell:
                values.append(math.nan)
                continue
            try:
                values.append(float(cell))
            except ValueError:
                raise ReportError(
                    f"{self.path}, line {row}: column '{name}' holds '{cell}', not a number; "
                    "fix or delete that row (cells are numbers or empty)."
                ) from None
        return values


def read_table(path: Path) -> Table:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or ()]
        columns: dict[str, list[str]] = {name: [] for name in header}
        rows = 0
        for record in reader:
            rows += 1
            for raw_name, cell in record.items():
                if raw_name is not None and raw_name.strip() in columns:
                    columns[raw_name.strip()].append(cell or "")
    return Table(path, columns, rows)


def read_metrics(metrics_csv: str | Path) -> Table:
    """metrics.csv, required to hold at least one epoch with an `epoch` column."""
    path = Path(metrics_csv)
    if not path.is_file():
        raise ReportError(
            f"no {path.name} in {path.parent}: the run has not finished an epoch yet; "
            "write the report after the first epoch ends, or pass the run's own directory."
        )
    table = read_table(path)
    if table.rows == 0:
        raise ReportError(
            f"{path} has no rows: the run has not finished an epoch yet; "
            "write the report after the first epoch ends."
        )
    if "epoch" not in table.columns:
        raise ReportError(
            f"{path} has no 'epoch' column (header: {', '.join(table.columns) or 'none'}); "
            "it must start with the header epoch,step,lr,... that the trainer writes."
        )
    return table


def present(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """The (x, y) pairs where both are finite: evaluation gaps are skipped, not drawn as zero."""
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    return [x for x, _ in pairs], [y for _, y in pairs]


def read_steps(path: Path) -> Table | None:
    """steps.csv when the run logged any step, else None (the schedules then come from metrics.csv)."""
    if not path.is_file():
        return None
    table = read_table(path)
    return table if table.rows else None


def last(values: Sequence[float]) -> tuple[int, float] | None:
    """(index, value) of the last finite value."""
    for i in range(len(values) - 1, -1, -1):
        if math.isfinite(values[i]):
            return i, values[i]
    return None


def best(values: Sequence[float]) -> tuple[int, float] | None:
    """(index, value) of the highest finite value (the first epoch that reached it)."""
    finite = [(i, v) for i, v in enumerate(values) if math.isfinite(v)]
    return max(finite, key=lambda pair: (pair[1], -pair[0])) if finite else None


def epoch_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.csv as the trainer's history: one dict per epoch, numbers parsed, empty cells None."""
    table = read_table(path)
    return [{name: _value(cells[i]) for name, cells in table.columns.items()} for i in range(table.rows)]


def _value(cell: str) -> Any:
    text = cell.strip()
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
