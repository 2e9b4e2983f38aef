"""Checkpoints: lossless round trips, atomic writes, damage detection, pruning, RNG state."""

from __future__ import annotations

import contextlib
import copy
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SmallCNN, requires_cuda, seeded
from torch import nn

import surgery.train.checkpoint as ckpt
from surgery.errors import CheckpointError, ConfigError
from surgery.train.checkpoint import (
    CheckpointStore,
    CheckpointWarning,
    load_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
)


def small_state(tag: float) -> dict:
    """A tiny checkpoint state whose content identifies it."""
    return {"weight": torch.full((256,), float(tag)), "epoch": int(tag), "config": {"name": f"run{tag}"}}


def assert_same(a, b) -> None:
    """Deep equality of nested dicts/lists/tuples holding tensors (exact, dtype included)."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    """A few SGD steps on random data drawn from the global generators (so RNG state matters)."""
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8) + float(np.random.rand()) + random.random()
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, keep_bytes: int) -> None:
    path.write_bytes(path.read_bytes()[:keep_bytes])


@contextlib.contextmanager
def no_warnings():
    """Fail on any CheckpointWarning: a clean directory must load silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        yield


# --------------------------------------------------------------------- round trip


def test_resume_from_checkpoint_continues_bit_identically(tmp_path):
    model = seeded(SmallCNN)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    train_steps(model, opt, 2)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "schedule": {"alpha": 0.5, "beta": (1.0, 3.5), "milestones": [30, 60], "done": None},
        "rng": rng_state(),
        "epoch": 5,
        "step": 640,
        "config": {"model": "resnet18", "train": {"lr": 0.05, "nesterov": False}, "tags": ["a", "b"]},
    }
    store = CheckpointStore(tmp_path / "ckpt")
    path = store.save(state, epoch=5, step=640)
    assert path == tmp_path / "ckpt" / "epoch0005-step000640.pt"
    saved = copy.deepcopy(state)  # state_dict() tensors are the live ones, which training changes
    expected = train_steps(model, opt, 3)

    with no_warnings():
        loaded, loaded_path = store.load_latest()
    assert loaded_path == path
    assert_same(loaded, saved)
    assert all(t.device.type == "cpu" for t in loaded["model"].values())

    fresh = seeded(SmallCNN, seed=7)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    fresh.load_state_dict(loaded["model"])
    fresh_opt.load_state_dict(loaded["optimizer"])
    set_rng_state(loaded["rng"])
    assert train_steps(fresh, fresh_opt, 3) == expected
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_index_records_size_and_sha256_of_each_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path)
    path = store.save(small_state(1), epoch=1, step=10)
    index = json.loads((tmp_path / "index.json").read_text())
    digest = ckpt.file_digest(path)
    entry = index["checkpoints"][path.name]
    assert entry == {"epoch": 1, "step": 10, "bytes": digest.size, "sha256": digest.sha256}
    assert digest.size == path.stat().st_size


def test_store_files_are_plain_torch_checkpoints(tmp_path):
    path = CheckpointStore(tmp_path).save(small_state(3), epoch=0, step=3)
    assert_same(torch.load(path, weights_only=True), small_state(3))


def test_same_epoch_and_step_saved_twice_replaces(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    store.save(small_state(1), epoch=2, step=20)
    path = store.save(small_state(2), epoch=2, step=20)
    assert store.checkpoints() == [path]
    with no_warnings():
        state, _ = store.load_latest()
    assert_same(state, small_state(2))
    assert list(json.loads((tmp_path / "index.json").read_text())["checkpoints"]) == [path.name]


# ---------------------------------------------------------------- crash safety


def test_failure_during_torch_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    good = store.save(small_state(1), epoch=1, step=10)
    good_bytes = good.read_bytes()
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)  # a partial file, as a dying process leaves it
        raise RuntimeError("disk died")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(RuntimeError, match="disk died"):
        store.save(small_state(2), epoch=2, step=20)
    with pytest.raises(RuntimeError, match="disk died"):
        store.save(small_state(3), epoch=1, step=10)  # replacing the good one fails too
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch0001-step000010.pt", "index.json"]
    assert good.read_bytes() == good_bytes
    with no_warnings():  # the failed replace gave the old file its index entry back
        state, path = store.load_latest()
    assert path == good
    assert_same(state, small_state(1))


