"""Logging for the trainer: a rank-aware logger setup, the progress line and ``metrics.jsonl``.

    setup_logging(rank=0)
    progress = Progress(total_steps=1000, start_step=0)
    ...
    line = progress.update(step, samples)    # "step 100/1000 | 12.3 steps/s | 45,000 samples/s | ETA 1m13s"
    metrics = JsonlLog(out / "metrics.jsonl", resume_step=0)
    metrics.write({"kind": "train", "step": 100, "loss": 0.61})

Only rank 0 writes ``metrics.jsonl``; every line is one JSON object with ``kind`` (``train`` or
``eval``) and ``step``. Non-finite floats are written as ``null`` so every line is strict JSON.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from trainer.durable import jsonable, write_atomic

_FORMAT = "%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"


def setup_logging(rank: int = 0, verbose: bool = False) -> None:
    """Log INFO (DEBUG with ``verbose``) to stderr on rank 0 and WARNING on the other ranks, with
    the rank in every line. Does nothing when the process already configured logging (the
    ``metarec`` CLI does)."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format=_FORMAT.format(rank=rank),
        datefmt="%H:%M:%S",
    )


class JsonlLog:
    """Append-only ``metrics.jsonl``.

    Args:
        path: the file.
        resume_step: the step the run (re)starts from. Records of later steps, written by an
            earlier attempt that died after its last checkpoint, are dropped so a resumed run's
            file reads as one uninterrupted run; 0 starts a new file.

    The file is rewritten as a plain file (a link there is replaced, not written through) and
    every record is appended with ``O_NOFOLLOW``: a link planted during the run is refused.
    """

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = path
        kept: list[str] = []
        if resume_step > 0 and path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                if int(record.get("step", 0)) <= resume_step:
                    kept.append(line)
        write_atomic(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        line = json.dumps(jsonable(record), sort_keys=True, allow_nan=False) + "\n"
        try:
            with os.fdopen(os.open(self.path, flags, 0o644), "a") as f:
                f.write(line)
        except OSError as e:  # one line naming the file (the trainer's user errors: exit 2)
            if e.errno == errno.ELOOP:
                raise ValueError(
                    f"{self.path} became a symlink during the run; the trainer never writes "
                    "through a link: remove it and resume"
                ) from None
            raise ValueError(
                f"cannot append to the run's metrics log {self.path}: {e.strerror or e}; free "
                "space or make the run directory writable, then rerun (it resumes from its last "
                "checkpoint)"
            ) from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Throughput and ETA between log steps (wall clock, this process).

    Args:
        total_steps: the step the run ends at.
        start_step: the step it starts from (after a resume, the checkpoint's step).
    """

    def __init__(self, total_steps: int, start_step: int = 0) -> None:
        self.total_steps = total_steps
        self._t0 = self._last_t = time.perf_counter()
        self._start = self._last_step = start_step
        self._samples = 0

    def add_samples(self, n: int) -> None:
        self._samples += n

    def update(self, step: int) -> dict[str, float]:
        """Rates since the previous update and the ETA from the run's average rate."""
        now = time.perf_counter()
        dt = max(now - self._last_t, 1e-9)
        rates = {
            "steps_per_s": (step - self._last_step) / dt,
            "samples_per_s": self._samples / dt,
        }
        avg = (step - self._start) / max(now - self._t0, 1e-9)
        rates["eta_s"] = (self.total_steps - step) / avg if avg > 0 else float("inf")
        self._last_t, self._last_step, self._samples = now, step, 0
        return rates

    def line(self, step: int, rates: dict[str, float]) -> str:
        return (
            f"step {step}/{self.total_steps} | {rates['steps_per_s']:.2f} steps/s | "
            f"{rates['samples_per_s']:,.0f} samples/s | ETA {_duration(rates['eta_s'])}"
        )
