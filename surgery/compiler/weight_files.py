"""Weight files: the one reader of the files a model's weights come in.

A weights file is ``.safetensors`` or a ``torch.save``-d object (``.pt`` / ``.pth`` / ``.bin``, read to the
CPU with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only). Its
state_dict is the file's own, a trainer checkpoint's ``"model"`` entry (``surgery.train.checkpoint``), or
a ``{"state_dict": ...}`` wrapper's. Every problem is a ``CheckpointError`` naming the file and what to
give instead. The trainer's checkpoint index (sizes and SHA-256s) is verified on top of ``load_torch_file``
in ``surgery.train.checkpoint``; mask and centroid files are read through ``read_safetensors`` by their modules.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from surgery.errors import CheckpointError

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")  # what torch.save writes, by convention
WRAPPERS = ("model", "state_dict")  # a trainer checkpoint's model; a {"state_dict": ...} wrapper
WHAT_TO_GIVE = ("Give a .safetensors file, a state_dict saved with torch.save (.pt / .pth / .bin), "
                "or a trainer checkpoint whose 'model' entry is one.")


class UnreadableTorchFile(Exception):
    """Why ``torch.load`` cannot read a file (the message is the reason); callers say which file and what to do."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict in a weights file: the file's own, or the one a trainer checkpoint or wrapper holds."""
    return state_dict_in(read_weights_file(path), f"weights file '{path}'")


def read_weights_file(path: str | os.PathLike) -> Any:
    """What a weights file holds, as saved (a trainer checkpoint stays whole)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' does not exist (or is not a file). {WHAT_TO_GIVE}")
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"weights file '{path}' is not a readable safetensors file ({error}). "
                                  f"{WHAT_TO_GIVE}") from error
    if path.suffix in TORCH_SUFFIXES:
        try:
            return load_torch_file(path)
        except UnreadableTorchFile as reason:
            raise CheckpointError(f"weights file '{path}' {reason}. {WHAT_TO_GIVE}") from reason
    raise CheckpointError(f"weights file '{path}' is neither {SAFETENSORS_SUFFIX} nor one of {list(TORCH_SUFFIXES)}. "
                          f"{WHAT_TO_GIVE}")


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and its metadata strings (mask files keep their record there). safetensors'
    own errors pass through: the caller knows what the file was meant to be and says so."""
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})


def load_torch_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` to the CPU; raises ``UnreadableTorchFile`` saying why not."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not zipfile.is_zipfile(path):  # torch unpickled it as its legacy format: bytes of something else
            raise UnreadableTorchFile("torch.load cannot read it: it is not the zip archive torch.save writes "
                                      "(truncated, or not a torch.save file)") from error
        raise UnreadableTorchFile(f"holds objects torch.load(weights_only=True) refuses ({torch_refusal(error)})") \
            from error
    except Exception as error:  # torch raises many kinds for a file that is not its format
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnreadableTorchFile(f"torch.load cannot read it ({first_line})") from error


def torch_refusal(error: Exception) -> str:
    """The one informative sentence of torch's long weights_only error."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*(.*?)(?: Please use|\n|$)", text)
    if match:
        return match.group(1).strip()
    return text.strip().splitlines()[-1] if text.strip() else type(error).__name__


def state_dict_in(saved: Any, where: str) -> dict[str, torch.Tensor]:
    """The state_dict inside a trainer checkpoint (``"model"``) or ``{"state_dict": ...}``, else ``saved``
    itself; ``where`` names it in the ``CheckpointError`` raised when it is not a mapping of tensors."""
    for key in WRAPPERS:
        if isinstance(saved, Mapping) and isinstance(saved.get(key), Mapping):
            saved = saved[key]
            break
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{where} holds a {type(saved).__name__}, not a state_dict. {WHAT_TO_GIVE}")
    not_tensors = [f"{k!r} ({type(v).__name__})" for k, v in saved.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise CheckpointError(
            f"{where} is not a state_dict: {', '.join(not_tensors[:5])}{', ...' if len(not_tensors) > 5 else ''} "
            f"{'is' if len(not_tensors) == 1 else 'are'} not tensors. {WHAT_TO_GIVE}"
        )
    return dict(saved)
