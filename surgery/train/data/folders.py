"""Folder datasets (``cifar10-jpeg:PATH``, ``imagefolder:PATH``): find the images, decode them once.

Layout: ``train/<class>/*`` and a held-out folder (``test/`` for ``cifar10-jpeg``; ``val/`` or
``test/`` for ``imagefolder``) that becomes the ``test`` split, as a folder or a ``.tar`` /
``.tar.gz`` of one (an optional single top-level folder is allowed). Any format Pillow
reads.

Decoded once with Pillow and cached (``cache.py``). Images that are not ``image_size``
square are resized (shorter side) and center-cropped. Without ``image_size`` the first
training image's size is used when it is square and at most 64 px; larger images need an
explicit ``image_size``. An ``imagefolder`` whose decoded size would pass
``IN_MEMORY_LIMIT_BYTES`` (or any one with ``stream=True``) is streamed from disk by
DataLoader workers instead (folders only, not archives; ``images.FileImages``).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from surgery.errors import DataError
from surgery.train.data import cache
from surgery.train.data.dataset import ImageDataset, Split, channel_stats
from surgery.train.data.images import (
    EVAL_CROP_FRACTION,
    decode_checked,
    image_extensions,
    is_image,
    resize_center_crop,
)

IN_MEMORY_LIMIT_BYTES = 4 * 2**30
_MAX_AUTO_SIZE = 64
_STATS_SAMPLE = 512


@dataclass
class _Listing:
    """Where a folder dataset's images are: ``split -> [(class, path)]``, sorted."""

    source: Path
    files: dict[str, list[tuple[str, str]]]


def load_folder_dataset(
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
        key = cache.cache_key(name, source, size, _folder_signature(listing))
        if stream or (stream is None and _decoded_bytes(listing, size) > IN_MEMORY_LIMIT_BYTES):
            return _streamed_dataset(name, listing, size, key)
    else:
        if stream:
            raise DataError(f"{name}: {source} is an archive and cannot be streamed; extract it and pass the folder.")
        listing = None  # an archive is listed and decoded in one sequential pass
        stat = source.stat()
        key = cache.cache_key(name, source, image_size, f"{stat.st_size}:{stat.st_mtime_ns}")
    cached = cache.read_arrays(key)
    if cached is not None:
        return _dataset_from_arrays(name, cached)
    if listing is not None:
        arrays = _decode_folder(name, listing, size)
    else:
        arrays = _decode_tar(name, source, eval_dirs, image_size)
    cache.write_arrays(key, arrays)
    return _dataset_from_arrays(name, arrays)


# ---------------------------------------------------------------------------- listing


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
    """``(class, path)`` of every image under ``split_dir/<class>/``, by torchvision's walk; hidden folders skipped."""
    from torchvision.datasets.folder import make_dataset

    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        return []
    index = {c: i for i, c in enumerate(classes)}
    samples = make_dataset(str(split_dir), index, is_valid_file=is_image, allow_empty=True)
    return sorted((classes[i], path) for path, i in samples)


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
                f"(extensions {', '.join(image_extensions())}); put each class's images in its own folder."
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


# ---------------------------------------------------------------------------- decoding


def _decode_folder(name: str, listing: _Listing, size: int) -> dict[str, np.ndarray]:
    classes = sorted({c for c, _ in listing.files["train"]})
    decoded = {
        split: [(c, decode_checked(name, path, size)) for c, path in entries]
        for split, entries in listing.files.items()
    }
    return _stack_arrays(classes, decoded)


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
                if not member.isfile() or not is_image(member.name) or len(parts) not in (3, 4):
                    continue
                split, class_name = parts[-3], parts[-2]
                if split not in decoded:
                    continue
                prefixes.add(parts[:-3])
                data = io.BytesIO(archive.extractfile(member).read())
                if size is None:
                    size = _native_size(name, _open_bytes(data))
                    data.seek(0)
                decoded[split].append((class_name, member.name, decode_checked(name, data, size, member.name)))
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
    mean, std = channel_stats(torch.from_numpy(arrays["train_images"]))
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


# ---------------------------------------------------------------------------- streamed


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
    stored = cache.read_stats(key)
    if stored is not None:
        return stored
    step = max(1, len(files) // _STATS_SAMPLE)
    sample = [decode_checked(name, f, None) for f in files[::step][:_STATS_SAMPLE]]
    from PIL import Image

    cropped = [np.asarray(resize_center_crop(Image.fromarray(a), size, EVAL_CROP_FRACTION)) for a in sample]
    mean, std = channel_stats(torch.from_numpy(np.stack(cropped)).permute(0, 3, 1, 2))
    cache.write_stats(key, mean, std)
    return mean, std
