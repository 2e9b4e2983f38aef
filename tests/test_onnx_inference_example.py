"""examples/onnx_inference.py: a run's exported model classifies an image file from the ONNX file alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run_config
from PIL import Image

from surgery.train import run
from surgery.train.data import load_dataset
from surgery.train.data.images import resize_center_crop

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "onnx_inference.py"
# The script runs with torch and surgery made unimportable: it may use the exported file only.
pytestmark = pytest.mark.slow  # trains a model and runs the script in a subprocess

WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = sys.modules['surgery'] = None; "
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def torch_prediction(model: torch.nn.Module, image_path: Path, record: dict) -> tuple[int, float]:
    """The class PyTorch predicts for the file and its probability, the file fed the way training's evaluation
    feeds it (the repo's own code)."""
    p = record["preprocessing"]
    with Image.open(image_path) as image:
        pixels = np.asarray(resize_center_crop(image.convert("RGB"), p["input_size"][0], p["crop_fraction"]))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(p["mean"]).view(1, 3, 1, 1)) / torch.tensor(p["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = model.eval()(x)[0].softmax(0)
    return int(probabilities.argmax()), float(probabilities.max())


def test_the_example_prints_the_class_pytorch_predicts_with_its_name(tmp_path):
    result = run(tiny_run_config(tmp_path, export={"onnx": True}))
    record = json.loads((result.run_dir / "result.json").read_text())
    classes = load_dataset("synthetic", image_size=8).classes
    assert record["preprocessing"]["class_names"] == classes and record["preprocessing"]["input_size"] == [8, 8]
    assert "| preprocessing | RGB NCHW float32 8x8" in (result.run_dir / "summary.md").read_text()
    sidecar = json.loads((result.run_dir / "model.onnx.json").read_text())
    assert sidecar["preprocessing"] == record["preprocessing"]

    # A test image, upscaled and not square, so the script's resize and center crop do work.
    pixels = load_dataset("synthetic", image_size=8).split("test").images[0].permute(1, 2, 0).numpy()
    image_path = tmp_path / "sample.png"
    Image.fromarray(pixels).resize((20, 14), Image.Resampling.BILINEAR).save(image_path)
    expected, probability = torch_prediction(result.model, image_path, record)

    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(SCRIPT), str(result.run_dir / "model.onnx"),
                           str(image_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(f"1. {classes[expected]}  (class {expected}, p=")
    assert float(lines[0].rsplit("p=", 1)[1].rstrip(")")) == pytest.approx(probability, abs=2e-3)  # same input


def test_a_file_without_preprocessing_is_refused_with_the_fix(tmp_path):
    import surgery

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    surgery.export_onnx(model, torch.randn(2, 3, 4, 4), tmp_path / "m.onnx")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "m.onnx"), str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "records no preprocessing" in done.stderr and "preprocessing=" in done.stderr


def test_a_python_model_with_other_outputs_than_classes_records_no_names_and_exports(tmp_path):
    from surgery.zoo.models import build_model

    model = build_model("cifar:resnet20", 12, input_size=8)  # 12 outputs, the data's 10 classes
    result = run(tiny_run_config(tmp_path, export={"onnx": True}), model=model)
    p = json.loads((result.run_dir / "result.json").read_text())["preprocessing"]
    assert p["class_names"] == [] and "12 outputs, the data 10 classes" in p["class_names_source"]
