"""What a loaded dataset is: its splits (uint8 images and int64 labels) and what a model needs to know."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from surgery.errors import DataError, did_you_mean
from surgery.compiler.preprocessing import Preprocessing
from surgery.train.data.images import EVAL_CROP_FRACTION

# Where each dataset's class names come from, for the exported model's metadata.
CLASS_NAMES_SOURCE = {
    "digits": "the digit shown (scikit-learn's 8x8 digits: light strokes on a dark background)",
    "synthetic": "synthetic data has no class names: 'class<i>' stands for index i",
    "cifar10": "CIFAR-10's class names",
    "cifar100": "CIFAR-100's class names",
    "cifar10-jpeg": "the folder names under train/, sorted",
    "imagefolder": "the folder names under train/, sorted",
}


@dataclass
class Split:
    """One split: uint8 ``N x C x H x W`` images on the CPU and int64 labels.

    A streamed split keeps ``images=None`` and the image ``files`` instead.
    """

    images: torch.Tensor | None
    labels: torch.Tensor
    files: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def streamed(self) -> bool:
        return self.images is None

    def subset(self, indices: torch.Tensor) -> Split:
        """The samples at ``indices``, in that order."""
        images = None if self.images is None else self.images[indices]
        files = None if self.files is None else [self.files[i] for i in indices.tolist()]
        return Split(images=images, labels=self.labels[indices], files=files)


@dataclass
class ImageDataset:
    """A dataset's splits and what a model and a loader need to know about them."""

    name: str
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    channels: int
    splits: dict[str, Split] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        """The split called ``name``; a DataError listing the splits there are otherwise."""
        if name not in self.splits:
            hint = " Pass val_split > 0 (e.g. 0.1) to hold out 'val' from 'train'." if name == "val" else ""
            raise DataError(
                f"dataset '{self.name}' has no split '{name}'; it has {', '.join(self.splits)}."
                f"{did_you_mean(name, self.splits)}{hint}"
            )
        return self.splits[name]

    def preprocessing(self, num_outputs: int | None = None) -> Preprocessing:
        """What a model trained on this dataset expects, as evaluation fed it (for deployment).

        Streamed splits are evaluated at the ImageNet crop (``EVAL_CROP_FRACTION``); in-memory
        ones were decoded whole (shorter side to the size). A model with ``num_outputs`` other
        than the class count gets no names: they would not say which output is which.
        """
        streamed = any(split.streamed for split in self.splits.values())
        return Preprocessing(
            input_size=(self.image_size, self.image_size), mean=self.mean, std=self.std,
            class_names=tuple(self.classes),
            class_names_source=CLASS_NAMES_SOURCE.get(self.name, "the dataset's class names"),
            crop_fraction=EVAL_CROP_FRACTION if streamed else 1.0,
        ).for_outputs(num_outputs)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], accumulated in float64."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for part in images.split(chunk):
        values = part.to(torch.float64).div_(255.0)
        total += values.sum(dim=(0, 2, 3))
        squares += values.square_().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())
