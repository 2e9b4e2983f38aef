"""Checkpoints that survive SIGKILL and power loss, verified before anything is resumed.

A checkpoint directory holds `epochEEEE-stepSSSSSS.pt` files (plain `torch.save`
archives, so `torch.load` reads them too) and `index.json`, which records each file's
epoch, step, byte size and SHA-256.

**Why an index, and what it proves.** torch's zip reader notices a truncated file
(the central directory lives at the end) but not flipped bytes inside tensor data:
such a file loads, with wrong weights. The SHA-256 in the index catches both, and the
recorded size turns truncation into "truncated: 1234 of 5678 bytes". The digest is not
embedded in the file because a file cannot contain its own hash without a custom
container, and the files should stay loadable by plain `torch.load`.

**Write order** (`CheckpointStore.save`), each step durable before the next:

1. leftover temporary files of a crashed save are removed;
2. the state is written to a hidden temporary file in the same directory, flushed and
   `fsync`ed, hashed in 1 MiB chunks (no second in-memory copy of the state), and
   loaded back with `weights_only=True, mmap=True` (no tensor data is read), so a
   state that could never be resumed is refused at save time, not days later;
3. when the final name already exists (the same epoch and step saved twice, e.g. a
   SIGTERM checkpoint right after a periodic one), its index entry is dropped first, so
   the index never vouches for bytes that are about to change;
4. `os.replace` onto the final name, then `fsync` of the directory;
5. `index.json` is rewritten atomically (same temp / fsync / replace dance) with the new
   entry and without the entries of the checkpoints that `keep` prunes;
6. only then are the pruned files deleted.

**A checkpoint without an index entry** can only come from a crash between steps 4 and
5 (or 3 and 4, for a replaced one); its bytes were fsynced before the rename, so it is
complete. It is accepted when `torch.load` reads it completely, with a warning; that
check catches truncation but not flipped bytes, which is the price of the crash window.
A save that fails with an exception before step 4 puts the dropped entry back. An index
entry whose file is gone is reported with a warning and skipped; an unreadable
`index.json` is reported once and every file is then judged by `torch.load` alone (as
are files in a directory without an index, e.g. a copy elsewhere).

**Loading** maps every tensor to the CPU with `weights_only=True`: the state may hold
dicts, lists, tuples, tensors, numbers, strings, bytes and None (what model, optimizer
and scheduler state_dicts hold). `rng_state()` stores the python and numpy generator
states as tensors and ints for that reason. A state torch would refuse (a `Path` in the
config, a numpy scalar) is refused at save time with the key that holds it.

One process writes a directory at a time (rank 0): a save removes every temporary file
it finds, including one a concurrent writer would still be filling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import random
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from surgery.compiler.weight_files import UnreadableTorchFile, load_torch_file, torch_refusal
from surgery.errors import CheckpointError, ConfigError
from surgery.train.atomic import atomic_write, fsync_directory, is_temp_file, write_json_atomic

INDEX_NAME = "index.json"
INDEX_FORMAT = "tost-surgery checkpoint index"
INDEX_VERSION = 1

_CHECKPOINT_NAME = re.compile(r"^epoch(\d+)-step(\d+)\.pt$")
_CHUNK_BYTES = 1 << 20

_START_FRESH = "Start without --resume to train from scratch, or point --resume at a good checkpoint file."


class CheckpointWarning(UserWarning):
    """A checkpoint (or the index) was found damaged or unrecorded and was skipped or judged without it."""


class _BadCheckpoint(Exception):
    """Internal: why one checkpoint file cannot be used (the reason is the message)."""


@dataclass(frozen=True)
class FileDigest:
    """The byte size and SHA-256 (hex) of a file."""

    size: int
    sha256: str


# --------------------------------------------------------------------------- files


def file_digest(path: str | Path) -> FileDigest:
    """Size and SHA-256 of a file, read in chunks so a huge checkpoint is never held in memory."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            sha.update(chunk)
            size += len(chunk)
    return FileDigest(size, sha.hexdigest())


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _digest_verified(tmp: Path, verify: Callable[[Path], None] | None) -> FileDigest:
    """The finished temporary file's digest, once ``verify`` accepted it."""
    digest = file_digest(tmp)
    if verify is not None:
        verify(tmp)
    return digest


