"""Files that are never seen half-written: write a temporary file, make it durable, rename it.

``atomic_write(path, write)`` hands ``write`` a binary file object on a hidden temporary
file in ``path``'s directory (``os.replace`` must not cross filesystems), fsyncs it, runs
an optional ``check`` on the finished temporary file, renames it onto ``path`` and fsyncs
the directory, so after a crash or SIGKILL ``path`` holds either the old or the new bytes.
On any failure the temporary file is removed and ``path`` is untouched. Concurrent
writers each use their own temporary file; the last rename wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

TEMP_MARKER = ".tmp-"

T = TypeVar("T")


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, check: Callable[[Path], T] | None = None
) -> T | None:
    """Write ``path`` atomically; returns what ``check(temporary_path)`` returned (None without one).

    ``check`` runs after the bytes are durable and before the rename: raising there keeps
    ``path``'s previous content (checkpoints load the file back; the digest is taken there).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temp_path_for(path)
    try:
        with open(temporary, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        checked = check(temporary) if check is not None else None
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    fsync_directory(path.parent)
    return checked


def write_json_atomic(data: Any, path: str | os.PathLike) -> None:
    """``data`` as indented, key-sorted JSON (one trailing newline), written atomically."""
    write_text_atomic(json.dumps(data, indent=1, sort_keys=True) + "\n", path)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def temp_path_for(path: Path) -> Path:
    """A hidden name next to ``path``, unique per process and call."""
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def is_temp_file(path: Path) -> bool:
    """Whether ``path`` is a temporary file ``atomic_write`` left behind (a crashed writer's)."""
    return path.name.startswith(".") and TEMP_MARKER in path.name


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (POSIX; Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
