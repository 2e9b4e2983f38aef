"""The preprocessing recorded for deployment: made by the dataset, written into the ONNX file's metadata."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import surgery
from surgery import Preprocessing
from surgery.errors import ExportError
from surgery.train.data import load_dataset
from surgery.train.data.images import EVAL_CROP_FRACTION


def small_cnn(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes))


def preprocessing(**changes) -> Preprocessing:
    fields = {"input_size": (8, 8), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.2),
              "class_names": [f"c{i}" for i in range(10)], "class_names_source": "test"}
    return Preprocessing(**{**fields, **changes})


def test_digits_records_its_size_stats_and_digit_names():
    dataset = load_dataset("digits", image_size=16)
    p = dataset.preprocessing()
    assert p.input_size == (16, 16) and p.mean == dataset.mean and p.std == dataset.std
    assert p.class_names == tuple(str(d) for d in range(10)) and "digit" in p.class_names_source
    assert (p.channel_order, p.layout, p.dtype, p.crop_fraction) == ("RGB", "NCHW", "float32", 1.0)
    assert p.scale == pytest.approx(1 / 255)


def test_synthetic_says_its_names_are_indexes():
    p = load_dataset("synthetic", image_size=8).preprocessing()
    assert p.class_names[3] == "class3" and "no class names" in p.class_names_source


def test_a_model_with_other_output_count_gets_no_names():
    p = load_dataset("synthetic", image_size=8).preprocessing(num_outputs=12)
    assert p.class_names == () and "12 outputs, the data 10 classes" in p.class_names_source


def test_a_streamed_folder_records_the_imagenet_crop(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "cache"))
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (12, 10), (200, 10, 10)).save(tmp_path / split / name / "a.png")
    p = load_dataset(f"imagefolder:{tmp_path}", image_size=8, stream=True).preprocessing()
    assert p.crop_fraction == EVAL_CROP_FRACTION and p.class_names == ("cat", "dog")
    assert "folder names" in p.class_names_source


def test_export_writes_it_into_metadata_props_and_the_sidecar(tmp_path):
    p = preprocessing()
    info = surgery.export_onnx(small_cnn(), torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", preprocessing=p)
    props = {entry.key: entry.value for entry in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["mean"]) == [0.5, 0.4, 0.3] and json.loads(props["input_size"]) == [8, 8]
    assert Preprocessing.from_metadata(props) == p
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"])[9] == "c9"
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    assert Preprocessing.from_dict(sidecar["preprocessing"]) == p and info.preprocessing == p
    assert "preprocessing" in str(info)


def test_export_without_it_records_none(tmp_path):
    surgery.export_onnx(small_cnn(), torch.randn(2, 3, 8, 8), tmp_path / "m.onnx")
    assert json.loads((tmp_path / "m.onnx.json").read_text())["preprocessing"] is None
    with pytest.raises(ExportError, match="exported without preprocessing"):
        Preprocessing.from_metadata({})


@pytest.mark.parametrize("changes, words", [
    ({"class_names": ["a", "b"]}, "names 2 classes but the model's output has 10"),
    ({"input_size": (16, 16)}, r"input_size \(16, 16\) differs"),
    ({"channel_order": "L", "mean": (0.5,), "std": (0.2,)}, "model's input takes 3"),
])
def test_export_refuses_preprocessing_that_does_not_fit_the_model(tmp_path, changes, words):
    with pytest.raises(ExportError, match=words):
        surgery.export_onnx(small_cnn(), torch.randn(2, 3, 8, 8), tmp_path / "m.onnx",
                            preprocessing=preprocessing(**changes))


@pytest.mark.parametrize("changes, words", [
    ({"input_size": (8,)}, "is not \\(H, W\\)"),
    ({"mean": (0.5, 0.5)}, "needs 3 finite numbers"),
    ({"std": (0.2, 0.0, 0.2)}, "must be positive"),
    ({"crop_fraction": 1.5}, "outside \\(0, 1\\]"),
    ({"mean": 0.5}, "single value"),
])
def test_bad_fields_say_which_and_what_to_give(changes, words):
    with pytest.raises(ExportError, match=words):
        preprocessing(**changes)


def test_an_imagefolder_records_the_mean_and_std_computed_from_its_images(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "cache"))
    for split in ("train", "val"):
        for name, colour in (("red", (250, 0, 0)), ("blue", (0, 0, 250))):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), colour).save(tmp_path / "data" / split / name / "a.png")
    dataset = load_dataset(f"imagefolder:{tmp_path / 'data'}")
    p = dataset.preprocessing(num_outputs=2)
    assert p.mean == dataset.mean and p.mean[0] == pytest.approx(0.5, abs=0.01) and p.mean[1] == 0
    assert p.class_names == ("blue", "red") and p.input_size == (8, 8) and p.crop_fraction == 1.0


def test_for_outputs_keeps_matching_names_and_drops_others_saying_why():
    p = preprocessing()
    assert p.for_outputs(10) is p and p.for_outputs(None) is p
    dropped = p.for_outputs(7)
    assert dropped.class_names == () and "7 outputs, the data 10 classes" in dropped.class_names_source
    assert "no class names (not recorded" in dropped.summary()


@pytest.mark.parametrize("crop_fraction", [1.0, EVAL_CROP_FRACTION])
def test_the_examples_resize_is_the_evaluations(tmp_path, crop_fraction):
    """examples/onnx_inference.py re-implements the resize and crop without surgery: it must match images.py."""
    import runpy
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from surgery.train.data.images import resize_center_crop

    script = runpy.run_path(str(Path(__file__).resolve().parent.parent / "examples" / "onnx_inference.py"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (21, 30, 3), dtype=np.uint8))
    ours = script["resize_center_crop"](image, (12, 12), crop_fraction, "bilinear")
    assert np.array_equal(np.asarray(ours), np.asarray(resize_center_crop(image, 12, crop_fraction)))
    image.save(tmp_path / "x.png")
    p = {**preprocessing(input_size=(12, 12), crop_fraction=crop_fraction).to_dict()}
    x = script["to_input"](str(tmp_path / "x.png"), p)
    expected = (np.asarray(ours) / 255 - np.array(p["mean"])) / np.array(p["std"])
    assert x.shape == (1, 3, 12, 12) and x.dtype == np.float32
    assert np.allclose(x[0].transpose(1, 2, 0), expected, atol=1e-6)
