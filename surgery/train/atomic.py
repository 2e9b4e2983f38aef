"""Files that are never seen half-written: a temporary file in the same directory, fsync, rename.

After a crash or SIGKILL ``path`` holds either the old or the new bytes; on any failure
the temporary file is removed and ``path`` is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``write`` gets a binary file object on a temporary file next to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)  # same directory: the rename cannot cross filesystems
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def write_json_atomic(data: Any, path: str | os.PathLike) -> None:
    """``data`` as indented, key-sorted JSON, written atomically."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))