def _write_parent(path: Path) -> None:
    """Create the directory a file goes into, or say why it cannot be used."""
    if path.parent.exists() and not path.parent.is_dir():
        raise CheckpointError(
            f"cannot write {path}: {path.parent} is a file, not a directory. "
            "Choose another checkpoint directory or move that file away."
        )
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fsync_directory(path.parent.parent)  # the new directory's own entry must survive power loss too


def _torch_save(obj: Any, file: IO[bytes], path: Path) -> None:
    try:
        torch.save(obj, file)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"cannot write checkpoint {path}: the state cannot be pickled ({exc}). Remove functions, "
            "lambdas, open files and modules from the state; store their state_dict() or plain values instead."
        ) from exc


def save_atomic(obj: Any, path: str | Path, *, verify: bool = True) -> FileDigest:
    """`torch.save` `obj` to `path` so that `path` is never a partial file, even after SIGKILL.

    The bytes go to a temporary file in the same directory, are flushed and fsynced,
    then `os.replace`d onto `path`, and the directory is fsynced. With `verify`, the
    temporary file is first loaded back with `weights_only=True` (memory-mapped, so no
    tensor data is read): an object that could not be resumed raises `CheckpointError`
    and `path` keeps its previous content. Returns the size and SHA-256 of the file.
    """
    path = Path(path)
    _write_parent(path)
    loadable = (lambda tmp: _verify_loadable(tmp, obj, path)) if verify else None
    try:
        return atomic_write(
            path, lambda file: _torch_save(obj, file, path), check=lambda tmp: _digest_verified(tmp, loadable)
        )
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint {path}: {exc}. Free disk space or choose a writable directory; "
            "the previous file under that name, if any, is untouched."
        ) from exc


# ------------------------------------------------------------------ weights_only


_PLAIN_TYPES = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device)
_CONTAINER_TYPES = (dict, OrderedDict, list, tuple, set, frozenset, torch.Size)


def _first_refused_value(obj: Any, where: str = "state") -> tuple[str, str] | None:
    """The first (key path, type name) torch's weights_only loader is likely to refuse.

    Only used to point at the culprit after torch refused a file; torch decides.
    """
    kind = type(obj)
    if kind in (torch.Tensor, torch.nn.Parameter) or kind in _PLAIN_TYPES:
        return None
    if kind in (dict, OrderedDict):
        for key, value in obj.items():
            found = _first_refused_value(key, f"{where} key {key!r}") or _first_refused_value(
                value, f"{where}[{key!r}]"
            )
            if found:
                return found
        return None
    if kind in _CONTAINER_TYPES:
        for i, value in enumerate(obj):
            found = _first_refused_value(value, f"{where}[{i}]")
            if found:
                return found
        return None
    return where, f"{kind.__module__}.{kind.__qualname__}"


def _verify_loadable(tmp: Path, obj: Any, path: Path) -> None:
    """Refuse to publish a file that `load_checkpoint` would not be able to read."""
    try:
        loaded = torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        culprit = _first_refused_value(obj)
        where = f" The first suspicious value is {culprit[0]} of type {culprit[1]}." if culprit else ""
        raise CheckpointError(
            f"refusing to write checkpoint {path}: torch.load(weights_only=True) could not read it back "
            f"({torch_refusal(exc)}).{where} Store only tensors, numbers, strings, None and "
            "dicts/lists/tuples of them: convert paths and enums with str(), numpy values with .item() or "
            "torch.from_numpy(), configs with a to-dict, and use rng_state() for generator states."
        ) from exc
    del loaded  # drop the memory maps before the file is renamed


# ------------------------------------------------------------------------- index


