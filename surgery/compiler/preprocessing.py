"""What an exported image model expects, as data: how to turn an image file into its input, and its outputs into names.

``Preprocessing`` is written into an ONNX file's ``metadata_props`` (one key per field,
each value JSON, so any onnxruntime user reads it with ``custom_metadata_map`` and
``json.loads``), into the export sidecar and into a run's ``result.json``. The steps,
in order: decode to ``channel_order`` uint8 pixels; resize (``interpolation``) by the
smallest factor that makes the image cover ``input_size / crop_fraction`` (for a square
input: the shorter side becomes ``size / crop_fraction``) and take the central ``input_size``
crop; multiply by ``scale``; subtract ``mean`` and divide by ``std`` per channel; lay out
as ``layout`` ``dtype``. Output index ``i`` of the logits is class ``class_names[i]``.

No torch here: ``examples/onnx_inference.py`` implements the same steps from the file alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from surgery.errors import ExportError

PREPROCESSING_FORMAT = 1  # the metadata's ``preprocessing_format``: bump when a field changes meaning
FORMAT_KEY = "preprocessing_format"
SUMMARY_KEY = "preprocessing"  # the steps in words, for people reading the metadata (Netron, onnx.load)


@dataclass(frozen=True)
class Preprocessing:
    """How to feed an image model: input size, pixel order and scaling, mean/std, resize rule, class names.

    ``input_size`` is ``(H, W)``; ``scale`` multiplies uint8 pixels (``1/255``: values in
    [0, 1]) before ``(x - mean) / std``; ``crop_fraction`` is the evaluation's resize rule
    (shorter side to ``size / crop_fraction``, then the central crop: 1.0 keeps the whole
    shorter side, 0.875 is the ImageNet convention). ``class_names`` maps output index to
    name (empty: not recorded); ``class_names_source`` says where the names come from.
    """

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    class_names_source: str = "not recorded"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    scale: float = 1 / 255
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        # Lists (from JSON or YAML) become tuples: the dataclass stays hashable and comparable.
        for name in ("input_size", "mean", "std", "class_names"):
            value = getattr(self, name)
            if isinstance(value, (int, float, str)):
                raise ExportError(f"preprocessing {name}={value!r} is a single value; give a list, e.g. {name}=[...].")
            object.__setattr__(self, name, tuple(value))
        _check(self)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def for_outputs(self, num_outputs: int | None) -> Preprocessing:
        """This, without class names when the model has ``num_outputs`` other than their count (None: unknown).

        Names that do not match the outputs would not say which output is which; saying so beats guessing.
        """
        if num_outputs is None or not self.class_names or num_outputs == len(self.class_names):
            return self
        return replace(self, class_names=(), class_names_source=(
            f"not recorded: the model has {num_outputs} outputs, the data {len(self.class_names)} classes"))

    def metadata(self) -> dict[str, str]:
        """ONNX ``metadata_props``: one key per field, JSON values, plus the format and the steps in words."""
        props = {f.name: json.dumps(getattr(self, f.name)) for f in fields(self)}
        props[FORMAT_KEY] = json.dumps(PREPROCESSING_FORMAT)
        props[SUMMARY_KEY] = json.dumps(self.summary())
        return props

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> Preprocessing:
        """The ``Preprocessing`` an exported file's metadata holds (``metadata`` read back)."""
        if FORMAT_KEY not in props:
            raise ExportError(
                f"the ONNX metadata has no '{FORMAT_KEY}': the file was exported without preprocessing "
                "(export_onnx(..., preprocessing=Preprocessing(...)) records it)."
            )
        return cls.from_dict({f.name: json.loads(props[f.name]) for f in fields(cls) if f.name in props})

    @classmethod
    def from_file(cls, path: str | Path) -> Preprocessing:
        """The preprocessing a JSON file records: a run's ``result.json``, an export sidecar
        (``model.onnx.json``) or a bare ``to_dict()``."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ExportError(f"cannot read preprocessing from {path} ({error}); give a run's result.json, an "
                              "export's model.onnx.json or a JSON file of the fields (input_size, mean, std, ...).") from error
        found = data.get("preprocessing", data) if isinstance(data, dict) else None
        if not isinstance(found, dict) or "input_size" not in found:
            raise ExportError(f"{path} records no preprocessing (no input_size, mean, std); give a run's result.json, "
                              "an export's model.onnx.json or a JSON file of those fields.")
        return cls.from_dict(found)

    def summary(self) -> str:
        """The steps in one line, e.g. for summary.md's ``preprocessing`` row."""
        height, width = self.input_size
        cover = f"{height / self.crop_fraction:g}x{width / self.crop_fraction:g}"
        source = self.class_names_source
        names = f"class names: {source}" if self.class_names else f"no class names ({source})"
        return (
            f"{self.channel_order} {self.layout} {self.dtype} {height}x{width}: resize to cover {cover} "
            f"({self.interpolation}), center-crop {height}x{width}, x{_number(self.scale)}, "
            f"mean {_numbers(self.mean)}, std {_numbers(self.std)}; {names}"
        )


def _check(p: Preprocessing) -> None:
    """Each field a usable value; the error names the field and what to give."""
    if len(p.input_size) != 2 or not all(isinstance(v, int) and v > 0 for v in p.input_size):
        raise ExportError(f"preprocessing input_size={p.input_size!r} is not (H, W) in pixels; give e.g. (224, 224).")
    channels = len(p.channel_order)
    for name in ("mean", "std"):
        values = getattr(p, name)
        if len(values) != channels or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ExportError(
                f"preprocessing {name}={values!r} needs {channels} finite numbers, one per channel of "
                f"channel_order '{p.channel_order}'."
            )
    if min(p.std) <= 0:
        raise ExportError(f"preprocessing std={p.std!r} has a value <= 0; every channel's std must be positive.")
    if not 0.0 < p.crop_fraction <= 1.0:
        raise ExportError(
            f"preprocessing crop_fraction={p.crop_fraction!r} is outside (0, 1]; 1.0 keeps the whole shorter "
            "side, 0.875 resizes to size / 0.875 and crops the centre."
        )
    if not all(isinstance(n, str) for n in p.class_names):
        raise ExportError("preprocessing class_names must be strings, one per output index (index -> name).")


def _number(value: float) -> str:
    return "1/255" if math.isclose(value, 1 / 255) else f"{value:g}"


def _numbers(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
