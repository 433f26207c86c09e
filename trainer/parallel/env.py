"""The process's place in a job, and the ONE place that reads the launcher's variables and sets up the
process group. :class:`ParallelEnv` is the one context object the training loop uses; a single
process is its trivial case (no process group, every collective the identity)::

    env = init_parallel(device="auto")         # reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
    try:
        ...train: env.normalizer(...), env.reduce_dense_grads(...), env.barrier(), env.comm ...
    finally:
        env.close()                            # leaves the process group (idempotent)

The trainer gets its env from ``trainer.context.context_from_env(cfg)``, which delegates here with
the ``[parallel]`` settings. Launchers and the variables they set (read here only):

- plain ``python -m trainer``: none of them -> one process, no process group;
- ``torchrun --nproc_per_node=N``: per process ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
  ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (and ``TORCHELASTIC_RUN_ID``);
- a Kubeflow PyTorchJob whose container runs ``python -m trainer.supervise -m trainer ...``
  (torchrun's launch, ``trainer/supervise.py``): the operator sets
  ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_NPROC_PER_NODE``, ``PET_MASTER_ADDR``/``PORT``, which
  torchrun takes as its defaults, then torchrun sets the per-process variables above;
- a PyTorchJob whose container runs the trainer directly (one process per pod): the operator sets
  ``MASTER_ADDR``/``MASTER_PORT`` (the master pod's service), ``WORLD_SIZE`` (pods), ``RANK`` (the
  POD rank: master 0, worker i -> i + 1) and the ``PET_*`` defaults. No ``LOCAL_RANK``: it is 0. If
  ``PET_NPROC_PER_NODE`` asks for several processes per pod, the container command must be
  ``torchrun`` (which turns the pod rank into process ranks); a direct launch is refused.

Backend: NCCL when the process runs on a GPU, gloo on CPU, chosen from the device. ``comm`` counts
every byte sent (:mod:`trainer.parallel.comm`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from trainer.parallel.comm import Collectives
from trainer.parallel.dense_sync import DEFAULT_BUCKET_BYTES, allreduce_gradients

log = logging.getLogger(__name__)
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class LaunchSpec:
    """What the launcher told this process (see the module docstring)."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None
    master_port: int | None
    launcher: str
    """``none`` (plain python), ``torchrun``, ``pytorchjob`` (the operator's variables, no
    torchrun) or ``env`` (``RANK``/``WORLD_SIZE`` set by hand)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> LaunchSpec:
        """Parse the launcher's variables (``os.environ`` by default).

        Raises:
            ValueError: a variable is not an integer, a rank is out of range, the rendezvous
                address is missing, or a PyTorchJob asks for several processes per pod without
                ``torchrun``.
        """
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env and "RANK" not in env:
            return cls(0, 1, 0, None, None, "none")
        torchrun = "TORCHELASTIC_RUN_ID" in env or "LOCAL_WORLD_SIZE" in env
        try:
            rank = int(env.get("RANK", "0"))
            world_size = int(env.get("WORLD_SIZE", "1"))
            local_rank = int(env.get("LOCAL_RANK", "0"))
            port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else None
        except ValueError as e:
            raise ValueError(
                f"RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be integers: {e}"
            ) from None
        if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
            raise ValueError(
                f"need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got RANK={rank}, "
                f"WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}"
            )
        nproc = env.get("PET_NPROC_PER_NODE", "")
        if not torchrun and nproc.isdigit() and int(nproc) > 1:
            raise ValueError(
                f"PET_NPROC_PER_NODE={nproc} asks for {nproc} processes per pod, but this process "
                "was not started by torchrun, so RANK is the pod rank; make the container command "
                "`torchrun -m trainer ...` (or set nprocPerNode to 1)"
            )
        addr = env.get("MASTER_ADDR") or None
        if world_size > 1 and (addr is None or port is None):
            raise ValueError(
                f"WORLD_SIZE={world_size} but MASTER_ADDR/MASTER_PORT are not set: launch with "
                "torchrun or a PyTorchJob (they set the rendezvous address), or set both"
            )
        launcher = "torchrun" if torchrun else ("pytorchjob" if "PET_NNODES" in env else "env")
        return cls(rank, world_size, local_rank, addr, port, launcher)


@dataclass(frozen=True)
class ParallelEnv:
    """Rank, world size, device and backend of this process, and the loop's communication hooks
    (every hook is the identity for one process, so the single-process run is the reference)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    """``gloo``, ``nccl`` or ``none`` (one process, no process group)."""
    comm: Collectives = field(repr=False)
    dense_bucket_bytes: int = DEFAULT_BUCKET_BYTES

    @classmethod
    def single_process(
        cls, device: torch.device, dense_bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> ParallelEnv:
        """The trivial job: one process on ``device``, no process group."""
        return cls(0, 1, 0, device, "none", Collectives(0, 1, device=device), dense_bucket_bytes)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes metrics and evaluation files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (checkpoint commits, end of run)."""
        self.comm.barrier()

    def barrier_fn(self) -> Callable[[], None] | None:
        """The barrier a multi-rank :class:`~trainer.checkpoint.Checkpointer` needs."""
        return self.barrier if self.world_size > 1 else None

    def normalizer(self, valid_episodes: torch.Tensor) -> torch.Tensor | None:
        """The GLOBAL number of valid episodes of the step (one scalar all-reduce), the divisor
        that makes the sum of the ranks' losses equal the single-process loss (None: one rank)."""
        if self.world_size == 1:
            return None
        total = valid_episodes.detach().to(self.device, torch.float64).reshape(1).clone()
        self.comm.all_reduce(total, "scalar")
        # float32 (exact for counts below 2**24) so that a float32 loss stays float32
        return total[0].clamp_min(1.0).float()

    def reduce_dense_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum the dense gradients over the ranks (bucketed all-reduce; before any clipping)."""
        allreduce_gradients(params, self.comm, self.dense_bucket_bytes)

    def all_reduce_(self, tensor: torch.Tensor, name: str = "metrics") -> torch.Tensor:
        """Sum ``tensor`` over the ranks in place (metric counters); returns it."""
        self.comm.all_reduce(tensor, name)
        return tensor

    def reduce_sums(self, values: Mapping[str, float]) -> dict[str, float]:
        """Sum logging counters over the ranks in one all-reduce (float64)."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        self.all_reduce_(t)
        return dict(zip(keys, t.tolist(), strict=True))

    def comm_stats(self, reset: bool = True) -> dict[str, int]:
        """Calls and bytes of each collective since the last call (log them with the metrics)."""
        return self.comm.meter.snapshot(reset=reset)

    def close(self) -> None:
        """Leave and tear down the process group (idempotent; nothing to do for one process)."""
        if self.backend != "none" and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str, local_rank: int) -> torch.device:
    """``cpu``, ``cuda`` (this process's GPU: ``cuda:<local_rank mod GPUs>``) or ``auto``.

    Raises:
        ValueError: ``cuda`` was asked for and no GPU is visible.
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is visible; use auto")
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _restart_scoped_store(
    environ: Mapping[str, str] | None, addr: str, port: int, world_size: int, timeout: timedelta
) -> dist.Store | None:
    """Under torchrun (agent-hosted store), the store of this restart attempt, else None.

    torchrun's agent keeps ONE rendezvous store for the whole job, across restarts, and the process
    group writes its peers' addresses under fixed keys: after ``--max-restarts`` restarts the
    workers, a worker can read the previous attempt's address of a dead peer and fail with
    "connection refused" (pytorch/pytorch#135712). Prefixing the keys with the restart count
    (the same on every worker, since torchrun restarts all of them together) keeps each attempt's
    keys apart.
    """
    env = os.environ if environ is None else environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(addr, port, world_size, is_master=False, timeout=timeout)
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"metarec/attempt-{attempt}", client)


def init_parallel(
    environ: Mapping[str, str] | None = None,
    *,
    device: str = "auto",
    backend: str = "auto",
    timeout_s: float = 1800.0,
    dense_bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    force_process_group: bool = False,
) -> ParallelEnv:
    """Read the launch variables, pick device and backend, and join the process group.

    Args:
        environ: the variables to read (default ``os.environ``).
        device: ``auto`` (this process's GPU if any, else CPU), ``cpu`` or ``cuda``.
        backend: ``auto`` (NCCL on a GPU, gloo on CPU), ``gloo`` or ``nccl``.
        timeout_s: how long a collective may wait for the other ranks before failing (keep it
            short in tests so that a hang fails fast).
        dense_bucket_bytes: bucket size of the dense-gradient all-reduce.
        force_process_group: join a process group even for one process (e.g. to exercise NCCL at
            world size 1); a launcher's rendezvous address (or ``127.0.0.1:29500``) is used.

    Raises:
        ValueError: bad launch variables, an unknown backend, NCCL without a GPU.
    """
    spec = LaunchSpec.from_environ(environ)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    dev = resolve_device(device, spec.local_rank)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("the nccl backend needs a GPU; use backend auto or gloo on CPU")
    use_pg = spec.world_size > 1 or force_process_group or spec.launcher != "none"
    if not use_pg:
        return ParallelEnv.single_process(dev, dense_bucket_bytes)
    addr = spec.master_addr or "127.0.0.1"
    host = f"[{addr}]" if ":" in addr else addr  # IPv6 literal
    port = spec.master_port or 29500
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        store = _restart_scoped_store(environ, addr, port, spec.world_size, timeout)
        dist.init_process_group(
            backend,
            init_method=None if store is not None else f"tcp://{host}:{port}",
            store=store,
            rank=spec.rank,
            world_size=spec.world_size,
            timeout=timeout,
            device_id=dev if dev.type == "cuda" else None,
        )
    log.info(
        "rank %d/%d (local %d) joined %s at %s:%d via %s, device %s",
        spec.rank, spec.world_size, spec.local_rank, backend, addr, port, spec.launcher, dev,
    )  # fmt: skip
    comm = Collectives(spec.rank, spec.world_size, device=dev)
    return ParallelEnv(
        spec.rank, spec.world_size, spec.local_rank, dev, backend, comm, dense_bucket_bytes
    )