def _checkpoint_order(path: Path) -> tuple[int, int] | None:
    match = _CHECKPOINT_NAME.match(path.name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _read_index(directory: Path) -> dict[str, dict] | None:
    """The index's entries by file name; None when there is no index or (with a warning) it is damaged."""
    path = directory / INDEX_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["checkpoints"]
        if data.get("format") != INDEX_FORMAT or not isinstance(entries, dict):
            raise ValueError("not a tost-surgery checkpoint index")
        for name, entry in entries.items():
            if not (isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
                raise TypeError(f"entry {name!r} lacks 'bytes' or 'sha256'")
        return entries
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        warnings.warn(
            f"{path} is unreadable ({exc}); every checkpoint in {directory} is judged by torch.load alone. "
            "The next save rewrites the index.",
            CheckpointWarning,
            stacklevel=3,
        )
        return None


def _write_index(directory: Path, entries: dict[str, dict]) -> None:
    path = directory / INDEX_NAME
    try:
        write_json_atomic({"format": INDEX_FORMAT, "version": INDEX_VERSION, "checkpoints": entries}, path)
    except OSError as exc:
        raise CheckpointError(
            f"could not update {path}: {exc}. The checkpoint files are intact (one without an entry is still "
            "loadable); free disk space or fix the directory's permissions, then save again."
        ) from exc


# ----------------------------------------------------------------------- loading


def _integrity_problem(path: Path, entry: dict) -> str | None:
    """Compare a file with its index entry: None when it matches, else what is wrong."""
    actual = path.stat().st_size
    expected = entry["bytes"]
    if actual < expected:
        return f"truncated: {actual} of {expected} bytes"
    if actual > expected:
        return f"{actual} bytes where the index recorded {expected}"
    digest = file_digest(path)
    if digest.sha256 != entry["sha256"]:
        return f"checksum mismatch: SHA-256 {digest.sha256[:16]}... but the index recorded {entry['sha256'][:16]}..."
    return None


def _torch_load(path: Path) -> dict:
    if not zipfile.is_zipfile(path):  # decided on the file, not on torch's words: garbage and refusals raise alike
        raise _BadCheckpoint("torch.load cannot read it: it is not the zip archive torch.save writes "
                             "(truncated, or not a checkpoint)")
    try:
        state = load_torch_file(path)
    except UnreadableTorchFile as exc:
        raise _BadCheckpoint(str(exc)) from exc
    if not isinstance(state, dict):
        raise _BadCheckpoint(f"holds a {type(state).__name__}, not a dict of training state")
    return state


def _load_verified(path: Path, entry: dict | None) -> dict:
    """Load one file after checking it against its index entry; raises _BadCheckpoint."""
    try:
        if entry is not None and (problem := _integrity_problem(path, entry)):
            raise _BadCheckpoint(problem)
        return _torch_load(path)
    except OSError as exc:
        raise _BadCheckpoint(f"cannot be read ({exc})") from exc


def _warn_unindexed(path: Path, stacklevel: int) -> None:
    warnings.warn(
        f"checkpoint {path} is not recorded in {INDEX_NAME} (a crash between writing it and recording it?); "
        "accepted because torch.load read it completely, but flipped bytes inside it would go unnoticed.",
        CheckpointWarning,
        stacklevel=stacklevel,
    )


def check_against_index(path: str | Path) -> None:
    """Refuse a file its directory's checkpoint index records with other bytes (a run's checkpoint
    given as weights elsewhere, e.g. ``init.rewind``); a file no index records passes unchecked."""
    path = Path(path)
    index = _read_index(path.parent) if path.is_file() else None
    entry = index.get(path.name) if index is not None else None
    if entry is not None and (problem := _integrity_problem(path, entry)):
        raise CheckpointError(f"checkpoint {path} is unusable: {problem}. Give an intact copy of it, "
                              f"or another checkpoint of the run in {path.parent}.")


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file to the CPU after verifying it against its directory's index.

    A truncated or corrupt file raises `CheckpointError` naming the file and what is
    wrong. A file the index does not record (a copy elsewhere, or one written just
    before a crash) is accepted when `torch.load(weights_only=True)` reads it completely.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory; load_checkpoint wants one checkpoint file. "
            f"Pass a file such as {path}/epoch0001-step000100.pt, or use CheckpointStore({str(path)!r}).load_latest()."
        )
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist. Check the path, or start without --resume to train from scratch."
        )
    index = _read_index(path.parent)
    entry = index.get(path.name) if index is not None else None
    try:
        state = _load_verified(path, entry)
    except _BadCheckpoint as exc:
        raise CheckpointError(f"checkpoint {path} is unusable: {exc}. {_START_FRESH}") from exc
    if index is not None and entry is None and _checkpoint_order(path) is not None:
        _warn_unindexed(path, stacklevel=3)
    return state


