"""The demo's two training runs: ``metarec train --nproc 2`` (torchrun, gloo on CPU) of
``components/demo/train.toml``, once with MAML and once plain, on the same episodes.

The job's full output goes to ``<run>/train.log``; the progress lines of rank 0 (steps/s,
samples/s, ETA, loss, communication per sample; the evaluation lines) are relayed to the demo's
log as they come, and on a failure the tail of the log is shown.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from components.demo.settings import DemoConfig

log = logging.getLogger("metarec.demo")
TRAIN_CONFIG = Path(__file__).resolve().parent / "train.toml"
MODE = {"meta": "maml", "plain": "plain"}
"""Demo run name -> ``meta.mode``."""
RELAY = ("trainer.trainer: step ", "trainer.evaluate: eval ")
RELAYED_STEP_LINES = 6
"""Progress lines relayed per run (metrics.jsonl keeps every log step for the curves)."""


def overrides(config: DemoConfig, mode: str, data_path: Path) -> list[str]:
    """The ``section.key=value`` overrides of one run (values as TOML literals)."""
    values: dict[str, Any] = {
        "data.path": str(data_path.resolve()),
        "train.output_dir": str(config.run_dir(mode).resolve()),
        "train.steps": config.steps,
        "train.log_every": log_every(config),
        "train.seed": config.seed,
        "data.seed": config.seed,
        "data.batch_episodes": config.batch_episodes,
        "meta.mode": MODE[mode],
    }
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def log_every(config: DemoConfig) -> int:
    """~24 points per training curve."""
    return max(1, config.steps // 24)


def _relay(line: str, mode: str, every: int, steps: int) -> None:
    """Log ``line`` if it is rank 0's evaluation line or one of the relayed progress lines."""
    if "[rank 0]" not in line or not any(k in line for k in RELAY):
        return
    text = line.split(": ", 1)[-1].rstrip()
    if text.startswith("step "):
        step = text.split()[1].split("/")[0]
        if not step.isdigit() or (int(step) != steps and int(step) % every):
            return
    log.info("  %s: %s", mode, text)


def _tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


def train_run(config: DemoConfig, mode: str, data_path: Path) -> dict[str, Any]:
    """Train one run on ``config.nproc`` ranks; returns its directory and wall time.

    Raises:
        RuntimeError: the job failed; the message holds the tail of its log.
    """
    from components.train.launch import TorchrunOptions, torchrun_command

    run_dir = config.run_dir(mode)
    run_dir.mkdir(parents=True, exist_ok=True)
    args = ["--config", str(TRAIN_CONFIG), *overrides(config, mode, data_path)]
    if config.nproc > 1:
        cmd = torchrun_command(TorchrunOptions(nproc=config.nproc), args)
    else:
        import sys

        cmd = [sys.executable, "-m", "trainer", *args]
    log_path = run_dir / "train.log"
    log.info("  %s run (meta.mode=%s) on %d rank(s); log: %s", mode, MODE[mode], config.nproc,
             log_path)  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    every = log_every(config) * max(1, config.steps // (log_every(config) * RELAYED_STEP_LINES))
    t0 = time.perf_counter()
    with open(log_path, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        with open(log_path, errors="replace") as follow:
            pending = ""  # a line still being written
            try:
                while True:
                    code = child.poll()
                    *lines, pending = (pending + follow.read()).split("\n")
                    for line in lines:
                        _relay(line, mode, every, config.steps)
                    if code is not None:
                        break
                    time.sleep(0.5)
            except BaseException:
                child.terminate()
                child.wait(timeout=30)
                raise
    if code != 0:
        raise RuntimeError(
            f"the {mode} training run failed (exit code {code}); the end of {log_path}:\n"
            f"{_tail(log_path)}"
        )
    return {"run_dir": str(run_dir), "seconds": round(time.perf_counter() - t0, 2),
            "mode": MODE[mode], "nproc": config.nproc}  # fmt: skip
