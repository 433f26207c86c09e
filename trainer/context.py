"""The process's place in a job (rank, world size, device) and the hooks the loop calls around it.

The trainer loop never reads environment variables and never imports ``torch.distributed``; it takes
a :class:`ParallelContext` instead. This module provides the single-process one and
:func:`context_from_env`, the ONE place that reads the launcher's variables (``torchrun`` and the
Kubeflow training operator set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). The distributed issue
extends that function to initialise the process group (``trainer/parallel/``) and passes a context
whose hooks do real collectives::

    loss, stats = outer_loss(model, rows, batch, meta_cfg, normalizer=ctx.normalizer(valid))
    loss.backward()
    ctx.reduce_dense_grads(model.parameters())      # AllReduce-sum of the dense meta-gradients
    optimizers.step(batch.ids, rows)

The context also chooses the embedding collection (:meth:`ParallelContext.build_embeddings`: the
sharded one replaces the plain one there). For one process every hook is the identity, so the
single-process path is the reference that the distributed one must match (DESIGN.md §5, oracle 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch


class ParallelContext:
    """Rank, world size and communication hooks; this base class is the single-process job.

    Args:
        rank: this process's rank among ``world_size``.
        world_size: number of processes of the job.
        local_rank: rank on this host (picks the GPU).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
            raise ValueError(
                f"need 0 <= rank < world_size and local_rank >= 0, got rank={rank}, "
                f"world_size={world_size}, local_rank={local_rank}"
            )
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, writes metrics and evaluation files."""
        return self.rank == 0

    def build_embeddings(
        self, model_cfg: Any, layout: Any, *, seed: int, device: torch.device
    ) -> Any | None:
        """The embedding collection to inject into the model; None: the plain one that
        ``build_model`` creates (seeded ``seed + 1``). A sharded context returns its own."""
        return None

    def barrier_fn(self) -> Callable[[], None] | None:
        """The barrier the Checkpointer needs when ``world_size > 1`` (None for one process)."""
        return None

    def normalizer(self, valid_episodes: torch.Tensor) -> torch.Tensor | None:
        """Divisor of the step loss: the GLOBAL number of valid episodes of the step.

        None lets ``outer_loss`` use this batch's count, which is the global count here.
        """
        return None

    def reduce_dense_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum the dense gradients over the data-parallel ranks (nothing to do for one process)."""
        return None

    def reduce_sums(self, values: Mapping[str, float]) -> dict[str, float]:
        """Sum logging counters (loss sums, samples) over ranks (identity for one process)."""
        return dict(values)

    def close(self) -> None:
        """Tear down whatever the context set up (the process group, later)."""
        return None


def context_from_env(environ: Mapping[str, str] | None = None) -> ParallelContext:
    """The job context from the launcher's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Plain ``python -m trainer`` sets none of them (one process); ``torchrun --nproc_per_node=1``
    sets them to a world of one. Larger worlds arrive with the distributed issue.

    Raises:
        ValueError: a variable is not an integer, or the world has more than one process.
    """
    env = os.environ if environ is None else environ
    try:
        rank = int(env.get("RANK", "0"))
        world_size = int(env.get("WORLD_SIZE", "1"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {e}") from None
    if world_size > 1:
        raise ValueError(
            f"WORLD_SIZE={world_size}: this trainer runs one process per job for now "
            "(sharded multi-process training comes with trainer/parallel); "
            "launch with torchrun --nproc_per_node=1 or plain python -m trainer"
        )
    return ParallelContext(rank, world_size, local_rank)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda`` (this process's GPU: ``cuda:<local_rank>``) or ``auto``.

    Raises:
        ValueError: ``cuda`` was asked for and no GPU is visible.
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("train.device = 'cuda' but no CUDA device is visible; use auto or cpu")
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


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
