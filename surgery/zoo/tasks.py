"""torchvision's task families: the input a model takes, the targets it trains on, the part surgery compiles.

A ``torchvision:NAME`` spec belongs to the family whose torchvision module lists NAME
(``torchvision.models.list_models(module=...)``); every other spec is a classifier. ``TASKS``
holds each family's facts once: the shape ``--input-size`` gives, the example input built from
it, and the submodule compiled where torch.fx cannot trace the whole model (measured with
``surgery.trace`` on every builder of the family; the why is kept next to it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from surgery.errors import InputSizeError

Size = tuple[int, ...]
# (batch, size, channels, generator) -> the model's positional inputs
InputMaker = Callable[[int, Size, int, torch.Generator], tuple]


def _images(batch: int, size: Size, channels: int, generator: torch.Generator) -> tuple:
    side = size[-1]
    return (torch.randn(batch, channels, side, side, generator=generator),)


def _image_list(batch: int, size: Size, channels: int, generator: torch.Generator) -> tuple:
    """A list of images in [0, 1], as torchvision's detection models take them (they normalize and batch)."""
    side = size[-1]
    return ([torch.rand(channels, side, side, generator=generator) for _ in range(batch)],)


def _clips(batch: int, size: Size, channels: int, generator: torch.Generator) -> tuple:
    frames, height, width = size
    return (torch.randn(batch, channels, frames, height, width, generator=generator),)


def _image_pair(batch: int, size: Size, channels: int, generator: torch.Generator) -> tuple:
    side = size[-1]
    return tuple(torch.randn(batch, channels, side, side, generator=generator) for _ in range(2))


@dataclass(frozen=True)
class Task:
    name: str
    module: str  # the torchvision.models submodule that lists the family's builders ("": torchvision.models)
    size_form: str  # what --input-size gives: "S" or "T,H,W"
    size_meaning: str
    default_size: Size | None  # None: the model's own (surgery.zoo.models.default_input_size)
    make_inputs: InputMaker
    submodule: tuple[str, ...] | None  # what is compiled where the whole model does not trace; None: the whole
    why: str  # why the whole model, or why that part
    classes: bool = True  # the builders take num_classes
    size_multiple: int = 1  # height and width must be multiples of this
    dynamic_batch: bool = True  # ONNX export with a dynamic batch dimension

    @property
    def size_example(self) -> str:
        return ",".join(str(n) for n in (self.default_size or (224,)))


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("classification", "", "S", "images S x S", None, _images, None,
             "every torchvision classifier traces whole (docs/zoo.md)"),
        Task("segmentation", "segmentation", "S", "images S x S", (224,), _images, None,
             "FCN, DeepLabV3 and LR-ASPP trace whole: no control flow on values, the output dict is static"),
        Task("detection", "detection", "S", "a list of S x S images", (320,), _image_list, ("backbone",),
             "the whole model branches on targets and image sizes (transform, anchors, NMS); every "
             "backbone (ResNet/MobileNet + FPN, VGG and MobileNet SSD extractors) traces",
             dynamic_batch=False),  # a list of images has no batch dimension to make dynamic
        Task("video", "video", "T,H,W", "clips of T frames of H x W", (16, 112, 112), _clips, None,
             "R3D, MC3, R(2+1)D, S3D, MViT and Swin3D trace whole (Swin3D, with no body conv, gets skips "
             "around its Linear layers)"),
        Task("optical_flow", "optical_flow", "S", "pairs of S x S images", (128,), _image_pair, ("feature_encoder", "context_encoder"),
             "RAFT's forward checks input sizes and iterates its update block in Python; both encoders trace",
             # RAFT's own check: H and W divisible by 8; torch.export fixes the batch its correlation reshapes by
             classes=False, size_multiple=8, dynamic_batch=False),
    )
}


def task_of(spec: str) -> Task:
    """The family of the model ``spec`` names: a torchvision family module that lists it, else classification."""
    source, _, name = spec.partition(":")
    if source == "torchvision":
        for task in TASKS.values():
            if task.module and name in builders(task):
                return task
    return TASKS["classification"]


def builders(task: Task) -> list[str]:
    """The torchvision builders of ``task``, from torchvision's own registry."""
    import torchvision

    module = getattr(torchvision.models, task.module) if task.module else torchvision.models
    return torchvision.models.list_models(module=module)


# ----------------------------------------------------------------- input sizes


def parse_input_size(text: str) -> Size:
    """``"112"`` -> ``(112,)``, ``"8,112,112"`` -> ``(8, 112, 112)``: positive integers (argparse type)."""
    import argparse

    try:
        size = tuple(int(part) for part in text.split(","))
    except ValueError:
        size = ()
    if not size or min(size) < 1:
        raise argparse.ArgumentTypeError(f"{text} is not S or T,H,W (positive integers, e.g. 224 or 8,112,112)")
    return size


def input_size(spec: str, size: int | Size | None = None) -> Size | None:
    """The size the example input of ``spec`` has: ``size`` checked against the task's axes, else the
    task's default raised to what the model's torchvision weights need (None: the model's own side)."""
    task = task_of(spec)
    if size is None:
        return _default_size(task, spec)
    size = (size,) if isinstance(size, int) else tuple(size)
    if len(size) != len(task.size_form.split(",")):
        raise InputSizeError(
            f"{spec} is a {task.name.replace('_', ' ')} model: its input size is {task.size_form} "
            f"({task.size_meaning}), not {','.join(map(str, size))}; e.g. --input-size {task.size_example}."
        )
    if size[-1] % task.size_multiple:
        raise InputSizeError(f"{spec} needs height and width that are multiples of {task.size_multiple}, "
                             f"not {size[-1]}; e.g. --input-size {task.size_example}.")
    least = _least_size(task, spec)
    if any(n < m for n, m in zip(size, least)):
        raise InputSizeError(f"{spec} needs inputs of at least {','.join(map(str, least))} ({task.size_form}; the "
                             f"minimum its torchvision weights document), not {','.join(map(str, size))}.")
    return size