def _fail_on_call(monkeypatch, name: str, call: int) -> None:
    """Make ckpt.<name> raise on its `call`-th use (1-based), as a kill at that point would."""
    real = getattr(ckpt, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, name, wrapper)


def test_crash_between_rename_and_index_update_loses_nothing(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(small_state(1), epoch=1, step=10)
    _fail_on_call(monkeypatch, "_write_index", 1)
    with pytest.raises(KeyboardInterrupt):
        store.save(small_state(2), epoch=2, step=20)
    monkeypatch.undo()

    with pytest.warns(CheckpointWarning, match=r"epoch0002-step000020\.pt is not recorded in index\.json"):
        state, path = store.load_latest()
    assert path.name == "epoch0002-step000020.pt"
    assert_same(state, small_state(2))


def test_crash_while_replacing_same_step_is_not_mistaken_for_corruption(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(small_state(1), epoch=0, step=5)
    store.save(small_state(2), epoch=1, step=10)
    # call 1 drops the old entry, call 2 would record the new file: the kill lands between.
    _fail_on_call(monkeypatch, "_write_index", 2)
    with pytest.raises(KeyboardInterrupt):
        store.save(small_state(3), epoch=1, step=10)
    monkeypatch.undo()

    with pytest.warns(CheckpointWarning, match="not recorded"):
        state, path = store.load_latest()
    assert path.name == "epoch0001-step000010.pt"
    assert_same(state, small_state(3))


def test_leftover_temp_files_are_ignored_and_cleaned_on_next_save(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(small_state(1), epoch=1, step=10)
    leftovers = [
        tmp_path / ".epoch0002-step000020.pt.tmp-4242-deadbeef",
        tmp_path / ".index.json.tmp-4242-cafef00d",
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"PK\x03\x04 half a zip")
    assert [p.name for p in store.checkpoints()] == ["epoch0001-step000010.pt"]
    with no_warnings():
        _, path = store.load_latest()
    assert path.name == "epoch0001-step000010.pt"

    store.save(small_state(2), epoch=2, step=20)
    assert not any(p.exists() for p in leftovers)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# ----------------------------------------------------------------- damage


def test_truncated_newest_checkpoint_falls_back_to_previous_with_warning(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    store.save(small_state(1), epoch=1, step=10)
    newest = store.save(small_state(2), epoch=2, step=20)
    size = newest.stat().st_size
    truncate(newest, 1234)

    with pytest.warns(CheckpointWarning, match=rf"epoch0002-step000020\.pt: truncated: 1234 of {size} bytes"):
        state, path = store.load_latest()
    assert path.name == "epoch0001-step000010.pt"
    assert_same(state, small_state(1))
    with pytest.raises(CheckpointError, match=rf"{newest.name} is unusable: truncated: 1234 of {size} bytes"):
        load_checkpoint(newest)


def test_flipped_byte_is_detected_although_torch_load_would_accept_it(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    store.save(small_state(1), epoch=1, step=10)
    newest = store.save(small_state(2), epoch=2, step=20)
    offset = newest.read_bytes().index(torch.full((1,), 2.0).numpy().tobytes() * 4)
    flip_byte(newest, offset)
    assert not torch.equal(torch.load(newest, weights_only=True)["weight"], small_state(2)["weight"])

    with pytest.raises(CheckpointError, match="checksum mismatch") as err:
        load_checkpoint(newest)
    assert str(newest) in str(err.value)
    with pytest.warns(CheckpointWarning, match="epoch0002-step000020.pt: checksum mismatch"):
        _, path = store.load_latest()
    assert path.name == "epoch0001-step000010.pt"


def test_every_checkpoint_damaged_raises_with_what_was_found_and_the_fix(tmp_path):
    store = CheckpointStore(tmp_path)
    first = store.save(small_state(1), epoch=1, step=10)
    second = store.save(small_state(2), epoch=2, step=20)
    truncate(second, 10)
    flip_byte(first, first.stat().st_size // 2)

    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError) as err:
        store.load_latest()
    message = str(err.value)
    assert str(tmp_path) in message
    assert "epoch0002-step000020.pt: truncated: 10 of" in message
    assert "epoch0001-step000010.pt: checksum mismatch" in message
    assert "without --resume" in message


def test_unindexed_truncated_checkpoint_is_rejected_by_torch_load(tmp_path):
    path = tmp_path / "epoch0001-step000010.pt"
    save_atomic(small_state(1), path)
    truncate(path, path.stat().st_size - 30)
    with pytest.raises(CheckpointError, match="torch.load cannot read it"):
        load_checkpoint(path)
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no usable checkpoint"):
        CheckpointStore(tmp_path).load_latest()


def test_index_entry_without_file_is_reported_and_skipped(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    store.save(small_state(1), epoch=1, step=10)
    store.save(small_state(2), epoch=2, step=20).unlink()
    with pytest.warns(CheckpointWarning, match=r"epoch0002-step000020\.pt: index\.json records it but the file is missing"):
        _, path = store.load_latest()
    assert path.name == "epoch0001-step000010.pt"


def test_unreadable_index_warns_and_the_next_save_rewrites_it(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(small_state(1), epoch=1, step=10)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.warns(CheckpointWarning) as record:
        state, _ = store.load_latest()
    assert len(record) == 1  # the index's damage, not one "unrecorded" warning per file
    assert str(record[0].message).startswith(f"{tmp_path / 'index.json'} is unreadable (")
    assert "judged by torch.load alone" in str(record[0].message)
    assert_same(state, small_state(1))

    with pytest.warns(CheckpointWarning, match="unreadable"):
        store.save(small_state(2), epoch=2, step=20)
    index = json.loads((tmp_path / "index.json").read_text())
    assert list(index["checkpoints"]) == ["epoch0002-step000020.pt"]


# ------------------------------------------------------------------ pruning


def test_keep_prunes_oldest_after_the_new_checkpoint_is_written(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for i in range(1, 5):
        store.save(small_state(i), epoch=i, step=10 * i)
    names = ["epoch0003-step000030.pt", "epoch0004-step000040.pt"]
    assert [p.name for p in store.checkpoints()] == names
    assert sorted(json.loads((tmp_path / "index.json").read_text())["checkpoints"]) == names
    assert store.latest() == tmp_path / names[-1]


def test_keep_never_prunes_the_checkpoint_just_saved(tmp_path):
    store = CheckpointStore(tmp_path, keep=1)
    store.save(small_state(9), epoch=9, step=90)
    path = store.save(small_state(1), epoch=1, step=10)  # resumed from an older point
    assert store.checkpoints() == [path]
    assert_same(load_checkpoint(path), small_state(1))


def test_prune_failure_before_new_checkpoint_is_durable_deletes_nothing(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=1)
    store.save(small_state(1), epoch=1, step=10)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*epoch0002-step000020\.pt.*No space left"):
        store.save(small_state(2), epoch=2, step=20)
    assert [p.name for p in store.checkpoints()] == ["epoch0001-step000010.pt"]


# ------------------------------------------------------------- bad inputs


def test_missing_or_empty_directory_raises_for_load_latest(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint directory .*nowhere does not exist.*without --resume"):
        CheckpointStore(tmp_path / "nowhere").load_latest()
    with pytest.raises(CheckpointError, match=r"holds no checkpoint.*the directory is empty.*without --resume"):
        CheckpointStore(tmp_path).load_latest()
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match=r"found only notes\.txt"):
        CheckpointStore(tmp_path).load_latest()
    assert CheckpointStore(tmp_path / "nowhere").latest() is None


def test_state_that_weights_only_loading_refuses_is_rejected_at_save(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(small_state(1), epoch=1, step=10)
    bad = {"model": {}, "config": {"data": {"root": Path("/data")}}}
    with pytest.raises(CheckpointError, match="weights_only") as err:
        store.save(bad, epoch=2, step=20)
    message = str(err.value)
    assert "state['config']['data']['root']" in message and "pathlib" in message and "str()" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch0001-step000010.pt", "index.json"]


def test_unpicklable_state_is_rejected_with_a_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot be pickled.*state_dict\(\)"):
        CheckpointStore(tmp_path).save({"schedule": lambda step: step}, epoch=0, step=0)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"keep": 0}, ConfigError, "keep=0 is invalid"),
        ({"keep": 1.5}, ConfigError, "keep=1.5 is invalid"),
    ],
)
def test_bad_keep_is_rejected(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        CheckpointStore(tmp_path, **kwargs)


def test_bad_save_arguments_are_rejected(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match="epoch=-1 is invalid"):
        store.save({}, epoch=-1, step=0)
    with pytest.raises(CheckpointError, match="step='3' is invalid"):
        store.save({}, epoch=0, step="3")
    with pytest.raises(CheckpointError, match="must be a dict.*got list"):
        store.save([1, 2], epoch=0, step=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="is a file, not a directory"):
        CheckpointStore(tmp_path / "file").save({}, epoch=0, step=0)


def test_load_checkpoint_bad_paths(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pt does not exist.*without --resume"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a directory.*load_latest"):
        load_checkpoint(tmp_path)
    save_atomic([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_load_checkpoint_of_a_copy_outside_the_store_works(tmp_path):
    path = CheckpointStore(tmp_path / "run").save(small_state(4), epoch=4, step=40)
    copy = tmp_path / "elsewhere" / "best.pt"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    with no_warnings():
        assert_same(load_checkpoint(copy), small_state(4))


# ---------------------------------------------------------------------- RNG


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # leave cached Gaussians behind: they are state too
    path = CheckpointStore(tmp_path).save({"rng": rng_state()}, epoch=0, step=0)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.randn(), torch.rand(3))

    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    set_rng_state(load_checkpoint(path)["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.randn(), torch.rand(3))
    assert got[:2] == expected[:2]
    np.testing.assert_array_equal(got[2], expected[2])
    assert got[3] == expected[3]
    assert torch.equal(got[4], expected[4])


def test_malformed_rng_state_raises_and_changes_nothing():
    torch.manual_seed(5), random.seed(5)
    state = rng_state()
    before = torch.get_rng_state(), random.getstate()
    broken = dict(state, numpy={"bit_generator": "MT19937"})
    with pytest.raises(CheckpointError, match="RNG state is malformed"):
        set_rng_state(broken)
    with pytest.raises(CheckpointError, match="RNG state lacks 'torch'"):
        set_rng_state({k: v for k, v in state.items() if k != "torch"})
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]


def test_rng_state_of_more_cuda_devices_than_present_warns():
    state = rng_state()
    present = len(state.get("cuda", []))
    state["cuda"] = [*state.get("cuda", []), torch.zeros(16, dtype=torch.uint8)]
    with pytest.warns(CheckpointWarning, match=rf"RNG states of {present + 1} CUDA device\(s\) but this machine has {present}"):
        set_rng_state(state)


@requires_cuda
def test_cuda_rng_state_round_trip(tmp_path):
    torch.cuda.manual_seed_all(11)
    path = CheckpointStore(tmp_path).save({"rng": rng_state()}, epoch=0, step=0)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(12)
    set_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(4, device="cuda"), expected)


def test_a_file_that_is_no_checkpoint_and_one_with_refused_objects_are_told_apart(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"not the zip archive torch.save writes \(truncated, or not a checkpoint\)"):
        load_checkpoint(garbage)
    refused = tmp_path / "objects.pt"
    torch.save({"model": {}, "path": Path("/data")}, refused)  # a pathlib object: not a weights-only type
    with pytest.raises(CheckpointError, match=r"refuses \(Unsupported global: GLOBAL pathlib"):
        load_checkpoint(refused)


def test_a_run_rewinding_to_its_checkpoint_refuses_bytes_the_index_did_not_record(tmp_path):
    from surgery.train.config import RunConfig
    from surgery.train.masking import MaskPlan
    from surgery.train.pipeline import start_from

    model = seeded(SmallCNN)
    store = CheckpointStore(tmp_path / "checkpoints")
    path = store.save({"model": model.state_dict()}, epoch=1, step=10)
    config = RunConfig.from_dict({"init": {"rewind": str(path)}})
    start_from(config, seeded(SmallCNN), MaskPlan(masks=None))  # intact: rewinds

    flip_byte(path, path.stat().st_size // 2)
    with pytest.raises(CheckpointError, match="checksum mismatch") as err:
        start_from(config, seeded(SmallCNN), MaskPlan(masks=None))
    assert str(path) in str(err.value)
