"""Collectives with communication accounting: every call is counted with the bytes it puts on the wire.

The sharded embedding collection, the dense gradient sync and the metric reductions call the
collectives only through :class:`Collectives`, so a :class:`CommMeter` sees all traffic of a step::

    comm = Collectives(rank, world_size, device=device)      # built by trainer.parallel.env
    ...one training step...
    comm.meter.snapshot(reset=True)
    # {"comm.splits.calls": 1, "comm.splits.bytes": 8, "comm.ids.calls": 1, "comm.ids.bytes": 61440,
    #  "comm.rows.calls": 1, ..., "comm.dense.calls": 1, "comm.dense.bytes": 412008,
    #  "comm.calls": 7, "comm.bytes": 1843210}

What ``bytes`` counts (per rank, what this rank sends to OTHER ranks; its own share never leaves it):

- ``all_to_all``: the rows of the input destined for other ranks times the row size;
- ``all_reduce``: ``2 (W - 1) / W`` times the tensor size: what each rank sends in a ring all-reduce
  (reduce-scatter then all-gather), the usual bandwidth model; NCCL's tree variant sends the same;
- ``all_gather``: ``(W - 1)`` times the local tensor (it goes to every other rank);
- ``broadcast``: the tensor size on the source rank, 0 elsewhere;
- ``barrier``: 0 bytes, one call.

With one rank every collective is the identity: counted as a call, 0 bytes, no process group needed
(so the single-process path runs the same code).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


class CommMeter:
    """Calls and bytes per named collective since the last reset (see the module docstring)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)

    def add(self, name: str, nbytes: int, calls: int = 1) -> None:
        """Count ``calls`` calls of collective ``name`` that sent ``nbytes`` bytes off this rank."""
        self.calls[name] += calls
        self.bytes[name] += int(nbytes)

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()

    def snapshot(self, reset: bool = False) -> dict[str, int]:
        """Flat counters for a metrics record: ``comm.<name>.calls``/``.bytes`` plus the totals."""
        out: dict[str, int] = {}
        for name in sorted(self.calls):
            out[f"comm.{name}.calls"] = self.calls[name]
            out[f"comm.{name}.bytes"] = self.bytes[name]
        out["comm.calls"] = sum(self.calls.values())
        out["comm.bytes"] = sum(self.bytes.values())
        if reset:
            self.reset()
        return out


def _row_bytes(t: Tensor) -> int:
    """Bytes of one dim-0 slice of ``t``."""
    n = t.element_size()
    for s in t.shape[1:]:
        n *= s
    return n


class Collectives:
    """The collectives of one process group, counted in :attr:`meter`.

    Args:
        rank, world_size: this process's place in the default process group.
        device: where the exchanged tensors live (``cuda`` for NCCL, ``cpu`` for gloo).
        meter: where calls and bytes are counted (a fresh :class:`CommMeter` by default).
        group: the process group (None: the default group).
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        *,
        device: torch.device | str = "cpu",
        meter: CommMeter | None = None,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        assert 0 <= rank < world_size, (rank, world_size)
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.meter = meter if meter is not None else CommMeter()
        self.group = group

    @property
    def distributed(self) -> bool:
        """True when there are other ranks to talk to."""
        return self.world_size > 1

    def exchange_counts(self, send_counts: Tensor, name: str = "splits") -> Tensor:
        """Tell every rank how many rows this rank will send it; return how many each sends here.

        ``send_counts`` is ``(W,)`` int64 (row counts per destination rank). Returns ``(W,)``
        int64 on the CPU: the uneven split sizes of the ``all_to_all`` that follows.
        """
        counts = send_counts.to(self.device, torch.int64)
        if not self.distributed:
            self.meter.add(name, 0)
            return counts.cpu()
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts, group=self.group)
        self.meter.add(name, 8 * (self.world_size - 1))
        return recv.cpu()

    def all_to_all(
        self, tensor: Tensor, send_counts: Sequence[int], recv_counts: Sequence[int], name: str
    ) -> Tensor:
        """Uneven all-to-all along dim 0: rows ``[sum(send[:j]), sum(send[:j+1]))`` go to rank j.

        Returns the received rows, grouped by source rank in rank order.
        """
        send, recv = [int(c) for c in send_counts], [int(c) for c in recv_counts]
        assert len(send) == len(recv) == self.world_size and sum(send) == tensor.shape[0]
        row = _row_bytes(tensor)
        if not self.distributed:
            self.meter.add(name, 0)
            return tensor
        out = tensor.new_empty((sum(recv), *tensor.shape[1:]))
        dist.all_to_all_single(out, tensor.contiguous(), recv, send, group=self.group)
        self.meter.add(name, row * (sum(send) - send[self.rank]))
        return out

    def all_reduce(self, tensor: Tensor, name: str, async_op: bool = False) -> dist.Work | None:
        """In-place sum over ranks (``async_op``: return the work handle to ``wait()`` on)."""
        if not self.distributed:
            self.meter.add(name, 0)
            return None
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group, async_op=async_op)
        ring = 2 * (self.world_size - 1) * tensor.numel() * tensor.element_size()
        self.meter.add(name, ring // self.world_size)
        return work

    def all_gather_rows(self, tensor: Tensor, name: str) -> list[Tensor]:
        """Every rank's ``tensor`` (dim-0 sizes may differ; other dims must match), in rank order."""
        if not self.distributed:
            self.meter.add(name, 0)
            return [tensor]
        n = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=self.device)
        sizes = torch.empty(self.world_size, dtype=torch.int64, device=self.device)
        dist.all_gather_into_tensor(sizes, n, group=self.group)
        sizes_list = sizes.tolist()
        longest = max(sizes_list)
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        out = tensor.new_empty((self.world_size * longest, *tensor.shape[1:]))
        dist.all_gather_into_tensor(out, padded.contiguous(), group=self.group)
        self.meter.add(
            name, (self.world_size - 1) * (8 + padded.numel() * padded.element_size()), calls=2
        )
        return [out[r * longest : r * longest + s] for r, s in enumerate(sizes_list)]

    def broadcast(self, tensor: Tensor, src: int, name: str) -> None:
        """In place: every rank gets rank ``src``'s ``tensor``."""
        if not self.distributed:
            self.meter.add(name, 0)
            return
        dist.broadcast(tensor, src, group=self.group)
        self.meter.add(name, tensor.numel() * tensor.element_size() if self.rank == src else 0)

    def barrier(self, name: str = "barrier") -> None:
        """Wait until every rank gets here."""
        self.meter.add(name, 0)
        if self.distributed:
            dist.barrier(group=self.group)
