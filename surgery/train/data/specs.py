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
from surgery.train.data.seeds import SUBSET_SALT, VAL_SALT, mix_seed

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
    subset: int | None = None,
    subset_seed: int = 0,
) -> ImageDataset:
    """Load the dataset ``spec`` names (see ``surgery.train.data`` for the forms).

    ``subset`` keeps that many class-balanced ``train`` images, drawn from ``subset_seed``
    alone (a study's arms and seeds all see the same images); the other splits stay whole.
    ``val_split`` in [0, 1) then holds out that fraction of ``train`` as ``val``, drawn from a
    generator derived from ``seed``. ``stream`` forces (True) or forbids (False) streaming
    an ``imagefolder`` from disk; None decides by its decoded size.
    """
    kind, path = _parse_spec(spec)
    _check_val_split(val_split)
    check_subset(subset)
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
    if subset is not None:
        _take_subset(dataset, subset, subset_seed)
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


def check_subset(subset: int | None) -> None:
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise DataError(f"subset={subset!r} is not a positive integer; give the number of training images to keep, "
                        "e.g. subset=10000.")


def _take_subset(dataset: ImageDataset, n: int, seed: int) -> None:
    """Keep ``n`` images of ``train``: an equal share per class (a class with fewer images gives its rest to the
    others), each class's drawn from a generator derived from ``seed`` alone, then kept in file order."""
    train = dataset.splits["train"]
    if n > len(train):
        raise DataError(f"subset={n} asks for more images than the {len(train)} of the training split of "
                        f"'{dataset.name}'; give at most {len(train)} (or leave subset out to train on all of them).")
    if n < dataset.num_classes:
        raise DataError(f"subset={n} is smaller than the {dataset.num_classes} classes of '{dataset.name}', so some "
                        f"class would have no image; give at least {dataset.num_classes}.")
    counts = torch.bincount(train.labels, minlength=dataset.num_classes).tolist()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(mix_seed(seed, SUBSET_SALT)))
    shuffled = train.labels[order]
    picked = [order[shuffled == c][:share] for c, share in enumerate(class_shares(n, counts))]
    dataset.splits["train"] = train.subset(torch.cat(picked).sort().values)


def class_shares(n: int, counts: list[int]) -> list[int]:
    """``n`` split as evenly as ``counts`` allow: equal shares, the remainder to the first classes, and what a
    small class cannot give spread over the others."""
    shares = [0] * len(counts)
    while n:
        open_ = [c for c, count in enumerate(counts) if shares[c] < count]
        each, extra = divmod(n, len(open_))
        for i, c in enumerate(open_):
            add = min(each + (i < extra), counts[c] - shares[c])
            shares[c] += add
            n -= add
    return shares


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
