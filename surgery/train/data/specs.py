"""``load_dataset(spec)``: parse a dataset spec, load what it names, hold out a validation split.

Specs (``DATASETS`` names the kinds): ``digits``, ``synthetic``, ``cifar10`` / ``cifar100``
(``builtin.py``), ``cifar10-jpeg:PATH`` and ``imagefolder:PATH`` (``folders.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from surgery.errors import DataError, did_you_mean
from surgery.train.data.builtin import CIFAR_STATS, load_cifar, load_digits, load_synthetic
from surgery.train.data.dataset import ImageDataset
from surgery.train.data.folders import load_folder_dataset
from surgery.train.data.seeds import VAL_SALT, mix_seed

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "cifar10-jpeg", "imagefolder", "digits", "synthetic")
SPEC_FORMS: tuple[str, ...] = (
    "cifar10", "cifar100", "cifar10-jpeg:PATH", "imagefolder:PATH", "digits", "synthetic",
)
_NEEDS_PATH = ("cifar10-jpeg", "imagefolder")
DATASETS_WITH_PATHS = _NEEDS_PATH  # kinds whose spec holds a path (KIND:PATH)


def load_dataset(
    spec: str,
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_split: float = 0.0,
    seed: int = 0,
    stream: bool | None = None,
) -> ImageDataset:
    """Load the dataset ``spec`` names (see ``surgery.train.data`` for the forms).

    ``val_split`` in [0, 1) holds out that fraction of ``train`` as ``val``, drawn from a
    generator derived from ``seed``. ``stream`` forces (True) or forbids (False) streaming
    an ``imagefolder`` from disk; None decides by its decoded size.
    """
    kind, path = _parse_spec(spec)
    _check_val_split(val_split)
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size={image_size!r} is not a positive integer; pass e.g. image_size=32.")
    if stream and kind not in _NEEDS_PATH:
        raise DataError(f"stream=True applies to folder datasets (imagefolder:PATH), not '{kind}'; drop it.")
    if kind == "digits":
        dataset = load_digits(image_size or 32)
    elif kind == "synthetic":
        dataset = load_synthetic(image_size or 32)
    elif kind in CIFAR_STATS:
        dataset = load_cifar(kind, _data_root(root), download, image_size)
    else:
        eval_dirs = ("test",) if kind == "cifar10-jpeg" else ("val", "test")
        dataset = load_folder_dataset(kind, path, eval_dirs, image_size, stream)
    if val_split > 0:
        _hold_out_val(dataset, val_split, seed)
    return dataset


def _parse_spec(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or not spec:
        raise DataError(f"dataset spec {spec!r} is empty; pass one of: {', '.join(SPEC_FORMS)}.")
    kind, sep, path = spec.partition(":")
    if kind not in DATASETS:
        raise DataError(
            f"unknown dataset '{kind}' (from spec '{spec}'); known: {', '.join(SPEC_FORMS)}."
            f"{did_you_mean(kind, DATASETS)}"
        )
    if kind in _NEEDS_PATH and not path:
        raise DataError(
            f"dataset '{kind}' needs a path: '{kind}:PATH' with PATH a folder (or .tar.gz) holding "
            f"train/<class>/<image>, e.g. '{kind}:../shared/data/cifar10-jpeg.tar.gz'."
        )
    if kind not in _NEEDS_PATH and sep:
        raise DataError(f"dataset '{kind}' takes no ':{path}' part; pass just '{kind}'.")
    return kind, path


def _check_val_split(val_split: float) -> None:
    if not isinstance(val_split, (int, float)) or not 0.0 <= float(val_split) < 1.0:
        raise DataError(
            f"val_split={val_split!r} is outside [0, 1); pass the fraction of train to hold out, e.g. 0.1."
        )


def _hold_out_val(dataset: ImageDataset, val_split: float, seed: int) -> None:
    """Move a ``val_split`` fraction of ``train`` into a new ``val`` split (both kept sorted)."""
    train = dataset.splits["train"]
    n = len(train)
    n_val = round(n * val_split)
    if n_val < 1 or n_val >= n:
        raise DataError(
            f"val_split={val_split} of the {n} training images of '{dataset.name}' holds out {n_val}; "
            f"pick a fraction that leaves at least one image in both train and val."
        )
    generator = torch.Generator().manual_seed(mix_seed(seed, VAL_SALT))
    order = torch.randperm(n, generator=generator)
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    dataset.splits["train"] = train.subset(train_idx)
    dataset.splits["val"] = train.subset(val_idx)


def _data_root(root: str | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("SURGERY_DATA") or "~/.cache/tost-surgery/data").expanduser()