# -------------------------------------------------------------------------- store


class CheckpointStore:
    """A directory of numbered checkpoints: atomic saves, verified loads, the newest `keep` kept."""

    def __init__(self, directory: str | Path, *, keep: int = 2):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"checkpoint keep={keep!r} is invalid: keep at least 1 checkpoint (e.g. keep=2).")
        self.directory = Path(directory)
        self.keep = keep

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.directory)!r}, keep={self.keep})"

    def path_for(self, epoch: int, step: int) -> Path:
        """The file a checkpoint at (epoch, step) is saved to."""
        for name, value in (("epoch", epoch), ("step", step)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CheckpointError(f"checkpoint {name}={value!r} is invalid: pass a non-negative int.")
        return self.directory / f"epoch{epoch:04d}-step{step:06d}.pt"

    def checkpoints(self) -> list[Path]:
        """The checkpoint files on disk, oldest (lowest epoch, step) first; nothing is verified."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _checkpoint_order(p) is not None and p.is_file()]
        return sorted(found, key=_checkpoint_order)

    def latest(self) -> Path | None:
        """The newest checkpoint file on disk (not verified), or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, state: dict, *, epoch: int, step: int) -> Path:
        """Write `state` durably as the checkpoint of (epoch, step), then prune to the newest `keep`.

        Saving the same (epoch, step) again replaces that checkpoint. The checkpoint
        just written is never pruned, even when files of later steps exist.
        """
        if not isinstance(state, dict):
            raise CheckpointError(
                f"a checkpoint state must be a dict (model, optimizer, epoch, ...), got {type(state).__name__}."
            )
        path = self.path_for(epoch, step)
        _write_parent(path)
        self._remove_temp_files()
        entries = _read_index(self.directory) or {}
        digest = self._replace_file(path, state, entries)
        entries[path.name] = {"epoch": epoch, "step": step, "bytes": digest.size, "sha256": digest.sha256}
        pruned = self._prune_candidates(path)
        kept_names = {p.name for p in self.checkpoints()} - {p.name for p in pruned}
        # Pruned entries leave the index before their files go, so the index never names a deleted file.
        _write_index(self.directory, {name: e for name, e in entries.items() if name in kept_names})
        for old in pruned:
            _remove_quietly(old)
        if pruned:
            fsync_directory(self.directory)
        return path

    def load_latest(self) -> tuple[dict, Path]:
        """The newest checkpoint that passes verification, and its path.

        A damaged newer checkpoint is skipped with a `CheckpointWarning` naming the file
        and the reason. Raises `CheckpointError` when the directory is missing, holds no
        checkpoint, or holds only damaged ones.
        """
        if not self.directory.is_dir():
            what = "is a file, not a directory" if self.directory.exists() else "does not exist"
            raise CheckpointError(f"cannot resume: checkpoint directory {self.directory} {what}. {_START_FRESH}")
        index = _read_index(self.directory)
        entries = index or {}
        candidates = self._candidates(entries)
        if not candidates:
            raise CheckpointError(
                f"cannot resume: {self.directory} holds no checkpoint (no epochNNNN-stepNNNNNN.pt file"
                f"{self._other_files_note()}). {_START_FRESH}"
            )
        failures = []
        for path in reversed(candidates):
            try:
                state = self._load_candidate(path, entries.get(path.name), indexed_dir=index is not None)
            except _BadCheckpoint as exc:
                failures.append(f"{path.name}: {exc}")
                warnings.warn(
                    f"skipping checkpoint {path}: {exc}; trying the previous one.", CheckpointWarning, stacklevel=2
                )
                continue
            return state, path
        raise CheckpointError(
            f"cannot resume: no usable checkpoint in {self.directory} ({'; '.join(failures)}). {_START_FRESH}"
        )

    def _replace_file(self, path: Path, state: dict, entries: dict[str, dict]) -> FileDigest:
        """save_atomic onto `path`, first dropping `path`'s index entry (removed from `entries`).

        The index must never vouch for bytes that are about to change (see the module
        docstring). When the save fails before the rename, the old file is still there
        and its entry goes back.
        """
        old_entry = entries.pop(path.name, None)
        if old_entry is None or not path.exists():
            return save_atomic(state, path)
        old_inode = path.stat().st_ino
        _write_index(self.directory, entries)
        try:
            return save_atomic(state, path)
        except BaseException:
            if path.exists() and path.stat().st_ino == old_inode:  # os.replace gives a new inode
                entries[path.name] = old_entry
                _write_index(self.directory, entries)
            raise

    def _candidates(self, entries: dict[str, dict]) -> list[Path]:
        """Files on disk and files the index records (a missing one is reported when reached), oldest first."""
        names = {p.name for p in self.checkpoints()}
        names |= {n for n in entries if _CHECKPOINT_NAME.match(n)}
        return sorted((self.directory / n for n in names), key=_checkpoint_order)

    def _load_candidate(self, path: Path, entry: dict | None, *, indexed_dir: bool) -> dict:
        if not path.exists():
            raise _BadCheckpoint(f"{INDEX_NAME} records it but the file is missing")
        state = _load_verified(path, entry)
        if entry is None and indexed_dir:
            _warn_unindexed(path, stacklevel=4)
        return state

    def _prune_candidates(self, just_saved: Path) -> list[Path]:
        """Checkpoints beyond the newest `keep`, never the one just saved."""
        others = [p for p in self.checkpoints() if p != just_saved]
        return others[: max(0, len(others) - (self.keep - 1))]

    def _remove_temp_files(self) -> None:
        """Delete temporary files a crashed save left behind (one writer per directory)."""
        for path in self.directory.iterdir():
            if is_temp_file(path) and path.is_file():
                _remove_quietly(path)

    def _other_files_note(self) -> str:
        others = sorted(p.name for p in self.directory.iterdir() if p.name != INDEX_NAME)
        if not others:
            return "; the directory is empty"
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        return f"; found only {shown}"


