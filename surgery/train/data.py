"""Image datasets and deterministic, resumable, shardable loaders for the trainer.

``load_dataset(spec)`` returns an :class:`ImageDataset`: uint8 ``N x 3 x H x W`` images and
int64 labels per split, held in memory (or, for a large ``imagefolder``, a list of files
streamed from disk). ``make_loader`` turns one split into batches of normalized float
images on the training device.

Dataset specs (``DATASETS`` names the kinds):

- ``digits``: scikit-learn's bundled 8x8 digits, upsampled (bilinear) to ``image_size``
  (default 32) and replicated to 3 channels; a fixed 1437 / 360 train / test split.
- ``synthetic``: 10 classes of smooth random templates plus noise, 1000 / 200 images;
  learnable, offline, made in milliseconds.
- ``cifar10`` / ``cifar100``: torchvision's files under ``root`` (default ``$SURGERY_DATA``
  or ``~/.cache/tost-surgery/data``); ``download=True`` fetches them.
- ``cifar10-jpeg:PATH``: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, as a folder or
  a ``.tar.gz`` of one (an optional single top-level folder is allowed).
- ``imagefolder:PATH``: ``train/<class>/*`` and ``val/<class>/*`` (or ``test/``), any
  image format Pillow reads; the held-out folder becomes the ``test`` split.

Folder datasets are decoded once with Pillow and cached as ``.npz`` under
``$SURGERY_CACHE`` (default ``~/.cache/tost-surgery``), keyed by the absolute path, the
files' sizes and mtimes and the image size; later loads read the cache. Images that are
not ``image_size`` square are resized (shorter side) and center-cropped. Without
``image_size`` the first training image's size is used when it is square and at most
64 px; larger images need an explicit ``image_size``. An ``imagefolder`` whose decoded
size would pass ``IN_MEMORY_LIMIT_BYTES`` (or any one with ``stream=True``) is streamed
from disk by DataLoader workers instead (folders only, not archives): RandomResizedCrop
and flip for training, resize to ``size / 0.875`` and center crop for evaluation.

Determinism: the sample order and every augmentation parameter of epoch ``e`` are drawn
up front in ``set_epoch(e)`` from a ``torch.Generator`` seeded from ``(seed, e)``; the
global RNGs are never touched. ``batches(start=k)`` therefore yields exactly the batches
an uninterrupted epoch yields after its first ``k``. Augmentation parameters belong to
positions in the epoch's order, so sharding across ranks does not change them.

Sharding: ``batch_size`` is the global batch. Rank ``r`` of ``W`` takes the ``r``-th
slice of every global batch of the same permutation (every rank must pass the same
``seed``). Training drops the last incomplete global batch. Evaluation covers every
sample exactly once, in order, without padding: the last global batch is split as
evenly as it goes, so when it holds fewer samples than there are ranks, some ranks get
one batch fewer (``len`` is per rank; reduce evaluation metrics after the loop, not
per batch).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from surgery.errors import DataError, did_you_mean
from surgery.train.atomic import atomic_write, write_json_atomic

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "cifar10-jpeg", "imagefolder", "digits", "synthetic")
SPEC_FORMS: tuple[str, ...] = (
    "cifar10", "cifar100", "cifar10-jpeg:PATH", "imagefolder:PATH", "digits", "synthetic",
)
_NEEDS_PATH = ("cifar10-jpeg", "imagefolder")

IN_MEMORY_LIMIT_BYTES = 4 * 2**30
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_MAX_AUTO_SIZE = 64
_EVAL_CROP_FRACTION = 0.875
_STATS_SAMPLE = 512
_CACHE_VERSION = 1

# Per-channel statistics of the CIFAR training sets, images scaled to [0, 1].
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# Fixed seeds: the digits / synthetic test sets never change between runs.
_DIGITS_SPLIT_SEED = 20_240_601
_DIGITS_TEST_SIZE = 360
_SYNTHETIC_SEED = 20_240_602
_SYNTHETIC_CLASSES = 10
_SYNTHETIC_TRAIN, _SYNTHETIC_TEST = 1000, 200

# Salts keep the (seed, epoch) and (seed, val split) streams apart.
_EPOCH_SALT = 1
_VAL_SALT = 2
_STREAM_SALT = 3
_MASK64 = 2**64 - 1


# ---------------------------------------------------------------------------- containers


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


# ---------------------------------------------------------------------------- load_dataset


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
    """Load the dataset ``spec`` names (see the module docstring for the forms).

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
        dataset = _load_digits(image_size or 32)
    elif kind == "synthetic":
        dataset = _load_synthetic(image_size or 32)
    elif kind in _CIFAR_STATS:
        dataset = _load_cifar(kind, _data_root(root), download, image_size)
    else:
        eval_dirs = ("test",) if kind == "cifar10-jpeg" else ("val", "test")
        dataset = _load_folder_dataset(kind, path, eval_dirs, image_size, stream)
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
    generator = torch.Generator().manual_seed(_mix_seed(seed, _VAL_SALT))
    order = torch.randperm(n, generator=generator)
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    dataset.splits["train"] = train.subset(train_idx)
    dataset.splits["val"] = train.subset(val_idx)


