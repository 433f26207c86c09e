"""``python -m trainer`` with a recorder of consumed episodes and, once, a SIGKILL of one rank.

    METAREC_RECORDS=<dir> METAREC_KILL_RANK=1 METAREC_KILL_STEP=5 \
      torchrun --standalone --nproc_per_node=2 --max-restarts=1 \
      -m tests.reliability.killed_rank --config debug ...

Every rank appends, after each completed step, one JSON line to ``<dir>/rank-<r>.jsonl``:
``{"attempt", "step", "episodes": [fingerprint, ...], "samples"}`` (``attempt`` is torchrun's
``TORCHELASTIC_RESTART_COUNT``; a fingerprint is a digest of one real episode's ids, labels and
sizes, padding episodes excluded). Rank ``METAREC_KILL_RANK`` sends itself SIGKILL as step
``METAREC_KILL_STEP`` begins, once: a marker file ``<dir>/killed`` is written (and fsynced) first,
so the restarted rank trains on. No trainer code is changed: the wrapper patches
``Trainer.train_step`` in this process only, as ``tests/trainer/parallel/failing_rank.py`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch

from trainer.__main__ import main
from trainer.data.batch import EpisodeBatch
from trainer.meta import StepStats
from trainer.trainer import Trainer

_train_step = Trainer.train_step


def episode_fingerprints(batch: EpisodeBatch) -> list[str]:
    """A digest per real episode of ``batch`` (global ids, dense, labels, sizes, task id)."""
    global_ids = batch.ids[batch.inverse]  # (T, N, S)
    out = []
    for t in torch.nonzero(batch.episode_mask).flatten().tolist():
        h = hashlib.blake2b(digest_size=10)
        for part in (global_ids[t], batch.dense[t], batch.click[t], batch.conversion[t]):
            h.update(part.contiguous().numpy().tobytes())
        h.update(f"{int(batch.task_ids[t])}/{int(batch.n_support[t])}/{int(batch.n_query[t])}"
                 .encode())  # fmt: skip
        out.append(h.hexdigest())
    return out


def _append_fsynced(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _recording_step(
    self: Trainer, batch: EpisodeBatch, next_batch: EpisodeBatch | None = None
) -> StepStats:
    records = Path(os.environ["METAREC_RECORDS"])
    step, rank = self.step + 1, self.env.rank
    marker = records / "killed"
    kill_rank = int(os.environ.get("METAREC_KILL_RANK", "-1"))
    kill_step = int(os.environ.get("METAREC_KILL_STEP", "0"))
    if rank == kill_rank and step == kill_step and not marker.exists():
        _append_fsynced(marker, f"rank {rank} killed at step {step}")
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no checkpoint: a lost pod
    stats = _train_step(self, batch, next_batch)
    record = {
        "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "step": step,
        "episodes": episode_fingerprints(batch),
        "samples": int((batch.n_support + batch.n_query).sum()),
    }
    _append_fsynced(records / f"rank-{rank}.jsonl", json.dumps(record))
    return stats


if __name__ == "__main__":
    Trainer.train_step = _recording_step  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
