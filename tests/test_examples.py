"""The examples run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torchvision

import surgery

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