def _mix_seed(*parts: int) -> int:
    """A 63-bit generator seed from integers (splitmix64 rounds), so nearby pairs don't collide."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK64
        state ^= state >> 31
    return state & (2**63 - 1)


def _data_root(root: str | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("SURGERY_DATA") or "~/.cache/tost-surgery/data").expanduser()


def _cache_dir() -> Path:
    return Path(os.environ.get("SURGERY_CACHE") or "~/.cache/tost-surgery").expanduser() / "datasets"


# ---------------------------------------------------------------------------- built-in datasets


def _load_digits(image_size: int) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)  # values 0..16
    images = _to_uint8(F.interpolate(pixels, size=(image_size, image_size), mode="bilinear",
                                     align_corners=False)).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    test_idx, train_idx = order[:_DIGITS_TEST_SIZE].sort().values, order[_DIGITS_TEST_SIZE:].sort().values
    return _in_memory_dataset("digits", [str(c) for c in range(10)], image_size, {
        "train": Split(images[train_idx], labels[train_idx]),
        "test": Split(images[test_idx], labels[test_idx]),
    })


def _load_synthetic(image_size: int) -> ImageDataset:
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


def _load_cifar(name: str, root: Path, download: bool, image_size: int | None) -> ImageDataset:
    import torchvision

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
            images = _resize_uint8(images, image_size)
        splits[split_name] = Split(images, torch.as_tensor(source.targets, dtype=torch.int64))
        classes = list(source.classes)
    mean, std = _CIFAR_STATS[name]
    return ImageDataset(name, len(classes), classes, mean, std, image_size or 32, 3, splits)


def _in_memory_dataset(name: str, classes: list[str], image_size: int, splits: dict[str, Split]) -> ImageDataset:
    mean, std = _channel_stats(splits["train"].images)
    return ImageDataset(name, len(classes), classes, mean, std, image_size, 3, splits)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 0..255 (rounded, clamped)."""
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize of uint8 ``N x C x H x W`` to ``size x size``, in chunks to bound memory."""
    pieces = []
    for part in images.split(chunk):
        resized = F.interpolate(part.float().div_(255.0), size=(size, size), mode="bilinear",
                                align_corners=False, antialias=size < part.shape[-1])
        pieces.append(_to_uint8(resized))
    return torch.cat(pieces)


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


# ---------------------------------------------------------------------------- folder datasets


@dataclass
class _Listing:
    """Where a folder dataset's images are: ``split -> [(class, path)]``, sorted."""

    source: Path
    files: dict[str, list[tuple[str, str]]]


