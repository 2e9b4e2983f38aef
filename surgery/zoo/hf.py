"""Hugging Face ``transformers`` vision models: the ``hf:<ModelClass>`` model spec.

A model is built from its config class with random weights (nothing downloads). ``SMALL_CONFIGS``
gives each supported class a small config (32 x 32 inputs, a few channels, one or two blocks per
stage) so that a spec alone gives a model that runs in seconds on a CPU; config fields given to the
builder, or in a JSON / YAML file named after the class (``hf:ViTForImageClassification:vit.json``,
e.g. a ``config.json`` that transformers saved), are set over it. Any other transformers model class
is built from its config's own defaults (often large). ``num_classes`` is the config's ``num_labels``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from surgery.errors import MissingExtraError, SurgeryError, UnknownModelError, did_you_mean

INPUT_SIZE = 32  # the side of the images the small configs are made for
_VIT = {"image_size": INPUT_SIZE, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64}
_CONVNEXT = {"num_stages": 2, "hidden_sizes": [16, 32], "depths": [1, 1], "out_features": ["stage1", "stage2"]}

# A small config per supported class: its fields over the config class's defaults.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "ResNetForImageClassification": {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1]},
    "ConvNextForImageClassification": _CONVNEXT,
    "ConvNextV2ForImageClassification": _CONVNEXT,
    "RegNetForImageClassification": {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1],
                                     "groups_width": 8},
    "EfficientNetForImageClassification": {"image_size": INPUT_SIZE, "width_coefficient": 0.25,
                                           "depth_coefficient": 0.25, "hidden_dim": 320},  # round_filters(1280)
    "MobileNetV2ForImageClassification": {"image_size": INPUT_SIZE, "depth_multiplier": 0.25},
    "MobileViTForImageClassification": {"image_size": INPUT_SIZE, "hidden_sizes": [16, 24, 32],
                                        "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64], "num_attention_heads": 2},
    "ViTForImageClassification": _VIT,
    "DeiTForImageClassification": _VIT,
    "BeitForImageClassification": _VIT,
    "Dinov2ForImageClassification": {**{k: v for k, v in _VIT.items() if k != "intermediate_size"}, "mlp_ratio": 2},
    "SwinForImageClassification": {"image_size": INPUT_SIZE, "patch_size": 4, "embed_dim": 16, "depths": [1, 1],
                                   "num_heads": [1, 2], "window_size": 4},
    "SegformerForSemanticSegmentation": {"num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1],
                                         "hidden_sizes": [16, 32], "num_attention_heads": [1, 2],
                                         "patch_sizes": [7, 3], "strides": [4, 2], "decoder_hidden_size": 32},
    "DPTForSemanticSegmentation": {**_VIT, "num_hidden_layers": 4, "backbone_out_indices": [0, 1, 2, 3],
                                   "neck_hidden_sizes": [8, 16, 32, 32], "fusion_hidden_size": 16,
                                   "use_auxiliary_head": False},
    "UperNetForSemanticSegmentation": {"backbone_config": {"model_type": "convnext", **_CONVNEXT},
                                       "hidden_size": 16, "pool_scales": [1, 2], "auxiliary_channels": 16,
                                       "use_auxiliary_head": False},
    "LevitForImageClassification": {"image_size": INPUT_SIZE, "hidden_sizes": [32, 48, 64],
                                    "num_attention_heads": [1, 2, 2], "depths": [1, 1, 1], "key_dim": [8, 8, 8]},
    "PoolFormerForImageClassification": {"hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1]},
    "CvtForImageClassification": {"embed_dim": [16, 32, 48], "num_heads": [1, 2, 2], "depth": [1, 2, 3]},  # depth[i] > i: transformers indexes its drop-path rates by stage
}


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise MissingExtraError(f"hf: model specs need transformers ({error}); install it with: "
                                "pip install \"tost-surgery[hf]\"") from error
    return transformers


def build_hf(name: str, num_classes: int | None = None, **fields: Any) -> nn.Module:
    """The transformers model class ``name`` (``Class`` or ``Class:config.json``) built from its small
    config (``SMALL_CONFIGS``), the file's fields and ``fields`` over it; random weights."""
    class_name, _, config_file = name.partition(":")
    model_class = model_class_of(class_name)
    fields = {**SMALL_CONFIGS.get(class_name, {}), **(read_config_file(config_file) if config_file else {}), **fields}
    if num_classes is not None:
        fields["num_labels"] = num_classes
    config = make_config(model_class, fields)
    try:
        return model_class(config)
    except Exception as error:  # transformers checks some fields only when building the model
        raise SurgeryError(f"transformers could not build {class_name} from that config: "
                           f"{type(error).__name__}: {error}") from error


