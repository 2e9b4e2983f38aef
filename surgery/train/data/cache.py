"""The decode cache: a folder dataset's decoded arrays as ``.npz`` under ``$SURGERY_CACHE``.

Keys name the dataset, its absolute path, the image size and a signature of the source
(each file's path, size and mtime, or the archive's size and mtime), so any change to the
source decodes it afresh. Files are written atomically: concurrent processes never read a
partial cache file, and a damaged one is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from surgery.train.atomic import atomic_write, write_json_atomic

CACHE_VERSION = 1  # bump when decoding changes the pixels: old cache files then go unread


def cache_dir() -> Path:
    return Path(os.environ.get("SURGERY_CACHE") or "~/.cache/tost-surgery").expanduser() / "datasets"


def cache_key(name: str, source: Path, image_size: int | None, signature: str) -> str:
    text = f"v{CACHE_VERSION}|{name}|{source}|{image_size}|{signature}"
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def read_arrays(key: str) -> dict[str, np.ndarray] | None:
    """The cached arrays under ``key``, or None when there are none (or they are damaged)."""
    path = cache_dir() / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except (OSError, ValueError, KeyError, EOFError):  # a damaged cache file is decoded afresh
        return None


def write_arrays(key: str, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(cache_dir() / f"{key}.npz", lambda f: np.savez(f, **arrays))


def read_stats(key: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """A streamed dataset's cached (mean, std), or None."""
    try:
        stored = json.loads((cache_dir() / f"{key}.stats.json").read_text())
        return tuple(stored["mean"]), tuple(stored["std"])
    except (OSError, ValueError, KeyError):
        return None


def write_stats(key: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    write_json_atomic({"mean": mean, "std": std}, cache_dir() / f"{key}.stats.json")
