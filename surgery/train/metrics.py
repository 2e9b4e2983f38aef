"""Metrics on disk: ``metrics.csv`` (one row per epoch), ``steps.csv`` (one per logged step), TensorBoard.

Rows are flushed as they are written, so a crashed run keeps its curves. Resuming
truncates both files back to the checkpoint, so the re-run part is not logged twice.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from surgery.train.run_files import RunFiles

EPOCH_FIELDS = (
    "epoch", "step", "lr", "alpha", "beta", "label_smoothing", "ghosts",
    "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "images_per_s", "seconds", "sparsity",
)
STEP_FIELDS = ("step", "epoch", "lr", "alpha", "beta", "label_smoothing", "loss")


class MetricsLog:
    """Appends rows to the run's CSV files and, when available, TensorBoard event files."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, resume_step: int | None = None, resume_epoch: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        files = RunFiles(self.run_dir)
        self.epochs_csv, self.steps_csv = files.metrics, files.steps
        if resume_step is None:
            for path, fields in ((self.epochs_csv, EPOCH_FIELDS), (self.steps_csv, STEP_FIELDS)):
                _write_rows(path, fields, [])
        else:
            _truncate(self.epochs_csv, EPOCH_FIELDS, lambda row: int(row["epoch"]) <= resume_epoch)
            _truncate(self.steps_csv, STEP_FIELDS, lambda row: int(row["step"]) <= resume_step)
        self.writer = _tensorboard(files.tensorboard, resume_step) if tensorboard else None

    def log_step(self, row: Mapping[str, Any]) -> None:
        _append(self.steps_csv, STEP_FIELDS, row)
        if self.writer:
            for key in ("loss", "lr", "alpha", "beta", "label_smoothing"):
                if row.get(key) is not None:
                    self.writer.add_scalar(f"step/{key}", row[key], row["step"])

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        _append(self.epochs_csv, EPOCH_FIELDS, row)
        if self.writer:
            for key, value in row.items():
                if key not in ("epoch", "step", "ghosts") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _append(path: Path, fields: tuple[str, ...], row: Mapping[str, Any]) -> None:
    with path.open("a", newline="") as f:
        csv.writer(f).writerow([_format(row.get(k)) for k in fields])


def _write_rows(path: Path, fields: tuple[str, ...], rows: list[Mapping[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for row in rows:
            writer.writerow([row.get(k, "") for k in fields])


def _truncate(path: Path, fields: tuple[str, ...], keep) -> None:
    rows = []
    if path.exists():
        with path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if keep(row)]
    _write_rows(path, fields, rows)


def _tensorboard(directory: Path, resume_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed: metrics go to CSV only (pip install tensorboard).", stacklevel=3)
        return None
    return SummaryWriter(str(directory), purge_step=resume_step)