def model_class_of(class_name: str) -> type[nn.Module]:
    """The transformers model class ``class_name``; an ``UnknownModelError`` suggesting close names."""
    transformers = transformers_module()
    model_class = getattr(transformers, class_name, None) if class_name.isidentifier() else None
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)
            and getattr(model_class, "config_class", None) is not None):
        raise UnknownModelError(
            f"transformers has no model class '{class_name}'." + did_you_mean(class_name, _model_class_names())
            + " Give a model class such as hf:ViTForImageClassification; tested with small default configs: "
            + ", ".join(SMALL_CONFIGS) + "."
        )
    return model_class


def _model_class_names() -> list[str]:
    """The supported classes and transformers' public names that look like model classes."""
    transformers = transformers_module()
    public = [n for n in dir(transformers) if n.endswith(("Model", "ForImageClassification", "ForSemanticSegmentation",
                                                           "ForDepthEstimation"))]
    return list(SMALL_CONFIGS) + public


def make_config(model_class: type[nn.Module], fields: dict[str, Any]) -> Any:
    """``model_class``'s config with ``fields``; what transformers refuses, in a ``SurgeryError``. A field the
    config does not have is refused here: transformers would keep it silently and build without it."""
    known = config_fields(model_class)
    for name in fields:
        if name not in known:
            raise SurgeryError(f"{model_class.config_class.__name__} has no field '{name}'." + did_you_mean(name, known))
    try:
        return model_class.config_class(**fields)
    except Exception as error:
        raise SurgeryError(f"transformers refuses the config of {model_class.__name__} "
                           f"({model_class.config_class.__name__}): {type(error).__name__}: {error}") from error


def config_fields(model_class: type[nn.Module]) -> list[str]:
    """The fields of ``model_class``'s config: a default one's, and ``num_labels`` (kept as ``id2label``)."""
    return [*model_class.config_class().to_dict(), "num_labels"]


def read_config_file(path: str) -> dict[str, Any]:
    """The fields in a JSON or YAML config file (a mapping)."""
    file = Path(path)
    if not file.is_file():
        raise UnknownModelError(f"hf: config file '{path}' does not exist (spec form: hf:ModelClass:config.json).")
    text = file.read_text()
    try:
        fields = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SurgeryError(f"hf: config file '{path}' is not valid {file.suffix.lstrip('.') or 'YAML'}: {error}") from error
    if not isinstance(fields, dict):
        raise SurgeryError(f"hf: config file '{path}' holds a {type(fields).__name__}, not a mapping of config fields.")
    return fields


def hf_size_arguments(name: str, input_size: int) -> dict[str, Any]:
    """``image_size`` for a config that has one (ViT-style position embeddings are made for it)."""
    class_name = name.partition(":")[0]
    return {"image_size": input_size} if "image_size" in config_fields(model_class_of(class_name)) else {}


def hf_input_size(model: nn.Module) -> int:
    """The side of the images the model's config is made for, else ``INPUT_SIZE``."""
    size = getattr(getattr(model, "config", None), "image_size", None)
    size = size[-1] if isinstance(size, (list, tuple)) else size
    return int(size) if isinstance(size, int) else INPUT_SIZE
