"""The built-in datasets: scikit-learn's digits, a synthetic one, and torchvision's CIFAR files.

- ``digits``: 8x8 digits upsampled (bilinear) to ``image_size`` (default 32) and replicated
  to 3 channels; a fixed 1437 / 360 train / test split.
- ``synthetic``: 10 classes of smooth random templates plus noise, 1000 / 200 images;
  learnable, offline, made in milliseconds.
- ``cifar10`` / ``cifar100``: torchvision's files under ``root`` (default ``$SURGERY_DATA``
  or ``~/.cache/tost-surgery/data``); ``download=True`` fetches them.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from surgery.errors import DataError
from surgery.train.data.dataset import ImageDataset, Split, channel_stats

# Per-channel statistics of the CIFAR training sets, images scaled to [0, 1].
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# Fixed seeds: the digits / synthetic test sets never change between runs.
_DIGITS_SPLIT_SEED = 20_240_601
_DIGITS_TEST_SIZE = 360
_SYNTHETIC_SEED = 20_240_602
_SYNTHETIC_CLASSES = 10
_SYNTHETIC_TRAIN, _SYNTHETIC_TEST = 1000, 200


def load_digits(image_size: int) -> ImageDataset:
    digits, targets = digits_arrays()
    pixels = torch.from_numpy(digits).float().div_(16.0).unsqueeze(1)  # values 0..16
    images = _to_uint8(F.interpolate(pixels, size=(image_size, image_size), mode="bilinear",
                                     align_corners=False)).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(targets).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    test_idx, train_idx = order[:_DIGITS_TEST_SIZE].sort().values, order[_DIGITS_TEST_SIZE:].sort().values
    return _in_memory_dataset("digits", [str(c) for c in range(10)], image_size, {
        "train": Split(images[train_idx], labels[train_idx]),
        "test": Split(images[test_idx], labels[test_idx]),
    })


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits (8x8, values 0..16) and labels, as ``sklearn.datasets.load_digits`` reads them
    from the file scikit-learn ships; read here because importing ``sklearn.datasets`` imports SciPy's stats
    and more (a second or two) for 57 kB of CSV. Another layout falls back to scikit-learn's own loader."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        return bunch.images, bunch.target
    with gzip.open(path, "rt", encoding="utf-8") as file:
        data = np.loadtxt(file, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def load_synthetic(image_size: int) -> ImageDataset:
    """Each class a smooth random template (4x4 noise upsampled bicubically) plus pixel noise."""
    generator = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    coarse = torch.rand(_SYNTHETIC_CLASSES, 3, 4, 4, generator=generator)
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False)
    total = _SYNTHETIC_TRAIN + _SYNTHETIC_TEST
    labels = (torch.arange(total) % _SYNTHETIC_CLASSES)[torch.randperm(total, generator=generator)]
    noise = torch.randn(total, 3, image_size, image_size, generator=generator)
    images = _to_uint8(0.15 + 0.7 * templates[labels] + 0.25 * noise)
    classes = [f"class{c}" for c in range(_SYNTHETIC_CLASSES)]
    return _in_memory_dataset("synthetic", classes, image_size, {
        "train": Split(images[:_SYNTHETIC_TRAIN], labels[:_SYNTHETIC_TRAIN]),
        "test": Split(images[_SYNTHETIC_TRAIN:], labels[_SYNTHETIC_TRAIN:]),
    })


def load_cifar(name: str, root: Path, download: bool, image_size: int | None) -> ImageDataset:
    import torchvision
    from torchvision.transforms.v2.functional import resize

    factory = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    splits, classes = {}, []
    for split_name, is_train in (("train", True), ("test", False)):
        try:
            source = factory(str(root), train=is_train, download=download)
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
            raise DataError(
                f"{name}: no usable data in {root.resolve()} ({error}). Pass download=True (Python) or "
                f"--download (CLI) to fetch it there, or point root= / --data-root (or $SURGERY_DATA) "
                f"at the folder that holds it."
            ) from error
        except OSError as error:  # a failed download
            raise DataError(
                f"{name}: could not download into {root.resolve()}: {error}. Download it on a machine "
                f"with internet access and pass its folder as root= / --data-root."
            ) from error
        images = torch.from_numpy(source.data).permute(0, 3, 1, 2).contiguous()
        if image_size is not None and image_size != images.shape[-1]:
            images = resize(images, [image_size, image_size], antialias=True)  # uint8 in, uint8 out
        splits[split_name] = Split(images, torch.as_tensor(source.targets, dtype=torch.int64))
        classes = list(source.classes)
    mean, std = CIFAR_STATS[name]
    return ImageDataset(name, len(classes), classes, mean, std, image_size or 32, 3, splits)


def _in_memory_dataset(name: str, classes: list[str], image_size: int, splits: dict[str, Split]) -> ImageDataset:
    mean, std = channel_stats(splits["train"].images)
    return ImageDataset(name, len(classes), classes, mean, std, image_size, 3, splits)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 0..255 (rounded, clamped)."""
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