def _load_folder_dataset(
    name: str, path_text: str, eval_dirs: Sequence[str], image_size: int | None, stream: bool | None
) -> ImageDataset:
    source = Path(path_text).expanduser().absolute()
    if not source.exists():
        raise DataError(
            f"{name}: {path_text} does not exist (looked at {source}). Pass a folder or .tar.gz holding "
            f"train/<class>/<image> and {'/ or '.join(eval_dirs)}/<class>/<image>"
            f"{', e.g. ../shared/data/cifar10-jpeg.tar.gz' if name == 'cifar10-jpeg' else ''}."
        )
    if source.is_dir():
        listing = _list_folder(name, source, eval_dirs)
        size = image_size or _native_size(name, _open_first_train(listing))
        key = _cache_key(name, source, size, _folder_signature(listing))
        if stream or (stream is None and _decoded_bytes(listing, size) > IN_MEMORY_LIMIT_BYTES):
            return _streamed_dataset(name, listing, size, key)
    else:
        if stream:
            raise DataError(f"{name}: {source} is an archive and cannot be streamed; extract it and pass the folder.")
        listing = None  # an archive is listed and decoded in one sequential pass
        stat = source.stat()
        key = _cache_key(name, source, image_size, f"{stat.st_size}:{stat.st_mtime_ns}")
    cached = _read_cache(key)
    if cached is not None:
        return _dataset_from_arrays(name, cached)
    if listing is not None:
        arrays = _decode_folder(name, listing, size)
    else:
        arrays = _decode_tar(name, source, eval_dirs, image_size)
    _write_cache(key, arrays)
    return _dataset_from_arrays(name, arrays)


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _list_folder(name: str, source: Path, eval_dirs: Sequence[str]) -> _Listing:
    """Find ``train/`` and the first of ``eval_dirs`` (also under a single top-level folder)."""
    base = source
    if not (base / "train").is_dir():
        children = [c for c in base.iterdir() if not c.name.startswith(".")]
        if len(children) == 1 and (children[0] / "train").is_dir():
            base = children[0]
        else:
            raise _layout_error(name, source, eval_dirs, sorted(c.name for c in children))
    eval_dir = next((d for d in eval_dirs if (base / d).is_dir()), None)
    if eval_dir is None:
        raise _layout_error(name, source, eval_dirs, sorted(c.name for c in base.iterdir()))
    files = {split: _list_class_files(base / folder)
             for split, folder in (("train", "train"), ("test", eval_dir))}
    _check_listing(name, source, eval_dirs, files)
    return _Listing(source, files)


def _list_class_files(split_dir: Path) -> list[tuple[str, str]]:
    found = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, _, filenames in os.walk(class_dir):
            found.extend((class_dir.name, os.path.join(dirpath, f)) for f in filenames if _is_image(f))
    return sorted(found)


def _layout_error(name: str, source: Path, eval_dirs: Sequence[str], found: list[str]) -> DataError:
    shown = ", ".join(found[:12]) + (f", ... ({len(found)} entries)" if len(found) > 12 else "")
    return DataError(
        f"{name}: {source} does not have the expected layout train/<class>/<image> and "
        f"{' or '.join(d + '/' for d in eval_dirs)}<class>/<image>; found: {shown or 'nothing'}. "
        f"Rearrange it into that layout (an optional single top-level folder is fine)."
    )


def _check_listing(name: str, source: Path, eval_dirs: Sequence[str], files: dict[str, list]) -> None:
    for split, entries in files.items():
        if not entries:
            raise DataError(
                f"{name}: the {split} folder of {source} holds no images in <class>/ subfolders "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)}); put each class's images in its own folder."
            )
    train_classes = {c for c, _ in files["train"]}
    extra = sorted({c for c, _ in files["test"]} - train_classes)
    if extra:
        raise DataError(
            f"{name}: {source} has {'/'.join(eval_dirs)} classes with no training images: {', '.join(extra[:10])}; "
            f"every class needs a train/<class>/ folder."
        )


