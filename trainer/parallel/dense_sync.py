"""Data-parallel dense layers: bucketed all-reduce (sum) of the dense gradients, and a start-up
broadcast that makes every replica start from rank 0's parameters.

The meta step backpropagates once per outer step, so the dense meta-gradient is summed once, after
``backward`` and before the optimizer (and before clipping: the clip norm is the global one)::

    loss.backward()
    allreduce_gradients(model.parameters(), comm)    # each rank now holds the sum over ranks
    optimizers.step(...)                              # clip + Adam: identical on every rank

Gradients are flattened into buckets of about ``bucket_bytes`` (25 MiB, DDP's default) per dtype
and device, and the buckets' all-reduces are issued asynchronously, then waited on: few large
messages instead of one per parameter. Every bucket carries one presence flag per parameter, so a
parameter that got no gradient on any rank keeps ``grad = None`` (Adam then skips it, as in the
single-process run) and one that got a gradient on some ranks only is summed with zeros elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from trainer.parallel.comm import Collectives

DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024


def plan_buckets(params: Iterable[nn.Parameter], bucket_bytes: int) -> list[list[nn.Parameter]]:
    """Group ``params`` (in order) into buckets of one dtype and device, each at most
    ``bucket_bytes`` unless a single parameter is larger. Deterministic: every rank builds the same
    buckets from the same parameter list.

    Example: sizes 10, 10, 30 MB with 25 MB buckets -> ``[[p0, p1], [p2]]``.
    """
    if bucket_bytes < 1:
        raise ValueError(f"dense bucket size must be >= 1 byte, got {bucket_bytes}")
    buckets: list[list[nn.Parameter]] = []
    open_: dict[tuple[torch.dtype, torch.device], tuple[list[nn.Parameter], int]] = {}
    for p in params:
        if not p.requires_grad:
            continue
        key = (p.dtype, p.device)
        size = p.numel() * p.element_size()
        bucket, used = open_.get(key, (None, 0))
        if bucket is None or (used + size > bucket_bytes and bucket):
            bucket, used = [], 0
            buckets.append(bucket)
        bucket.append(p)
        open_[key] = (bucket, used + size)
    return buckets


def _flatten(bucket: list[nn.Parameter]) -> Tensor:
    """One flat tensor: every gradient (zeros where None), then one presence flag per parameter."""
    p0 = bucket[0]
    parts = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in bucket]
    flags = torch.tensor([p.grad is not None for p in bucket], dtype=p0.dtype, device=p0.device)
    return torch.cat([*parts, flags])


def _unflatten(bucket: list[nn.Parameter], flat: Tensor) -> None:
    flags = flat[-len(bucket) :].tolist()
    offset = 0
    for p, present in zip(bucket, flags, strict=True):
        n = p.numel()
        if present > 0:
            g = flat[offset : offset + n].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        else:
            p.grad = None
        offset += n


def allreduce_gradients(
    params: Iterable[nn.Parameter], comm: Collectives, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> None:
    """Replace every parameter's gradient by its sum over the ranks (see the module docstring)."""
    if not comm.distributed:
        comm.meter.add("dense", 0)
        return
    buckets = plan_buckets(params, bucket_bytes)
    flats = [_flatten(b) for b in buckets]
    works = [comm.all_reduce(f, "dense", async_op=True) for f in flats]
    for bucket, flat, work in zip(buckets, flats, works, strict=True):
        work.wait()
        _unflatten(bucket, flat)


@torch.no_grad()
def broadcast_parameters(module: nn.Module, comm: Collectives, src: int = 0) -> None:
    """Copy rank ``src``'s parameters to every rank (one broadcast per tensor, at start-up:
    replicas built from the same seed already agree; this makes it a guarantee). Buffers are
    constants of the architecture (pooling matrices) and are left alone."""
    for p in module.parameters():
        comm.broadcast(p.data, src, "broadcast")
