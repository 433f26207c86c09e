"""The trainer's entry point with a fault injected on one rank: rank 1 raises at step 2, while the
other ranks are inside that step's collectives.

    torchrun --standalone --nproc_per_node=2 -m tests.trainer.parallel.failing_rank --config ...

Everything else is ``python -m trainer`` unchanged (``trainer.__main__.main``, wrapped in
torchelastic's ``record``), so the test sees what a user sees when a rank fails.
"""

from __future__ import annotations

import os
import sys

from trainer.__main__ import main
from trainer.data.batch import EpisodeBatch
from trainer.meta import StepStats
from trainer.trainer import Trainer

FAILING_RANK, FAILING_STEP = "1", 2


class InjectedFailure(RuntimeError):
    """The error rank 1 raises."""


def _failing_step(
    self: Trainer, batch: EpisodeBatch, next_batch: EpisodeBatch | None = None
) -> StepStats:
    if self.step + 1 == FAILING_STEP:
        raise InjectedFailure(f"injected failure on rank {FAILING_RANK} at step {FAILING_STEP}")
    return _train_step(self, batch, next_batch)


_train_step = Trainer.train_step

if __name__ == "__main__":
    if os.environ.get("RANK") == FAILING_RANK:
        Trainer.train_step = _failing_step  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
