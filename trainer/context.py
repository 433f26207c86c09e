"""Process setup for a training run: the job context from the launcher, and this process's
reproducibility settings.

The loop never reads environment variables: it takes a :class:`~trainer.parallel.env.ParallelEnv`
(rank, world size, device and the communication hooks), built here from the run's config by
:func:`context_from_env`, which delegates to :func:`trainer.parallel.env.init_parallel` (the one
module that reads the launch variables and joins the process group)::

    env = context_from_env(cfg)          # one process, or one rank of a torchrun / PyTorchJob job
    try:
        Trainer(cfg, env).build().fit()
    finally:
        env.close()

For one process every hook is the identity, so the single-process path is the reference that the
distributed one must match (DESIGN.md §5, oracle 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trainer.config import TrainerConfig
    from trainer.parallel.env import ParallelEnv


def context_from_env(cfg: TrainerConfig, environ: Mapping[str, str] | None = None) -> ParallelEnv:
    """This process's place in the job, from the launcher's variables (``os.environ`` by default)
    and the run's ``train.device`` and ``[parallel]`` settings (backend, timeout, bucket size).

    Plain ``python -m trainer`` sets no launch variable: one process, no process group.

    Raises:
        ValueError: bad launch variables, an unknown backend, NCCL without a GPU, or ``cuda``
            asked for where none is visible.
    """
    from trainer.parallel.env import init_parallel

    return init_parallel(
        environ,
        device=cfg.train.device,
        backend=cfg.parallel.backend,
        timeout_s=cfg.parallel.timeout_s,
        dense_bucket_bytes=int(cfg.parallel.dense_bucket_mb * 2**20),
    )


def set_determinism(deterministic: bool, threads: int, device: torch.device) -> None:
    """Thread count and (optionally) deterministic kernels for this process.

    Deterministic CUDA matmuls need ``CUBLAS_WORKSPACE_CONFIG`` set before the first cuBLAS call,
    so it is set here (process setup), not left to the user.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    else:
        torch.use_deterministic_algorithms(False)
