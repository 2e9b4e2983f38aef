"""Classify an image file with an exported model, from the ONNX file alone: onnxruntime, Pillow, numpy.

    python examples/onnx_inference.py runs/tiny/model.onnx cat.jpg [--top 5]

``surgery`` writes how to feed the model into the file's ``metadata_props`` (one key per
field, each value JSON; ``surgery.Preprocessing``): input size, channel order, scaling,
mean/std, the resize/center-crop rule the evaluation used and the class names. This
script reads them back and does those steps itself; it imports neither torch nor
surgery, so it runs wherever onnxruntime does.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

FIELDS = ("input_size", "mean", "std", "class_names", "channel_order", "layout", "dtype", "scale",
          "crop_fraction", "interpolation")


def read_preprocessing(session: ort.InferenceSession) -> dict:
    """The preprocessing the exporter recorded; a clear exit when the file has none."""
    props = session.get_modelmeta().custom_metadata_map
    if "preprocessing_format" not in props:
        sys.exit("this ONNX file records no preprocessing: export it with surgery.export_onnx(..., "
                 "preprocessing=...) or from a `surgery run` with export.onnx: true.")
    return {name: json.loads(props[name]) for name in FIELDS if name in props}


def resize_center_crop(image: Image.Image, size: tuple[int, int], crop_fraction: float, interpolation: str):
    """Scale so the image covers ``size / crop_fraction``, then take the central ``size``: one resize of a box."""
    height, width = size
    scale = max(height / image.height, width / image.width) / crop_fraction
    box_w, box_h = width / scale, height / scale  # the crop in source pixels
    left, top = (image.width - box_w) / 2, (image.height - box_h) / 2
    resample = getattr(Image.Resampling, interpolation.upper())
    return image.resize((width, height), resample, box=(left, top, left + box_w, top + box_h))


def to_input(path: str, p: dict) -> np.ndarray:
    """One image file as the model's input: a batch of one, laid out and normalized as recorded."""
    if p["layout"] != "NCHW":
        sys.exit(f"this script lays images out as NCHW; the model expects {p['layout']}.")
    bgr = p["channel_order"] == "BGR"  # Pillow has no BGR mode: decode RGB, reverse the channels
    with Image.open(path) as image:
        image = image.convert("RGB" if bgr else p["channel_order"])
    pixels = resize_center_crop(image, tuple(p["input_size"]), p["crop_fraction"], p["interpolation"])
    x = np.asarray(pixels, dtype=np.float64).reshape(*p["input_size"], -1) * p["scale"]
    x = x[..., ::-1] if bgr else x
    x = (x - np.array(p["mean"])) / np.array(p["std"])
    return x.transpose(2, 0, 1)[None].astype(p["dtype"])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the exported .onnx file")
    parser.add_argument("image", help="an image file Pillow can read")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    p = read_preprocessing(session)
    logits = session.run(None, {session.get_inputs()[0].name: to_input(args.image, p)})[0][0]
    names = p.get("class_names") or []
    probabilities = softmax(logits.astype(np.float64))
    for rank, index in enumerate(np.argsort(-logits, kind="stable")[: args.top], start=1):
        name = names[index] if index < len(names) else f"index {index} (no name recorded)"
        print(f"{rank}. {name}  (class {index}, p={probabilities[index]:.3f})")


if __name__ == "__main__":
    main()
