"""Run a function on N local processes joined in one process group on loopback (tests, benchmarks).

    def per_rank(env: ParallelEnv, out_dir: str) -> None:    # module level: picklable under spawn
        ...
    spawn_local(per_rank, world_size=2, args=("out",))

Each process gets the variables torchrun would set (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``) passed to
:func:`~trainer.parallel.env.init_parallel` as a mapping (the parent's environment is untouched).
If a rank raises, ``torch.multiprocessing.spawn`` terminates the others and re-raises that rank's
exception with its traceback, so a failure never turns into a hang; a rank stuck in a collective
whose peer died fails after ``timeout_s``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from trainer.parallel.env import init_parallel


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_environ(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun sets for process ``rank`` of a one-host job."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    timeout_s: float,
    threads: int,
    device: str,
    args: tuple[Any, ...],
) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    env = init_parallel(local_environ(rank, world_size, port), device=device, timeout_s=timeout_s)
    try:
        fn(env, *args)
    finally:
        env.close()


def spawn_local(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple[Any, ...] = (),
    *,
    timeout_s: float = 60.0,
    threads: int = 1,
    device: str = "cpu",
) -> None:
    """Run ``fn(env, *args)`` on ``world_size`` spawned processes on loopback (CPU and gloo by
    default; ``device="cuda"``: one GPU per process by local rank, NCCL).

    Args:
        fn: a module-level function (pickled by reference); its return value is ignored (write
            results to files).
        world_size: number of processes.
        args: extra picklable arguments.
        timeout_s: process-group timeout: the longest a collective waits for a peer.
        threads: intra-op threads per process (0: torch's default).
        device: ``cpu``, ``cuda`` or ``auto`` (see :func:`~trainer.parallel.env.init_parallel`).

    Raises:
        torch.multiprocessing.ProcessRaisedException: a rank raised (its traceback included).
        torch.multiprocessing.ProcessExitedException: a rank died (signal, exit code).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    port = free_port()
    mp.spawn(
        _entry,
        args=(fn, world_size, port, timeout_s, threads, device, args),
        nprocs=world_size,
        join=True,
    )
