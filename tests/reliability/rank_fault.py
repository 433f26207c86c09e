"""A tiny rank for the restart-policy test: it joins a gloo group, meets its peers at a barrier,
then fails as told (stdlib + torch only, so a run takes seconds).

    METAREC_FAULT=kill python -m trainer.supervise --standalone --nproc-per-node=2 \
        tests/reliability/rank_fault.py

``METAREC_FAULT``: ``none`` (exit 0), ``kill`` (SIGKILL, as the OOM killer), ``abort``
(``os.abort``: SIGABRT, as an NCCL abort), ``raise`` (an exception: exit 1), ``user-error``
(exit 2, the trainer's bad-config code): done by rank 1 while rank 0 waits at a second barrier.
``wait``: every rank writes ``$METAREC_READY_DIR/rank-<r>.ready`` and sleeps until stopped (the
test then sends SIGTERM to the launcher: a preemption).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch.distributed as dist

FAULT_RANK = 1


def main() -> int:
    fault = os.environ["METAREC_FAULT"]
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    dist.barrier()
    if fault == "wait":
        Path(os.environ["METAREC_READY_DIR"], f"rank-{rank}.ready").touch()
        while True:
            time.sleep(0.1)
    if rank == FAULT_RANK:
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "abort":
            os.abort()
        elif fault == "raise":
            raise RuntimeError("injected failure")
        elif fault == "user-error":
            print("injected user error: bad config", file=sys.stderr)
            return 2
    if fault != "none" and rank != FAULT_RANK:
        dist.barrier()  # the peer is gone: gloo raises here, or torchrun stops this rank
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
