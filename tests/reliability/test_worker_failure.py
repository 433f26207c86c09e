"""Worker failure: a rank SIGKILLed mid-training under ``torchrun --max-restarts=1`` (2 ranks, gloo,
the debug config, deterministic) is restarted by torchrun with its peer; the trainer resumes the
last checkpoint by itself (``checkpoint.resume``, on by default) and the job ends with bitwise the
parameters, optimizer state and reader position of an uninterrupted run, and with the same samples:
the steps that count (the last attempt's record of each step) consume, per rank and step, the same
episodes as the uninterrupted run, and each epoch consumes every train episode exactly once.

Both runs go through ``tests/reliability/killed_rank.py`` (``python -m trainer`` plus a recorder),
the reference with the kill disabled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.parallel.loop_reference import checkpoint_shards, run_overrides
from tests.trainer.run_helpers import write_episodes
from trainer.data.reader import EpisodeReader
from trainer.logging_utils import read_jsonl

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
WORLD, BATCH, STEPS, EVERY, KILL_STEP = 2, 8, 10, 4, 7
# 90 train episodes, 2 x 8 per step: 6 steps per epoch. Checkpoints at 4 and 8; rank 1 dies as
# step 7 begins, so the restart resumes step 4 (mid-epoch) and replays 5-7 across the epoch end.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("worker-failure") / "interval", num_tasks=20)


def _train(data: Path, run: Path, kill_step: int) -> tuple[int, str]:
    """``torchrun --max-restarts=1`` of the recording entry point; ``(exit code, output)``."""
    records = run / "records"
    records.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("PET_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
               METAREC_RECORDS=str(records), METAREC_KILL_RANK="1",
               METAREC_KILL_STEP=str(kill_step))  # fmt: skip
    overrides = run_overrides(data, run / "out", **{
        "train.steps": STEPS, "checkpoint.every": EVERY, "data.batch_episodes": BATCH,
        "train.log_every": 1, "train.deterministic": True,
    })  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", "--max-restarts=1", "--monitor-interval=0.2",
           "-m", "tests.reliability.killed_rank", "--config", "debug", *overrides]  # fmt: skip
    # its own session, so that a hang is cleaned up whole (torchrun, both ranks) on timeout
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        out = proc.communicate(timeout=180)[0]
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return -1, "timed out after 180 s:\n" + proc.communicate()[0]


def _records(run: Path, rank: int) -> list[dict[str, Any]]:
    return read_jsonl(run / "records" / f"rank-{rank}.jsonl")


def _effective(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per step, the record of the last attempt that completed it (what the parameters hold)."""
    out: dict[int, dict[str, Any]] = {}
    for r in records:
        out[r["step"]] = r
    return out


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, kill in (("uninterrupted", 0), ("killed", KILL_STEP)):
        code, log = _train(data, base / name, kill)
        assert code == 0, log[-8000:]
        out[name] = base / name
    return out


def test_the_killed_rank_was_restarted_and_resumed_the_last_checkpoint(runs) -> None:
    killed = runs["killed"]
    assert (
        killed / "records" / "killed"
    ).read_text().strip() == f"rank 1 killed at step {KILL_STEP}"
    for rank in range(WORLD):
        attempts = Counter(r["attempt"] for r in _records(killed, rank))
        assert set(attempts) == {0, 1}, attempts  # torchrun restarted both ranks once
        second = [r["step"] for r in _records(killed, rank) if r["attempt"] == 1]
        last_ckpt = (KILL_STEP - 1) // EVERY * EVERY
        assert second == list(range(last_ckpt + 1, STEPS + 1))  # resumed after step 4, not at 0
    # rank 1 completed step 6, not 7; rank 0 cannot finish step 7 without it
    assert max(r["step"] for r in _records(killed, 1) if r["attempt"] == 0) == KILL_STEP - 1


def test_final_state_is_bitwise_the_uninterrupted_one(runs) -> None:
    resumed = checkpoint_shards(runs["killed"] / "out")
    reference = checkpoint_shards(runs["uninterrupted"] / "out")
    assert len(resumed) == len(reference) == WORLD
    for rank, (a, b) in enumerate(zip(resumed, reference, strict=True)):
        assert a["step"] == b["step"] == STEPS and a["reader"] == b["reader"], rank
        _assert_equal_trees(a["model"], b["model"], f"rank {rank} model")
        _assert_equal_trees(a["embeddings"], b["embeddings"], f"rank {rank} embeddings")
        _assert_equal_trees(a["optimizers"], b["optimizers"], f"rank {rank} optimizers")
    # the log has each step once, with the uninterrupted run's losses
    logs = [
        [(r["step"], r["loss"]) for r in read_jsonl(runs[name] / "out" / "metrics.jsonl")
         if r["kind"] == "train"]
        for name in ("killed", "uninterrupted")
    ]  # fmt: skip
    assert logs[0] == logs[1] and [s for s, _ in logs[0]] == list(range(1, STEPS + 1))


def test_no_sample_is_skipped_or_repeated(runs, data: Path) -> None:
    reader = EpisodeReader(str(data), "train", BATCH, rank=0, world_size=WORLD, prefetch=0)
    per_epoch, n_episodes = reader.steps_per_epoch, reader.num_episodes
    reader.close()
    total_samples = 0
    epochs: dict[int, Counter] = {}
    for rank in range(WORLD):
        killed = _effective(_records(runs["killed"], rank))
        reference = _effective(_records(runs["uninterrupted"], rank))
        assert sorted(killed) == sorted(reference) == list(range(1, STEPS + 1))
        for step in range(1, STEPS + 1):
            assert killed[step]["episodes"] == reference[step]["episodes"], (rank, step)
            assert killed[step]["samples"] == reference[step]["samples"], (rank, step)
            epochs.setdefault((step - 1) // per_epoch, Counter()).update(killed[step]["episodes"])
            total_samples += killed[step]["samples"]
    first = epochs[0]  # a whole epoch: every train episode once, over both ranks
    assert sum(first.values()) == n_episodes and max(first.values()) == 1
    second = epochs[1]  # the partial second epoch (replayed across the restart): no repeats
    assert max(second.values()) == 1
    assert total_samples > 0
    print(
        f"\nconsumed {sum(first.values()) + sum(second.values())} episodes / "
        f"{total_samples} samples in {STEPS} steps; epoch 1 = {n_episodes} distinct episodes"
    )


def _assert_equal_trees(a: Any, b: Any, where: str) -> None:
    if isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in b:
            _assert_equal_trees(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal_trees(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)
