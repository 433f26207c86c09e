"""Storage faults: a process killed while writing leaves the previous complete version readable and
the partial one invisible; damaged checkpoint files are reported, never half-loaded.

Already covered elsewhere (not repeated here): an exception at the checkpoint's commit rename and a
truncated / bit-flipped shard (``tests/trainer/test_checkpoint.py``), a truncated checkpoint at
resume (``tests/trainer/test_main.py``), an export killed mid-write and a failing publish
(``tests/trainer/exported/test_export.py``), tampered exports (``test_integrity.py``), an ETL crash
before the swap and byte-identical reruns (``tests/components/etl/test_job.py``), promotion-pointer
crashes (``tests/components/promotion/test_registry.py``). Added here: a REAL kill (SIGKILL, no
cleanup) at each point of a checkpoint save, damaged ``meta.json`` / ``latest`` / missing shards,
and an ETL crash inside the swap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import Checkpointer, CheckpointError
from trainer.data.contract import load_manifest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.multiprocess  # a real SIGKILL of another process
@pytest.mark.parametrize("point", ["shard", "meta", "commit", "pointer"])
def test_checkpoint_save_killed_at_any_point_keeps_the_previous_one(tmp_path, point) -> None:
    root = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "tests.reliability.crash_checkpoint", str(root),
                           point], env=env, cwd=REPO, capture_output=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    state, info = Checkpointer(root).load()  # what a restarted job resumes
    assert info["step"] == 1 and info["meta"] == {"note": "one"}
    assert torch.equal(state["w"], torch.full((64, 8), 1.0))
    leftovers = sorted(p.name for p in root.iterdir())
    if point in ("commit", "pointer"):  # complete on disk, not named by `latest`: not resumed
        assert "step-00000002" in leftovers
    else:
        assert "step-00000002" not in leftovers
    # the retried save replaces whatever the killed one left, and commits
    Checkpointer(root).save(2, {"w": torch.zeros(1)})
    assert Checkpointer(root).load()[1]["step"] == 2
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def _saved(root: Path) -> Path:
    ck = Checkpointer(root)
    ck.save(1, {"w": torch.ones(3)})
    return ck.save(2, {"w": torch.ones(3) * 2})


@pytest.mark.parametrize(
    "damage, message",
    [
        ("meta_truncated", "meta.json is corrupt"),
        ("meta_missing", "missing or incomplete"),
        ("meta_foreign", "unsupported checkpoint format"),
        ("shard_missing", "has no shard for rank 0"),
        ("shard_empty", "does not match its checksum"),
        ("shard_swapped", "does not match its checksum"),
        ("pointer_garbage", "latest is damaged"),
        ("pointer_escapes", "latest is damaged"),
    ],
)
def test_damaged_checkpoint_files_are_named(tmp_path, damage, message) -> None:
    ckpt = _saved(tmp_path)
    meta, shard = ckpt / "meta.json", ckpt / "rank-00000.pt"
    if damage == "meta_truncated":
        meta.write_bytes(meta.read_bytes()[:40])
    elif damage == "meta_missing":
        meta.unlink()
    elif damage == "meta_foreign":
        meta.write_text(json.dumps({"format": "something-else", "version": 7}))
    elif damage == "shard_missing":
        shard.unlink()
    elif damage == "shard_empty":
        shard.write_bytes(b"")
    elif damage == "shard_swapped":  # another step's valid shard, same size: only the hash tells
        shard.write_bytes((tmp_path / "step-00000001" / "rank-00000.pt").read_bytes())
    elif damage == "pointer_garbage":
        (tmp_path / "latest").write_bytes(b"\x00\xffstep-0000000\n")
    else:  # a pointer out of the checkpoint root is refused, even to a valid checkpoint
        other = _saved(tmp_path.parent / f"{tmp_path.name}-other")
        (tmp_path / "latest").write_text(f"../{tmp_path.name}-other/{other.name}")
    with pytest.raises(CheckpointError, match=message):
        Checkpointer(tmp_path).load()


# ---------------------------------------------------------------------------------------- ETL
class _CrashInsideTheSwap:
    """A pyarrow filesystem that fails the move of the staging folder into place right after the
    previous version was moved to the trash (the process dies between the swap's two renames)."""

    def __init__(self, fs) -> None:
        self._fs, self.trashed = fs, False

    def move(self, src: str, dst: str) -> None:
        if self.trashed and "/_staging/" in src and "/_staging/" not in dst:
            raise OSError("simulated crash inside the swap")
        self._fs.move(src, dst)
        self.trashed = self.trashed or "/_trash/" in dst

    def __getattr__(self, name: str):
        return getattr(self._fs, name)


@pytest.mark.spark
def test_etl_crash_inside_the_swap_never_shows_a_partial_interval(spark, tmp_path, monkeypatch):
    """The two renames of the swap are not one atomic step: killed between them, the interval is
    ABSENT (never partial; its previous version is kept whole under ``_trash``) until the rerun,
    which writes the same bytes as before."""
    from components.etl import load, run_etl
    from tests.components.etl import rawdata
    from tests.components.etl.test_job import make_config, snapshot

    raw, out = tmp_path / "raw", tmp_path / "out"
    rawdata.corrupted_interval(raw, "jsonl")
    config = make_config(raw, out)
    first = Path(run_etl(config, spark).output)
    before = snapshot(first)
    real = load.filesystem
    monkeypatch.setattr(
        load,
        "filesystem",
        lambda uri: (lambda fs, base: (_CrashInsideTheSwap(fs), base))(*real(uri)),
    )
    with pytest.raises(OSError, match="inside the swap"):
        run_etl(config, spark)
    monkeypatch.undo()
    assert not first.exists()  # absent, not partial: readers find no _manifest.json
    trashed = [p for p in (out / "_trash").iterdir() if p.is_dir()]
    assert len(trashed) == 1 and snapshot(trashed[0]) == before
    again = Path(run_etl(config, spark).output)
    assert again == first and snapshot(again) == before
    assert load_manifest(str(again)).files  # and the trainer's contract accepts it
