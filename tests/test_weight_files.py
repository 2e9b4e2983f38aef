"""One reader of weight files: every form a state_dict is saved in, every problem a CheckpointError naming the file."""

from __future__ import annotations

import pathlib

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import surgery
from surgery.compiler.weight_files import read_state_dict
from surgery.errors import CheckpointError
from surgery.init.rewind import rewind
from surgery.zoo.models import load_weights

GIVE = "Give a .safetensors file"  # the fix every message names


def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(3, 2).state_dict()


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"model": s, "epoch": 3}, lambda s: {"state_dict": s}],
                         ids=["state_dict", "trainer checkpoint", "state_dict wrapper"])
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_a_torch_file_gives_its_state_dict_however_it_is_wrapped(tmp_path, wrap, suffix):
    torch.save(wrap(state()), tmp_path / f"w{suffix}")
    read = read_state_dict(tmp_path / f"w{suffix}")
    assert read.keys() == state().keys() and all(torch.equal(read[k], v) for k, v in state().items())


def test_a_safetensors_file_gives_its_tensors(tmp_path):
    save_file(state(), str(tmp_path / "w.safetensors"))
    assert read_state_dict(tmp_path / "w.safetensors").keys() == state().keys()


@pytest.mark.parametrize(("name", "content", "message"), [
    ("nope.pt", None, r"nope.pt' does not exist"),
    ("w.npz", b"x", r"w.npz' is neither .safetensors nor one of \['.pt', '.pth', '.bin'\]"),
    ("garbage.pt", b"not a torch file", r"garbage.pt' torch.load cannot read it"),
    ("garbage.safetensors", b"not a safetensors file", r"garbage.safetensors' is not a readable safetensors file"),
])
def test_unreadable_files_are_checkpoint_errors_naming_the_file_and_the_fix(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as error:
        read_state_dict(tmp_path / name)
    assert GIVE in str(error.value)


def test_a_file_whose_objects_torch_refuses_says_which(tmp_path):
    torch.save({"weight": torch.zeros(2), "where": pathlib.PurePosixPath("/data")}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match=r"unsafe.pt' holds objects torch.load\(weights_only=True\) refuses "
                                              r"\(Unsupported global: GLOBAL pathlib"):
        read_state_dict(tmp_path / "unsafe.pt")


def test_a_file_holding_no_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt' holds a list, not a state_dict"):
        read_state_dict(tmp_path / "list.pt")
    torch.save({"epoch": 3, "weight": torch.zeros(2)}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"mixed.pt' is not a state_dict: 'epoch' \(int\) is not tensors"):
        read_state_dict(tmp_path / "mixed.pt")


def test_every_reader_raises_the_same_error(tmp_path):
    """load_weights, rewind and a masks source read through the one reader: one error class for one problem."""
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    model = nn.Sequential(nn.Linear(3, 2))
    for read in (lambda: load_weights(model, tmp_path / "garbage.pt"), lambda: rewind(model, tmp_path / "garbage.pt"),
                 lambda: surgery.compile(model, torch.randn(1, 3), {"masks": str(tmp_path / "garbage.pt")})):
        with pytest.raises(CheckpointError, match="garbage.pt' torch.load cannot read it"):
            read()
