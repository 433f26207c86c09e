"""Checkpoints: round trip, atomic commit, corruption detection, no pickled code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import Checkpointer, CheckpointError, sha256_file


def _state(v: float) -> dict:
    return {
        "w": torch.full((3, 2), float(v)),
        "step": int(v),
        "opt": {"lr": 0.1, "buf": [torch.ones(2)]},
    }


def test_round_trip_and_latest(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, keep=2)
    assert ck.latest() is None
    for step in (1, 2, 3):
        ck.save(step, _state(step), meta={"config": {"a": step}})
    state, info = ck.load()
    assert info["step"] == 3 and info["meta"] == {"config": {"a": 3}}
    torch.testing.assert_close(state["w"], torch.full((3, 2), 3.0))
    assert state["opt"]["buf"][0].tolist() == [1.0, 1.0]
    kept = sorted(p.name for p in tmp_path.glob("step-*"))
    assert kept == ["step-00000002", "step-00000003"]  # keep=2 pruned step 1


def test_crash_before_commit_leaves_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    ck = Checkpointer(tmp_path)
    ck.save(1, _state(1))
    real_replace = os.replace

    def crash(src, dst):
        if str(src).endswith(".tmp") and "step-00000002" in str(src):
            raise OSError("simulated crash during commit")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        ck.save(2, _state(2))
    monkeypatch.undo()
    _, info = Checkpointer(tmp_path).load()
    assert info["step"] == 1  # the partial step-2 is invisible
    ck.save(2, _state(2))  # and a retry cleans up the leftover staging directory
    assert Checkpointer(tmp_path).load()[1]["step"] == 2
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_corrupted_shard_is_detected(tmp_path: Path, damage: str) -> None:
    path = Checkpointer(tmp_path).save(5, _state(5)) / "rank-00000.pt"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        Checkpointer(tmp_path).load()


class Payload:  # an arbitrary object: loading it would require unpickling code
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused_even_with_a_valid_checksum(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path).save(1, _state(1))
    shard = ckpt / "rank-00000.pt"
    torch.save({"evil": Payload()}, shard)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["shards"]["rank-00000.pt"] = {"sha256": sha256_file(shard), "bytes": shard.stat().st_size}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        Checkpointer(tmp_path).load()


def test_world_size_mismatch_and_dangling_pointer(tmp_path: Path) -> None:
    Checkpointer(tmp_path).save(1, _state(1))
    with pytest.raises(CheckpointError, match="same world size"):
        Checkpointer(tmp_path, world_size=2, barrier=lambda: None).load()
    (tmp_path / "latest").write_text("step-00000099")
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        Checkpointer(tmp_path).latest()
