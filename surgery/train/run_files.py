"""Every file of a run directory, named in one place.

``RunFiles(run_dir)`` is what the pipeline, the trainer, the report and the CLI read
and write; a file's name is spelt here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFiles:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------ what the run starts from
    @property
    def config(self) -> Path:  # the resolved config the run trained with
        return self.root / "config.yaml"

    @property
    def masks(self) -> Path:  # the starting mask, then the mask the run ended with
        return self.root / "masks.safetensors"

    @property
    def start_weights(self) -> Path:  # the weights a `before` mask method hands over (init.rewind)
        return self.root / "start-weights.safetensors"

    @property
    def rounds(self) -> Path:  # a `before` mask method's training rounds, one folder each
        return self.root / "rounds"

    @property
    def rounds_csv(self) -> Path:
        return self.root / "rounds.csv"

    # ------------------------------------------------------------ training
    @property
    def metrics(self) -> Path:  # one row per epoch
        return self.root / "metrics.csv"

    @property
    def steps(self) -> Path:  # one row per logged optimizer step
        return self.root / "steps.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    # ------------------------------------------------------------ results
    @property
    def weights(self) -> Path:  # the clean trained weights, loadable into the original class
        return self.root / "model.safetensors"

    @property
    def verify(self) -> Path:  # the verification report for people; result.json holds it as data
        return self.root / "verify.txt"

    @property
    def onnx(self) -> Path:
        return self.root / "model.onnx"

    @property
    def onnx_sidecar(self) -> Path:  # export_onnx's measurements next to the file: <file>.json
        return Path(f"{self.onnx}.json")

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def schedules(self) -> Path:
        return self.root / "schedules.png"

    @property
    def sparsity_plot(self) -> Path:
        return self.root / "sparsity.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.md"

    @property
    def result(self) -> Path:  # the run's outcome as data: status, accuracy, verification, export
        return self.root / "result.json"

    # ------------------------------------------------------------ a run a sweep launched
    @property
    def sweep_cell(self) -> Path:  # its cell of the grid (field -> value) and seed
        return self.root / "cell.json"

    @property
    def log(self) -> Path:  # everything the run printed (stdout and stderr), every launch appended
        return self.root / "output.log"

    def holds_run(self) -> bool:
        """Whether this is a run's directory: the pipeline's record or a sweep's cell is there (both are written
        before the run's config.yaml, so a saved config.yaml always sits beside one)."""
        return self.result.is_file() or self.sweep_cell.is_file()

    def holds_checkpoint(self) -> bool:
        """Whether any training in this directory (the run's own, or a mask method's rounds) saved a checkpoint."""
        folders = (folder for folder in self.root.rglob(self.checkpoints.name) if folder.is_dir())
        return any(path.is_file() for folder in folders for path in folder.iterdir())
