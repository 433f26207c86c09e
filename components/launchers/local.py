"""Run the pipeline's steps on this machine, as child processes whose output is streamed.

    train_locally("debug", ["data.path=out/episodes/interval=..."], nproc=2)   # torchrun, 2 ranks
    etl_locally(["--input", "out/raw", "--output", "out/episodes", "--start", "2026-11-01T00",
                 "--end", "2026-11-02T00"], master="local[2]")                   # Spark local

The same commands the containers run (``torchrun -m trainer ...``, ``python -m
components.etl.job ...``), with this interpreter; every output line goes to ``sink`` (stdout by
default) as it comes, so a DAG task or a KFP component shows the job's log live. A non-zero exit
raises :class:`LaunchError` naming the step, the exit code and the child's last error line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from components.train.launch import TorchrunOptions, torchrun_command

log = logging.getLogger(__name__)
USER_ERROR = 2  # the trainer's and the ETL's exit code for a refused config or input


class LaunchError(RuntimeError):
    """A local step exited with a non-zero code; ``code`` holds it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def stream_process(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    sink: Callable[[str], None] | None = None,
    keep: int = 50,
) -> tuple[int, list[str]]:
    """Run ``cmd``, passing each output line (stdout and stderr merged) to ``sink``.

    Returns:
        (exit code, the last ``keep`` lines) — the tail is what an error message quotes.
    """
    sink = sink or (lambda line: sys.stdout.write(line + "\n"))
    log.info("running: %s", " ".join(cmd))
    tail: deque[str] = deque(maxlen=keep)
    child = subprocess.Popen(
        list(cmd),
        env=dict(env if env is not None else os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        assert child.stdout is not None
        for line in child.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            sink(line)
        return child.wait(), list(tail)
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)  # torchrun forwards it to every rank
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _last_error(tail: Sequence[str]) -> str:
    for line in reversed(tail):
        if "error" in line.lower():
            return line.strip()
    return tail[-1].strip() if tail else "(no output)"


def train_locally(
    config: str | None,
    overrides: Sequence[str],
    nproc: int = 1,
    *,
    verbose: bool = False,
    sink: Callable[[str], None] | None = None,
) -> None:
    """``torchrun --nproc-per-node=N -m trainer`` (or ``python -m trainer`` for one rank).

    Raises:
        LaunchError: the job failed; code 2 is a user error (bad config or data).
    """
    trainer_args = [*(["--config", config] if config else []), *overrides]
    trainer_args += ["-v"] if verbose else []
    if nproc > 1:
        # environ={} : a local job is standalone even inside a pod that has PET_* variables
        cmd = torchrun_command(TorchrunOptions(nproc=nproc), trainer_args, environ={})
    else:
        cmd = [sys.executable, "-m", "trainer", *trainer_args]
    code, tail = stream_process(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, sink=sink)
    if code != 0:
        what = "refused its config or data" if code == USER_ERROR else "failed"
        raise LaunchError(
            f"local training ({nproc} process(es)) {what}, exit code {code}: {_last_error(tail)}",
            code,
        )


def etl_locally(
    etl_args: Sequence[str],
    *,
    master: str = "local[*]",
    sink: Callable[[str], None] | None = None,
) -> None:
    """``python -m components.etl.job <etl_args>`` on Spark ``master`` (the options of
    ``metarec etl``).

    Raises:
        LaunchError: the ETL failed; code 2 means it refused its input (missing partitions, an
            empty interval, ...), and the message quotes its one-line reason.
    """
    cmd = [sys.executable, "-m", "components.etl.job", *etl_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "METAREC_SPARK_MASTER": master}
    code, tail = stream_process(cmd, env=env, sink=sink)
    if code != 0:
        what = "refused its input" if code == USER_ERROR else "failed"
        raise LaunchError(f"local ETL {what}, exit code {code}: {_last_error(tail)}", code)
