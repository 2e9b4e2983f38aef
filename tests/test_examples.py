"""The examples run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torchvision

import surgery
from surgery.train import pipeline
from surgery.train.config import RunConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_round_trip_example_runs_and_writes_its_files(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "round_trip.py"), "--steps", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(d) ghosted at alpha=0 with activations restored equals it" in done.stdout
    assert "weights zero: 9" in done.stdout  # ~90% of conv/linear weights
    assert {p.name for p in tmp_path.iterdir()} >= {"mask.safetensors", "resnet18.onnx", "resnet18.onnx.json"}


def test_tost_config_compiles_a_model():
    model = torchvision.models.resnet18(num_classes=10)
    ghosted = surgery.compile(model, __import__("torch").randn(2, 3, 32, 32), EXAMPLES / "configs" / "tost.yaml")
    summary = surgery.manifest_of(ghosted).summary()
    assert summary["convs_covered"] == 20 and summary["activations_swapped"] == 17


RUN_CONFIGS = sorted(p for p in (EXAMPLES / "configs").glob("*.yaml") if p.name != "tost.yaml")


def shrunk(config: RunConfig) -> RunConfig:
    """The same recipe, schedules and optimizer on a tiny model and data set for three epochs."""
    overrides = ["model.spec=cifar:resnet20", "data.dataset=synthetic", "data.image_size=8", "data.batch_size=100",
                 "train.epochs=3", "train.progress=false", "train.tensorboard=false", "lrsi.iterations=5"]
    if config.lr_schedule.kind == "step":
        overrides.append("lr_schedule.milestones=[2]")
    if isinstance(config.ghosts.remove_at, int):
        overrides.append("ghosts.remove_at=2")
    if config.label_smoothing.epochs:
        overrides.append("label_smoothing.epochs=2")
    return config.with_overrides(overrides)


def test_there_is_a_run_config_per_paper_workflow():
    assert {p.stem for p in RUN_CONFIGS} >= {"tost-cifar10", "lottery-retrain", "pipeline-post-pruning"}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_each_run_config_is_valid_and_runs_shrunk(path, tmp_path):
    config = RunConfig.from_yaml(path)
    assert config.train.epochs >= 160 and config.data.dataset in ("cifar10", "cifar100")
    config = shrunk(config).with_overrides([f"output={tmp_path}"])
    result = pipeline.run(config)
    keeps_ghosts = config.ghosts.remove_at == "never"
    assert (result.verify is None) == keeps_ghosts
    assert (tmp_path / "summary.md").is_file() and result.test_accuracy is not None
