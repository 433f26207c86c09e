"""Spawn helper for multi-process tests: N CPU processes in a gloo group on loopback.

    results = run_spawned(per_rank, world_size=2, tmp_path=tmp_path, args=(cases,))
    # results[r] is what per_rank(env, *args) returned on rank r

``per_rank`` must be a module-level function (pickled by reference under ``spawn``). Each rank runs
with one intra-op thread and deterministic algorithms, and a short process-group timeout, so a rank
stuck in a collective fails the test instead of hanging it (pytest-timeout is the outer guard).
Results travel back as ``torch.save`` files, one per rank.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.parallel.env import ParallelEnv
from trainer.parallel.launch import spawn_local

PG_TIMEOUT_S = 30.0


def _record(env: ParallelEnv, fn: Callable[..., Any], out_dir: str, args: tuple) -> None:
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(1234 + env.rank)
    result = fn(env, *args)
    torch.save(result, Path(out_dir) / f"rank-{env.rank}.pt")


def run_spawned(
    fn: Callable[..., Any],
    world_size: int,
    tmp_path: Path,
    args: tuple = (),
    timeout_s: float = PG_TIMEOUT_S,
) -> list[Any]:
    """Run ``fn(env, *args)`` on ``world_size`` ranks; return each rank's return value."""
    out = tmp_path / f"spawn-{fn.__name__}-{world_size}"
    out.mkdir(parents=True, exist_ok=True)
    spawn_local(_record, world_size, (fn, str(out), args), timeout_s=timeout_s, threads=1)
    return [torch.load(out / f"rank-{r}.pt", weights_only=False) for r in range(world_size)]