def _folder_signature(listing: _Listing) -> str:
    """The listing's paths, sizes and mtimes: any added, removed or rewritten file changes the key."""
    digest = hashlib.sha256()
    for split, entries in listing.files.items():
        for class_name, path in entries:
            stat = os.stat(path)
            digest.update(f"{split}|{class_name}|{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_key(name: str, source: Path, image_size: int | None, signature: str) -> str:
    text = f"v{_CACHE_VERSION}|{name}|{source}|{image_size}|{signature}"
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def _open_first_train(listing: _Listing):
    from PIL import Image

    return Image.open(listing.files["train"][0][1])


def _native_size(name: str, image) -> int:
    """The default image size: the first training image's, when it is square and small."""
    with image:
        width, height = image.size
    if width != height or width > _MAX_AUTO_SIZE:
        raise DataError(
            f"{name}: its images are {width}x{height}, so no default size applies (that needs square images "
            f"of at most {_MAX_AUTO_SIZE} px); pass image_size= (CLI --image-size), e.g. 224."
        )
    return width


def _decoded_bytes(listing: _Listing, size: int) -> int:
    return sum(len(entries) for entries in listing.files.values()) * 3 * size * size


def _decode_image(source: str | BinaryIO, size: int | None) -> np.ndarray:
    """One image as uint8 ``H x W x 3``; resized (shorter side) and center-cropped to ``size`` if given."""
    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = _resize_center_crop(image, size, crop_fraction=1.0)
    return np.asarray(image)


def _resize_center_crop(image, size: int, crop_fraction: float):
    """Resize so the shorter side is ``size / crop_fraction``, then crop the central ``size x size``."""
    from PIL import Image

    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    width, height = image.size
    scale = size / crop_fraction / min(width, height)
    # The crop box in source pixels: resizing it straight to size x size is one PIL call.
    box_w, box_h = size / scale, size / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return image.resize((size, size), bilinear, box=(left, top, left + box_w, top + box_h))


def _decode_folder(name: str, listing: _Listing, size: int) -> dict[str, np.ndarray]:
    classes = sorted({c for c, _ in listing.files["train"]})
    decoded = {
        split: [(c, _decode_checked(name, path, size)) for c, path in entries]
        for split, entries in listing.files.items()
    }
    return _stack_arrays(classes, decoded)


def _decode_checked(name: str, source: str | BinaryIO, size: int | None, label: str | None = None) -> np.ndarray:
    try:
        return _decode_image(source, size)
    except OSError as error:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(
            f"{name}: cannot decode {label or source}: {error}. Remove or replace the file."
        ) from error


def _decode_tar(name: str, source: Path, eval_dirs: Sequence[str], image_size: int | None) -> dict[str, np.ndarray]:
    """Decode every image of a tar archive in one sequential pass (seeking in a .gz restarts it)."""
    wanted = ("train", *eval_dirs)
    decoded: dict[str, list[tuple[str, str, np.ndarray]]] = {d: [] for d in wanted}
    top_level: set[str] = set()
    prefixes: set[tuple[str, ...]] = set()
    size = image_size
    try:
        with tarfile.open(source, "r:*") as archive:
            for member in archive:
                parts = tuple(p for p in PurePosixPath(member.name).parts if p not in (".", ""))
                if parts:
                    top_level.add("/".join(parts[:2]))  # two levels say enough about a wrong layout
                if not member.isfile() or not _is_image(member.name) or len(parts) not in (3, 4):
                    continue
                split, class_name = parts[-3], parts[-2]
                if split not in decoded:
                    continue
                prefixes.add(parts[:-3])
                data = io.BytesIO(archive.extractfile(member).read())
                if size is None:
                    size = _native_size(name, _open_bytes(data))
                    data.seek(0)
                decoded[split].append((class_name, member.name, _decode_checked(name, data, size, member.name)))
    except (tarfile.TarError, EOFError, OSError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise DataError(
            f"{name}: cannot read the archive {source} ({reason}). Pass a folder or a .tar / .tar.gz of one; "
            f"if it is truncated, re-download or re-create it."
        ) from error
    if len(prefixes) > 1:
        raise DataError(
            f"{name}: {source} mixes top-level folders {sorted('/'.join(p) or '.' for p in prefixes)}; "
            f"keep train/ and {'/'.join(eval_dirs)}/ under one folder."
        )
    eval_dir = next((d for d in eval_dirs if decoded[d]), None)
    if not decoded["train"] or eval_dir is None:
        raise _layout_error(name, source, eval_dirs, sorted(top_level))
    files = {"train": decoded["train"], "test": decoded[eval_dir]}
    _check_listing(name, source, eval_dirs, {s: [(c, k) for c, k, _ in e] for s, e in files.items()})
    classes = sorted({c for c, _, _ in files["train"]})
    # Sort by member name: the order (and so the cache) does not depend on the archive's order.
    ordered = {s: [(c, a) for c, _, a in sorted(e, key=lambda t: t[1])] for s, e in files.items()}
    return _stack_arrays(classes, ordered)


def _open_bytes(data: io.BytesIO):
    from PIL import Image

    return Image.open(data)


def _stack_arrays(classes: list[str], decoded: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """``split -> [(class, HxWx3)]`` into the cached arrays: NCHW uint8 images, labels, classes, stats."""
    index = {c: i for i, c in enumerate(classes)}
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split, entries in decoded.items():
        arrays[f"{split}_images"] = np.ascontiguousarray(np.stack([a for _, a in entries]).transpose(0, 3, 1, 2))
        arrays[f"{split}_labels"] = np.array([index[c] for c, _ in entries], dtype=np.int64)
    mean, std = _channel_stats(torch.from_numpy(arrays["train_images"]))
    arrays["mean"], arrays["std"] = np.array(mean), np.array(std)
    return arrays


def _dataset_from_arrays(name: str, arrays: dict[str, np.ndarray]) -> ImageDataset:
    classes = [str(c) for c in arrays["classes"]]
    splits = {
        split: Split(torch.from_numpy(arrays[f"{split}_images"]), torch.from_numpy(arrays[f"{split}_labels"]))
        for split in ("train", "test")
    }
    image_size = int(splits["train"].images.shape[-1])
    mean = tuple(float(v) for v in arrays["mean"])
    std = tuple(float(v) for v in arrays["std"])
    return ImageDataset(name, len(classes), classes, mean, std, image_size, 3, splits)


def _read_cache(key: str) -> dict[str, np.ndarray] | None:
    path = _cache_dir() / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except (OSError, ValueError, KeyError, EOFError):  # a damaged cache file is decoded afresh
        return None


def _write_cache(key: str, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(_cache_dir() / f"{key}.npz", lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------- streamed folders


class _FileImages(torch.utils.data.Dataset):
    """Images decoded on demand; the key is ``(index, sample_seed)`` so augmentation is seeded per sample."""

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
            image = _random_resized_crop(image, self.image_size, rng)
            flip = rng.random() < 0.5
        else:
            image = _resize_center_crop(image, self.image_size, _EVAL_CROP_FRACTION)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return (pixels.flip(-1) if flip else pixels).contiguous(), self.labels[index]


def _random_resized_crop(image, size: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
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
    return _resize_center_crop(image, size, crop_fraction=1.0)  # degenerate shapes: the whole image


def _streamed_dataset(name: str, listing: _Listing, size: int, key: str) -> ImageDataset:
    classes = sorted({c for c, _ in listing.files["train"]})
    index = {c: i for i, c in enumerate(classes)}
    splits = {
        split: Split(None, torch.tensor([index[c] for c, _ in entries], dtype=torch.int64),
                     files=[p for _, p in entries])
        for split, entries in listing.files.items()
    }
    mean, std = _streamed_stats(name, splits["train"].files, size, key)
    return ImageDataset(name, len(classes), classes, mean, std, size, 3, splits)


def _streamed_stats(name: str, files: list[str], size: int, key: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean / std from up to ``_STATS_SAMPLE`` evenly spaced training images, cached as JSON."""
    path = _cache_dir() / f"{key}.stats.json"
    try:
        stored = json.loads(path.read_text())
        return tuple(stored["mean"]), tuple(stored["std"])
    except (OSError, ValueError, KeyError):
        pass
    step = max(1, len(files) // _STATS_SAMPLE)
    sample = [_decode_checked(name, f, None) for f in files[::step][:_STATS_SAMPLE]]
    from PIL import Image

    cropped = [np.asarray(_resize_center_crop(Image.fromarray(a), size, _EVAL_CROP_FRACTION)) for a in sample]
    mean, std = _channel_stats(torch.from_numpy(np.stack(cropped)).permute(0, 3, 1, 2))
    write_json_atomic({"mean": mean, "std": std}, path)
    return mean, std


# ---------------------------------------------------------------------------- loaders


def make_loader(
    ds: ImageDataset,
    split: str,
    batch_size: int,
    *,
    train: bool,
    device: torch.device | str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    augment: bool | None = None,
    channels_last: bool = False,
    workers: int = 4,
) -> EpochLoader:
    """A loader over ``ds.split(split)`` for this rank: shuffled + drop-last when ``train``, in order otherwise.

    ``batch_size`` is the global batch; ``augment=None`` means ``train``. ``workers`` only
    matters for streamed folders (in-memory data is gathered and augmented on ``device``).
    """
    data = ds.split(split)
    _check_sharding(batch_size, rank, world_size)
    kwargs = {
        "batch_size": batch_size, "train": train, "device": torch.device(device), "seed": seed, "rank": rank,
        "world_size": world_size, "augment": train if augment is None else augment,
        "channels_last": channels_last, "mean": ds.mean, "std": ds.std,
    }
    if data.streamed:
        loader: EpochLoader = StreamingLoader(data, image_size=ds.image_size, workers=workers, **kwargs)
    else:
        loader = DeviceLoader(data, **kwargs)
    if len(loader) == 0:
        raise DataError(
            f"the '{split}' split of '{ds.name}' has {len(data)} images, fewer than one global batch of "
            f"{batch_size}; lower the batch size."
        )
    return loader


def _check_sharding(batch_size: int, rank: int, world_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r} must be a positive integer (the global batch).")
    if not isinstance(world_size, int) or world_size < 1:
        raise DataError(f"world_size={world_size!r} must be a positive integer.")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise DataError(f"rank={rank!r} must be in [0, {world_size}) for world_size={world_size}.")
    if batch_size % world_size:
        raise DataError(
            f"global batch_size={batch_size} is not divisible by world_size={world_size}; pick a multiple "
            f"of {world_size}, e.g. {batch_size - batch_size % world_size or world_size}."
        )


def _rank_batch_ranges(n: int, global_batch: int, rank: int, world_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """``[lo, hi)`` positions in the epoch's order of this rank's batches; empty slices are left out."""
    ranges = []
    for start in range(0, n, global_batch):
        size = min(global_batch, n - start)
        if size < global_batch and drop_last:
            break
        share, extra = divmod(size, world_size)
        lo = start + rank * share + min(rank, extra)
        hi = lo + share + (1 if rank < extra else 0)
        if hi > lo:
            ranges.append((lo, hi))
    return ranges


class EpochLoader(ABC):
    """Batches of one split for one rank; ``set_epoch(e)`` fixes epoch ``e``'s order and augmentation.

    If ``set_epoch`` is never called, iteration uses epoch 0 (like DistributedSampler,
    forgetting to call it repeats the same order every epoch).
    """

    def __init__(self, data: Split, *, batch_size: int, train: bool, device: torch.device, seed: int, rank: int,
                 world_size: int, augment: bool, channels_last: bool, mean: Sequence[float], std: Sequence[float]):
        self.data, self.train, self.augment = data, train, augment
        self.device, self.seed, self.rank, self.world_size = device, seed, rank, world_size
        self.global_batch_size, self.batch_size = batch_size, batch_size // world_size
        self.channels_last = channels_last
        self.epoch: int | None = None
        self._ranges = _rank_batch_ranges(len(data), batch_size, rank, world_size, drop_last=train)
        std_t = torch.tensor(std, dtype=torch.float32)
        # x / 255 normalized = x * scale + shift, one fused pass on the device
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(device)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1).to(device)

    def __len__(self) -> int:
        return len(self._ranges)

    @property
    def samples_per_epoch(self) -> int:
        return sum(hi - lo for lo, hi in self._ranges)

    def set_epoch(self, epoch: int) -> None:
        if not isinstance(epoch, int) or epoch < 0:
            raise DataError(f"set_epoch({epoch!r}): the epoch must be a non-negative integer.")
        self.epoch = epoch
        self._plan_epoch(torch.Generator().manual_seed(_mix_seed(self.seed, _EPOCH_SALT, epoch)))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(0)

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of the current epoch, skipping the first ``start`` (to resume mid-epoch)."""
        if not isinstance(start, int) or not 0 <= start <= len(self):
            raise DataError(
                f"batches(start={start!r}) is outside [0, {len(self)}] (this rank's batches per epoch); "
                f"resume with the batch index saved in the checkpoint."
            )
        if self.epoch is None:
            self.set_epoch(0)
        return self._iterate(start)

    def _epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        n = len(self.data)
        return torch.randperm(n, generator=generator) if self.train else torch.arange(n)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).mul_(self._scale).add_(self._shift)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @abstractmethod
    def _plan_epoch(self, generator: torch.Generator) -> None:
        """Draw the epoch's order and every augmentation parameter from ``generator``."""

    @abstractmethod
    def _iterate(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's batches of the planned epoch from batch ``start`` on."""


class DeviceLoader(EpochLoader):
    """In-memory split kept as uint8 on ``device``: gather, pad-crop-flip and normalize there, vectorised."""

    def __init__(self, data: Split, **kwargs):
        super().__init__(data, **kwargs)
        self._images = data.images.to(self.device)
        self._labels = data.labels.to(self.device)
        self.pad = max(1, round(self._images.shape[-1] / 8))  # 4 pixels at 32x32, the CIFAR standard

    def _plan_epoch(self, generator: torch.Generator) -> None:
        n = len(self.data)
        self._order = self._epoch_order(generator).to(self.device)
        if self.augment:
            self._offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator).to(self.device)
            self._flips = (torch.rand(n, generator=generator) < 0.5).to(self.device)

    def _iterate(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for lo, hi in self._ranges[start:]:
            index = self._order[lo:hi]
            images = self._images.index_select(0, index)
            if self.augment:
                images = pad_crop_flip(images, self._offsets[lo:hi], self._flips[lo:hi], self.pad)
            yield self._normalize(images), self._labels.index_select(0, index)


def pad_crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad by ``pad``, crop ``H x W`` at ``offsets`` (row, col in [0, 2 pad]) and mirror where ``flips``.

    One gather for the whole batch: crop and flip are both just column / row indices.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    arange_h = torch.arange(h, device=images.device)
    arange_w = torch.arange(w, device=images.device)
    rows = offsets[:, 0:1] + arange_h
    cols = offsets[:, 1:2] + torch.where(flips[:, None], w - 1 - arange_w, arange_w)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


class StreamingLoader(EpochLoader):
    """A split of image files decoded by DataLoader workers, in the same seeded, sharded order."""

    def __init__(self, data: Split, *, image_size: int, workers: int, **kwargs):
        super().__init__(data, **kwargs)
        self.workers = max(0, int(workers))
        self._images = _FileImages(data.files, data.labels, image_size, self.augment)

    def _plan_epoch(self, generator: torch.Generator) -> None:
        n = len(self.data)
        self._order = self._epoch_order(generator)
        self._sample_seeds = torch.randint(0, 2**62, (n,), generator=generator)

    def _iterate(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, seeds = self._order.tolist(), self._sample_seeds.tolist()
        plan = [[(order[p], seeds[p]) for p in range(lo, hi)] for lo, hi in self._ranges[start:]]
        # DataLoader draws its worker base seed from this generator, not the global RNG.
        base = torch.Generator().manual_seed(_mix_seed(self.seed, _STREAM_SALT, self.epoch or 0))
        loader = torch.utils.data.DataLoader(
            self._images, batch_sampler=plan, num_workers=self.workers, generator=base,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            yield self._normalize(images), labels.to(self.device, non_blocking=True)
