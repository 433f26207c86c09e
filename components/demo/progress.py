"""The demo's own printing and records: numbered progress lines around each step, the training
job's output relayed to a log file (a few of its lines to the terminal), and the records of the
stages that are the demo's alone (generate, cold-start evaluation, scoring), kept like the steps'
records (``components/steps/layout.py``): a rerun with the same inputs reuses them.

    progress = Progress(total=12)
    etl = progress.run("etl", lambda: data.etl_step(cfg, interval), lambda r: f"{r.rows_read} rows")
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("metarec.demo")
T = TypeVar("T")
RELAY = ("trainer.trainer: step ", "trainer.evaluate: eval ")
RELAYED_STEP_LINES = 6
"""Progress lines relayed per training run (metrics.jsonl keeps every log step for the curves)."""


class DemoStopped(RuntimeError):
    """The demo cannot go on (e.g. no model was promoted, so nothing can be scored)."""


def reused(result: Any) -> bool:
    """Whether a step's result (a step dataclass or a demo record) came from an earlier run."""
    if isinstance(result, dict):
        return bool(result.get("reused"))
    return bool(getattr(result, "reused", False))


class Progress:
    """Numbered progress lines and the wall time of each stage of this run.

    Args:
        total: number of stages (for the ``[i/n]`` prefix).
    """

    def __init__(self, total: int) -> None:
        self.total, self.index = total, 0
        self.seconds: dict[str, float] = {}
        self.reused: list[str] = []

    def run(self, name: str, work: Callable[[], T], describe: Callable[[T], str]) -> T:
        """Run ``work`` (a step call), log what it did and how long it took; return its result."""
        self.index += 1
        prefix = f"[{self.index}/{self.total}] {name}"
        log.info("%s ...", prefix)
        t0 = time.perf_counter()
        result = work()
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        again = reused(result)
        if again:
            self.reused.append(name)
        log.info(
            "%s %s in %.1f s: %s",
            prefix,
            "up to date (its record reused)" if again else "done",
            self.seconds[name],
            describe(result),
        )
        return result


def recorded(
    layout,  # components.steps.layout.RunLayout
    interval,  # components.steps.layout.Interval
    step: str,
    inputs: dict[str, Any],
    work: Callable[[], dict[str, Any]],
    *,
    force: bool = False,
    outputs: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """A demo stage with a step record: the recorded result when the record holds the same
    ``inputs`` and every one of ``outputs`` exists (``reused`` True), else ``work()``, recorded.
    """
    from components.steps.layout import read_record, write_record

    done = None if force else read_record(layout, interval, step, inputs)
    if done is not None and all(p.exists() for p in outputs):
        return {**done, "reused": True}
    result = work()
    write_record(layout, interval, step, inputs, result)
    return {**result, "reused": False}


class TrainOutput(io.TextIOBase):
    """The training step's output while the demo runs it (``contextlib.redirect_stdout``): every
    line to ``path``; rank 0's evaluation lines and ``RELAYED_STEP_LINES`` of its step lines to
    the demo's log, as they come.
    """

    def __init__(self, path: Path, label: str, steps: int, log_every: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.label, self.steps = path, label, steps
        self.every = log_every * max(1, steps // (log_every * RELAYED_STEP_LINES))
        self._file = open(path, "w")  # noqa: SIM115 - a live log, closed by close()
        self._pending = ""

    def write(self, text: str) -> int:
        self._file.write(text)
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._relay(line)
        return len(text)

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        super().close()
        self._file.close()

    def _relay(self, line: str) -> None:
        if "[rank 0]" not in line or not any(k in line for k in RELAY):
            return
        text = line.split(": ", 1)[-1].rstrip()
        if text.startswith("step "):
            step = text.split()[1].split("/")[0]
            if not step.isdigit() or (int(step) != self.steps and int(step) % self.every):
                return
        log.info("  %s: %s", self.label, text)