# ---------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """Every global generator's state, as tensors and plain values `weights_only` loading accepts.

    python `random`, numpy's legacy global generator (`numpy.random.rand` & co.), torch's
    CPU generator and, when CUDA is available, every CUDA device's generator.
    """
    version, internal, gauss_next = random.getstate()
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": bit_generator,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_part(state: dict, key: str) -> Any:
    if key not in state:
        raise CheckpointError(
            f"RNG state lacks {key!r} (it has {sorted(state)}); pass the dict rng_state() returned."
        )
    return state[key]


def set_rng_state(state: dict) -> None:
    """Restore the generators `rng_state()` captured, so the next random numbers repeat exactly.

    CUDA states are restored onto as many devices as both the checkpoint and this
    machine have; a different device count is reported with a warning.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"RNG state must be the dict rng_state() returned, got {type(state).__name__}.")
    python, numpy_state, torch_state = (_rng_part(state, k) for k in ("python", "numpy", "torch"))
    try:
        python_state = (python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss_next"])
        legacy = (
            numpy_state["bit_generator"],
            np.asarray(numpy_state["keys"].numpy(), dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
        # Validate everything before touching any generator, so a bad state changes nothing.
        random.Random().setstate(python_state)
        np.random.RandomState().set_state(legacy)
        torch.Generator().set_state(torch_state)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(
            f"RNG state is malformed ({type(exc).__name__}: {exc}); pass the dict rng_state() returned, "
            "unchanged, from the checkpoint."
        ) from exc
    random.setstate(python_state)
    np.random.set_state(legacy)
    torch.set_rng_state(torch_state)
    _set_cuda_rng_states(state.get("cuda", []))


def _set_cuda_rng_states(saved: list) -> None:
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(saved) != available:
        warnings.warn(
            f"the checkpoint holds RNG states of {len(saved)} CUDA device(s) but this machine has {available}; "
            f"restored {min(len(saved), available)}, so random numbers on the others will not repeat.",
            CheckpointWarning,
            stacklevel=3,
        )
    for device, device_state in enumerate(saved[:available]):
        torch.cuda.set_rng_state(device_state, device)