def _default_size(task: Task, spec: str) -> Size | None:
    if task.default_size is None:
        return None
    return tuple(max(n, m) for n, m in zip(task.default_size, _least_size(task, spec), strict=True))


def _least_size(task: Task, spec: str) -> Size:
    """The smallest input ``spec``'s torchvision weights document, on the task's axes (1s for a classifier,
    whose builders check their own sizes)."""
    axes = len(task.size_form.split(","))
    if task.default_size is None:
        return (1,) * axes
    return weights_minimum(spec.partition(":")[2])[-axes:]


def weights_minimum(name: str) -> Size:
    """``(frames, height, width)`` the smallest input torchvision's weights of ``name`` document (1 if none)."""
    import torchvision

    try:
        meta = next(iter(torchvision.models.get_model_weights(name))).meta
    except (ValueError, KeyError, StopIteration):
        return (1, 1, 1)
    height, width = meta.get("min_size", (1, 1))
    return (meta.get("min_temporal_size", 1), height, width)


# ------------------------------------------------------------- example inputs


def example_inputs(spec: str, size: Size, *, batch: int = 2, channels: int = 3, seed: int = 0,
                   device: torch.device | str = "cpu") -> tuple:
    """Seeded random inputs of ``spec``'s task at ``size`` (from ``input_size``): the model's positional args."""
    inputs = task_of(spec).make_inputs(batch, size, channels, torch.Generator().manual_seed(seed))
    return tree_map(lambda x: x.to(device), inputs)


def describe_inputs(inputs: tuple) -> str:
    """``2 x 3 x 224 x 224``; a list of images: ``2 images of 3 x 320 x 320``; pairs joined by ', '."""
    def one(x: Any) -> str:
        if torch.is_tensor(x):
            return " x ".join(map(str, x.shape))
        shapes = {tuple(t.shape) for t in x}
        return f"{len(x)} images of " + (" x ".join(map(str, shapes.pop())) if len(shapes) == 1 else "varied sizes")

    return ", ".join(one(x) for x in inputs)


def train_inputs(model: nn.Module, inputs: tuple, *, num_classes: int | None = None, seed: int = 0) -> tuple:
    """The inputs a train-mode forward of ``model`` needs to return its losses: ``inputs``, plus synthetic
    targets for a torchvision detection model (whose forward takes ``(images, targets)``)."""
    if not _is_detection(model):
        return inputs
    images = inputs[0]
    return (images, detection_targets(model, images, num_classes=num_classes, seed=seed))


def _is_detection(model: nn.Module) -> bool:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    return isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform)


def detection_targets(model: nn.Module, images: list[torch.Tensor], *, num_classes: int | None = None,
                      boxes_per_image: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random boxes and labels per image, with masks for a Mask R-CNN and keypoints for a Keypoint R-CNN
    (what the model's ROI heads predict decides): what a train-mode forward needs to return its loss dict."""
    generator = torch.Generator().manual_seed(seed)
    heads = getattr(model, "roi_heads", None)
    targets = []
    for image in images:
        height, width = image.shape[-2:]
        boxes = _random_boxes(boxes_per_image, height, width, generator)
        # label 0 is the background of the R-CNNs; any label below num_classes is valid for every head
        target = {"boxes": boxes.to(image.device),
                  "labels": torch.randint(1, max(num_classes or 2, 2), (boxes_per_image,), generator=generator)}
        if heads is not None and heads.has_mask():
            target["masks"] = _box_masks(boxes, height, width)
        if heads is not None and heads.has_keypoint():
            target["keypoints"] = _box_keypoints(boxes, heads.keypoint_predictor.kps_score_lowres.out_channels,
                                                 generator)
        targets.append({k: v.to(image.device) for k, v in target.items()})
    return targets


def _random_boxes(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` boxes (x1, y1, x2, y2) inside the image, each a quarter to half of its side."""
    side = torch.tensor([width, height, width, height], dtype=torch.float32)
    corner = torch.rand(count, 2, generator=generator) * 0.5
    extent = 0.25 + torch.rand(count, 2, generator=generator) * 0.25
    return torch.cat([corner, corner + extent], dim=1) * side


def _box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist(), strict=True):
        mask[y1:y2, x1:x2] = 1
    return masks


def _box_keypoints(boxes: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` visible keypoints per box, somewhere inside it: (boxes, count, (x, y, visible))."""
    where = torch.rand(len(boxes), count, 2, generator=generator)
    xy = boxes[:, None, :2] + where * (boxes[:, None, 2:] - boxes[:, None, :2])
    return torch.cat([xy, torch.ones(len(boxes), count, 1)], dim=2)


def default_submodule(spec: str) -> tuple[str, ...] | None:
    """What surgery compiles of ``spec`` by default: its task's submodules, or None for the whole model."""
    return task_of(spec).submodule


def builder_kwargs(name: str, task: Task, num_classes: int | None) -> dict[str, Any]:
    """Constructor arguments that build ``name`` with random weights only: ``weights_backbone=None`` where
    the builder takes it (no ImageNet backbone download), ``num_classes`` where the task has classes."""
    import inspect
    import warnings

    import torchvision

    kwargs: dict[str, Any] = {}
    if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None
    if num_classes is not None and task.classes:
        kwargs["num_classes"] = num_classes
    elif num_classes is not None:
        warnings.warn(f"torchvision:{name} is a {task.name.replace('_', ' ')} model without classes; "
                      f"ignoring num_classes={num_classes}.")
    return kwargs
