"""trainer.durable: the one atomic, durable write every writer uses."""

import json
import math

import pytest

from trainer.durable import write_atomic, write_json_atomic


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "_manifest.json"
    write_atomic(path, "old\n")
    write_atomic(path, b"new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in path.parent.iterdir()] == ["_manifest.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    write_atomic(path, "old\n")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr("trainer.durable.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_write_json_atomic_is_strict_json(tmp_path):
    path = tmp_path / "eval.json"
    write_json_atomic(path, {"b": math.nan, "a": [1.5, math.inf], "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": [1.5, None], "b": None, "p": str(tmp_path)}
