"""Storage faults: a process killed while writing leaves the previous complete version readable and
the partial one invisible; damaged checkpoint files are reported, never half-loaded.

Already covered elsewhere (not repeated here): an exception at the checkpoint's commit rename and a
truncated / bit-flipped shard (``tests/trainer/test_checkpoint.py``), a truncated checkpoint at
resume (``tests/trainer/test_main.py``), an export killed mid-write and a failing publish
(``tests/trainer/exported/test_export.py``), tampered exports (``test_integrity.py``), an ETL crash
before and inside the swap and byte-identical reruns (``tests/components/etl/test_job.py``, which
reuses its module's ETL run), promotion-pointer crashes
(``tests/components/promotion/test_registry.py``). Added here: a REAL kill (SIGKILL, no cleanup)
at each point of a checkpoint save, damaged ``meta.json`` / ``latest`` / missing shards.
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
