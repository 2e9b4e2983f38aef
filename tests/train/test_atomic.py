"""atomic_write: a file is the old bytes or the new ones, never a mix, and no temporary file stays."""

from __future__ import annotations

import json

import pytest

from surgery.train.atomic import atomic_write, is_temp_file, write_json_atomic


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "sub" / "data.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def dies_halfway(f):
        f.write(b"ne")
        raise RuntimeError("disk died")

    with pytest.raises(RuntimeError, match="disk died"):
        atomic_write(path, dies_halfway)
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["data.bin"]


def test_a_refusing_check_keeps_the_old_file_and_an_accepting_one_returns_its_value(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")

    def refuse(temporary):
        assert is_temp_file(temporary) and temporary.read_bytes() == b"new"
        raise ValueError("not loadable")

    with pytest.raises(ValueError):
        atomic_write(path, lambda f: f.write(b"new"), check=refuse)
    assert path.read_bytes() == b"old"
    assert atomic_write(path, lambda f: f.write(b"new"), check=lambda t: t.stat().st_size) == 3
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_write_json_atomic_writes_sorted_json_with_a_newline(tmp_path):
    path = tmp_path / "result.json"
    write_json_atomic({"b": 1, "a": [1.5, None]}, path)
    text = path.read_text()
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1.5, None], "b": 1}
