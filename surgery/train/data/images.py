"""One image file to uint8 pixels: decode with Pillow, resize and crop, and the streamed-training crops.

Hand-written on purpose: ``resize_center_crop`` is one Pillow resize of a sub-pixel box
(torchvision's ``resized_crop`` first crops to whole pixels, which changes the pixels and
so every cached dataset), and ``random_resized_crop`` draws from a per-sample
``random.Random`` (torchvision's ``RandomResizedCrop`` draws from torch's global RNG,
which would make epochs neither reproducible nor resumable).
"""

from __future__ import annotations

import functools
import math
import random
from typing import BinaryIO

import numpy as np
import torch

from surgery.errors import DataError

EVAL_CROP_FRACTION = 0.875


@functools.cache
def image_extensions() -> tuple[str, ...]:
    """torchvision's image extensions plus .gif (Pillow reads it); imported on first use (torchvision takes a second)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return (*IMG_EXTENSIONS, ".gif")


def is_image(name: str) -> bool:
    """Whether a file name (or path) is a visible image file by its extension."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(image_extensions())


def decode_image(source: str | BinaryIO, size: int | None) -> np.ndarray:
    """One image as uint8 ``H x W x 3``; resized (shorter side) and center-cropped to ``size`` if given."""
    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = resize_center_crop(image, size, crop_fraction=1.0)
    return np.asarray(image)


def decode_checked(name: str, source: str | BinaryIO, size: int | None, label: str | None = None) -> np.ndarray:
    """``decode_image``, with a DataError naming the file that Pillow cannot read."""
    try:
        return decode_image(source, size)
    except OSError as error:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(
            f"{name}: cannot decode {label or source}: {error}. Remove or replace the file."
        ) from error


def resize_center_crop(image, size: int, crop_fraction: float):
    """Resize so the shorter side is ``size / crop_fraction``, then crop the central ``size x size``."""
    from PIL import Image

    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    width, height = image.size
    scale = size / crop_fraction / min(width, height)
    # The crop box in source pixels: resizing it straight to size x size is one PIL call.
    box_w, box_h = size / scale, size / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return image.resize((size, size), bilinear, box=(left, top, left + box_w, top + box_h))


def random_resized_crop(image, size: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop (a random area and aspect ratio) resized to ``size x size``."""
    from PIL import Image

    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_w, crop_h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top, left = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
            return image.resize((size, size), bilinear, box=(left, top, left + crop_w, top + crop_h))
    return resize_center_crop(image, size, crop_fraction=1.0)  # degenerate shapes: the whole image


class FileImages(torch.utils.data.Dataset):
    """Images decoded on demand; the key is ``(index, sample_seed)`` so augmentation is seeded per sample.

    Training: a random resized crop and a flip; evaluation: resize to ``size / 0.875`` and
    center crop.
    """

    def __init__(self, files: list[str], labels: torch.Tensor, image_size: int, augment: bool):
        self.files, self.labels = files, labels.tolist()
        self.image_size, self.augment = image_size, augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from PIL import Image

        index, sample_seed = key
        with Image.open(self.files[index]) as image:
            image = image.convert("RGB")
        flip = False
        if self.augment:
            rng = random.Random(sample_seed)
            image = random_resized_crop(image, self.image_size, rng)
            flip = rng.random() < 0.5
        else:
            image = resize_center_crop(image, self.image_size, EVAL_CROP_FRACTION)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return (pixels.flip(-1) if flip else pixels).contiguous(), self.labels[index]
