"""``trainer.durable.write_atomic`` never writes through a planted symlink (issue 18 item 11): not
through one at its temp file's name (created new with ``O_EXCL | O_NOFOLLOW`` under an
unpredictable name) nor through one at the target name (the rename replaces the link itself)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from trainer import durable
from trainer.durable import write_atomic, write_json_atomic


def test_a_link_at_the_target_name_is_replaced_not_written_through(tmp_path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("victim")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").symlink_to(outside)
    write_json_atomic(run / "metrics.json", {"auc": 0.5})
    assert outside.read_text() == "victim"
    assert not (run / "metrics.json").is_symlink()
    assert (run / "metrics.json").read_text() == '{\n  "auc": 0.5\n}\n'
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"]  # no temp file left


def test_the_temp_name_is_unpredictable_and_a_link_planted_there_is_not_written(
    tmp_path, monkeypatch
) -> None:
    """Links planted at the old predictable name (``.<name>.tmp-<pid>``) are ignored; a link at
    the very name the writer picks fails the open (``O_EXCL``), so nothing goes through it."""
    outside = tmp_path / "outside.txt"
    outside.write_text("victim")
    run = tmp_path / "run"
    run.mkdir()
    (run / f".report.png.tmp-{os.getpid()}").symlink_to(outside)
    write_atomic(run / "report.png", b"png 1")
    assert (run / "report.png").read_bytes() == b"png 1" and outside.read_text() == "victim"
    names = {p.name for p in run.iterdir()}
    assert names == {"report.png", f".report.png.tmp-{os.getpid()}"}  # the planted link stays

    # The writer's own random name, predicted here by fixing the random part.
    monkeypatch.setattr(durable.secrets, "token_hex", lambda n: "0" * 2 * n)
    planted = run / f".report.png.tmp-{os.getpid()}-{'0' * 16}"
    planted.symlink_to(outside)
    with pytest.raises(FileExistsError) as e:
        write_atomic(run / "report.png", b"png 2")
    assert e.value.errno == errno.EEXIST
    assert outside.read_text() == "victim" and (run / "report.png").read_bytes() == b"png 1"
    assert planted.is_symlink()  # the writer removes only its own temp file


def test_a_dangling_link_at_the_temp_name_creates_nothing_at_its_target(
    tmp_path, monkeypatch
) -> None:
    """``O_CREAT`` alone would create the link's missing target outside the run directory."""
    target = tmp_path / "elsewhere" / "created.txt"
    target.parent.mkdir()
    run = tmp_path / "run"
    monkeypatch.setattr(durable.secrets, "token_hex", lambda n: "a" * 2 * n)
    run.mkdir()
    (run / f".eval.json.tmp-{os.getpid()}-{'a' * 16}").symlink_to(target)
    with pytest.raises(FileExistsError):
        write_atomic(run / "eval.json", "{}")
    assert not target.exists() and not (run / "eval.json").exists()


def test_two_writes_in_one_process_use_distinct_temp_files(tmp_path, monkeypatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def record(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(durable.os, "replace", record)
    write_atomic(tmp_path / "a", "1")
    write_atomic(tmp_path / "a", "2")
    assert len(set(seen)) == 2 and all(n.startswith(f".a.tmp-{os.getpid()}-") for n in seen)
    assert (tmp_path / "a").read_text() == "2"
