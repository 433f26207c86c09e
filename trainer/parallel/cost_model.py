"""The cost of one training step at any world size, predicted without running it: per-rank memory,
bytes and calls of every collective, and the step's communication time over given links.

    plan = build_sharding_plan(layout, world_size=128, model=cfg.model, cfg=cfg.parallel)
    requests = expected_requests(plan, layout, episodes=64, unique_fraction=1.0)   # or measured:
    requests = requests_from_ids(plan, [batch_of_rank(r).ids for r in range(W)])
    calls = step_collectives(plan, requests, rank=0, dense_buckets=dense_buckets(model, bucket))
    snapshot(calls)        # == the CommMeter's snapshot of that step on rank 0, key for key
    comm_seconds(calls, world_size=128, links=Links())

Bytes are counted exactly as :class:`~trainer.parallel.comm.CommMeter` counts them (what a rank
sends to OTHER ranks); the collectives of one step of the trainer loop, in call order::

    collective  call                        bytes of rank r (W > 1; W = 1: every call 0 bytes)
    splits      lookup: count exchange      8 (W - 1)
    ids         lookup: ids AlltoAll        id bytes (4, 8 past 2**31 rows a shard) x ids r sends
    rows        lookup: rows AlltoAll       (D + linear) x float bytes x rows r serves to others
    scalar      loss normaliser AllReduce   2 (W - 1) 8 // W   (no call at all for W = 1)
    dense       one AllReduce per bucket    2 (W - 1) x bucket bytes // W  (buckets of
                                            dense_sync.plan_buckets, one presence flag a param)
    grads       gradients back to owners    (D + linear) x float bytes x ids r sends
    metrics     logging counters AllReduce  2 (W - 1) 8 n // W for n float64 counters, once per
                                            ``train.log_every`` steps

``requests[i][j]`` is how many ids rank ``i`` looks up from owner ``j`` in the step (its unique
ids with VSI). Given the real batches (:func:`requests_from_ids`) the prediction is exact: the
tests compare it with the meter at world size 1, 2 and 4 on gloo, and at world size 64 in one
process on PyTorch's fake process group (``tests/trainer/parallel/test_cost_model.py``). Without
data (:func:`expected_requests`) every rank looks up ``unique_fraction`` of its slot occurrences,
spread evenly over the owners of each row-wise table (hashed ids), all to the owner of a
table-wise one: the expectation, not a bound, when popular ids skew the owners' load.

DES (:func:`des_collectives`) replaces ``splits``, ``ids``, ``rows`` and ``grads`` by its header,
request, partial sums and their gradients, counted with the byte model of
:mod:`trainer.parallel.des_plan` but attributed to the rank that sends them (``des_plan`` charges
a step's bytes to the requester; the totals over ranks are the same). Checked against the meter
at world size 2 and 4 like the row exchange.

Memory of rank ``r`` (measured from the tensors by the fake-process-group test for the table,
optimizer and null-mask parts): its table shard (``rows x (D + linear)`` floats), the row-wise
Adagrad state (one float per row and table), the null-row mask (one byte a row), the replicated
dense parameters and their Adam state (two moments). With MixCache the shard, its state and mask
live in host memory and the device holds the cache rows. ``activations`` is an estimate (not
measured): the looked-up rows and their gradients, plus per sample the pooled fields and every
deep layer's output, forward and gradient, once per inner step plus the query pass.

Step time: each collective's bytes go out over NVLink to ranks on the same node and over the
network (RoCE / InfiniBand) to the others; an AlltoAll splits its bytes by the share of
destinations on each (both links run at once: the slower one sets the time); a ring AllReduce
across nodes runs at the network's speed. Plus a fixed latency per call. Defaults (:class:`Links`),
per GPU and direction: NVLink 450 GB/s (H100 SXM: 900 GB/s bidirectional NVLink 4, NVIDIA H100
datasheet), network 50 GB/s (one 400 Gb/s NDR InfiniBand / 400 GbE RoCE NIC per GPU, as in a
DGX H100: ConnectX-7), 8 GPUs per node, 10 us per collective (the order of NCCL's small-message
latency in nccl-tests). Computation and its overlap with communication are not modelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from trainer.parallel import des_plan
from trainer.parallel.dense_sync import plan_buckets
from trainer.parallel.des_plan import RequestCounts
from trainer.parallel.plan import ShardingPlan


@dataclass(frozen=True)
class Collective:
    """One named collective of a step on one rank: ``calls`` calls sending ``bytes`` in all."""

    name: str
    kind: str
    """``all_to_all`` or ``all_reduce`` (how the time model routes its bytes)."""
    calls: int
    bytes: int


@dataclass(frozen=True)
class Links:
    """Link speeds (GB/s = 1e9 bytes/s per GPU and direction) and topology; see the module
    docstring for the defaults' sources."""

    nvlink_gbps: float = 450.0
    net_gbps: float = 50.0
    gpus_per_node: int = 8
    latency_us: float = 10.0

    def __post_init__(self) -> None:
        if min(self.nvlink_gbps, self.net_gbps) <= 0 or self.gpus_per_node < 1:
            raise ValueError(f"link speeds must be > 0 and gpus_per_node >= 1, got {self}")
        if self.latency_us < 0:
            raise ValueError(f"latency_us must be >= 0, got {self.latency_us}")


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds (see the module docstring)."""

    table: int
    optimizer: int
    null_mask: int
    dense: int
    dense_optimizer: int
    cache: int
    activations: int
    host: int
    """With MixCache: the shard, its state and mask in host memory (then not on the device)."""

    @property
    def device(self) -> int:
        """Bytes on the accelerator."""
        rows = 0 if self.host else self.table + self.optimizer + self.null_mask
        return rows + self.dense + self.dense_optimizer + self.cache + self.activations

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "device": self.device}


def requests_from_ids(plan: ShardingPlan, ids_per_rank: Sequence[Tensor]) -> list[list[int]]:
    """``requests[i][j]``: how many of rank ``i``'s lookup ids (``batch.ids``) owner ``j`` holds."""
    if len(ids_per_rank) != plan.world_size:
        raise ValueError(f"need the ids of {plan.world_size} ranks, got {len(ids_per_rank)}")
    out = []
    for ids in ids_per_rank:
        owner, _ = plan.locate(ids.reshape(-1).long())
        out.append(torch.bincount(owner, minlength=plan.world_size).tolist())
    return out


def expected_requests(
    plan: ShardingPlan, layout: object, episodes: int, unique_fraction: float = 1.0
) -> list[list[float]]:
    """Expected ``requests`` when every rank trains on ``episodes`` episodes of ``K + Q`` samples
    and looks up ``unique_fraction`` of its slot occurrences (1.0: no id repeats in a batch, the
    most bytes; VSI makes it smaller on real traffic)."""
    if not 0 < unique_fraction <= 1:
        raise ValueError(f"unique_fraction must be in (0, 1], got {unique_fraction}")
    W = plan.world_size
    samples = episodes * (layout.k_support + layout.q_query)  # type: ignore[attr-defined]
    row = [0.0] * W
    for t, slots in zip(plan.tables, layout.feature_slots, strict=True):  # type: ignore[attr-defined]
        n = samples * slots * unique_fraction
        for j in t.owners:
            row[j] += n * t.rows_per_rank[j] / t.rows
    return [list(row) for _ in range(W)]


def dense_buckets(params: Iterable[nn.Parameter], bucket_bytes: int) -> list[tuple[int, int]]:
    """``(elements, bytes per element)`` of each dense all-reduce bucket (gradients plus one
    presence flag per parameter), as :func:`~trainer.parallel.dense_sync.allreduce_gradients`
    builds them."""
    out = []
    for b in plan_buckets(params, bucket_bytes):
        out.append((sum(p.numel() for p in b) + len(b), b[0].element_size()))
    return out


def step_collectives(
    plan: ShardingPlan,
    requests: Sequence[Sequence[float]],
    rank: int,
    dense: Sequence[tuple[int, int]],
    metric_values: int = 0,
) -> list[Collective]:
    """Rank ``rank``'s collectives of one row-exchange step in call order (module docstring);
    ``dense``: :func:`dense_buckets`; ``metric_values``: float64 counters all-reduced for the
    logs in this step (0: none)."""
    W = plan.world_size
    if W == 1:  # every collective is the identity: one call, 0 bytes; no normaliser call
        names = ["splits", "ids", "rows", "dense", "grads"] + (["metrics"] if metric_values else [])
        return [Collective(n, _kind(n), 1, 0) for n in names]
    send = [float(c) for c in requests[rank]]
    recv = [float(requests[j][rank]) for j in range(W)]
    id_bytes = 4 if max(plan.rows_per_rank) < 2**31 else 8
    row_bytes = (plan.dim + int(plan.linear)) * plan.dtype_bytes
    sent, served = sum(send) - send[rank], sum(recv) - recv[rank]
    out = [
        Collective("splits", "all_to_all", 1, 8 * (W - 1)),
        Collective("ids", "all_to_all", 1, round(id_bytes * sent)),
        Collective("rows", "all_to_all", 1, round(row_bytes * served)),
        Collective("scalar", "all_reduce", 1, _ring(8, W)),
        Collective("dense", "all_reduce", len(dense), sum(_ring(n * e, W) for n, e in dense)),
        Collective("grads", "all_to_all", 1, round(row_bytes * sent)),
    ]
    if metric_values:
        out.append(Collective("metrics", "all_reduce", 1, _ring(8 * metric_values, W)))
    return out


def des_request_counts(
    plan: ShardingPlan, ids: Tensor, inverse: Tensor, rank: int
) -> RequestCounts:
    """What rank ``rank``'s DES request carries for a batch (``batch.ids``, ``batch.inverse``):
    its samples (padding included), slots, unique rows and non-null slots per owner."""
    W, S = plan.world_size, inverse.shape[-1]
    unique = torch.bincount(plan.locate(ids)[0], minlength=W).tolist()
    slot_ids = ids[inverse.reshape(-1)]
    owner = plan.locate(slot_ids[~plan.is_null(slot_ids)])[0]
    owned = torch.bincount(owner, minlength=W).tolist()
    return RequestCounts(inverse.numel() // S, S, unique, owned, rank)


def des_collectives(
    spec: des_plan.DESModel, ops: tuple[str, ...], counts: Sequence[RequestCounts], rank: int,
    elem: int,
) -> list[Collective]:  # fmt: skip
    """Rank ``rank``'s DES collectives of one step for ``ops`` (they replace ``splits``, ``ids``,
    ``rows`` and ``grads``), from every rank's :class:`~des_plan.RequestCounts`: the header,
    its request (``des_plan.request_bytes``), the partial sums (and rows of tables still needed)
    it sends as an owner to each requester, and the gradients of its own partials (and rows) it
    sends back to each owner. Summed over ranks, equal to ``des_plan.candidate_bytes``."""
    W, c = len(counts), counts[rank]
    names = ("des.header", "des.request", "des.forward", "des.backward")
    if W == 1:
        return [Collective(n, "all_to_all", 1, 0) for n in names]
    p = sum(spec.widths(ops).values())
    w = sum(spec.dim if t == "emb" else 1 for t in spec.row_tables(ops))
    forward = sum(p * ci.samples + w * ci.unique[rank] for i, ci in enumerate(counts) if i != rank)
    backward = sum(p * c.samples + w * c.unique[j] for j in range(W) if j != rank)
    sizes = (24 * (W - 1), des_plan.request_bytes(c), elem * forward, elem * backward)
    return [Collective(n, "all_to_all", 1, int(b)) for n, b in zip(names, sizes, strict=True)]


def _ring(nbytes: int, W: int) -> int:
    return 2 * (W - 1) * nbytes // W


def _kind(name: str) -> str:
    return "all_reduce" if name in ("scalar", "dense", "metrics") else "all_to_all"


def snapshot(calls: Sequence[Collective]) -> dict[str, int]:
    """The :meth:`CommMeter.snapshot` these calls produce."""
    out: dict[str, int] = {}
    for c in sorted(calls, key=lambda c: c.name):
        out[f"comm.{c.name}.calls"] = out.get(f"comm.{c.name}.calls", 0) + c.calls
        out[f"comm.{c.name}.bytes"] = out.get(f"comm.{c.name}.bytes", 0) + c.bytes
    out["comm.calls"] = sum(c.calls for c in calls)
    out["comm.bytes"] = sum(c.bytes for c in calls)
    return out


def comm_seconds(c: Collective, world_size: int, links: Links) -> float:
    """Time of ``c`` over ``links`` (module docstring): bandwidth term plus latency per call."""
    W, G = world_size, min(links.gpus_per_node, world_size)
    if W == 1:
        return 0.0
    nv, net = links.nvlink_gbps * 1e9, links.net_gbps * 1e9
    if c.kind == "all_to_all":
        local = (G - 1) / (W - 1)
        wire = max(c.bytes * local / nv, c.bytes * (1 - local) / net)
    else:
        wire = c.bytes / (nv if W <= G else net)
    return wire + c.calls * links.latency_us * 1e-6


def rank_memory(
    plan: ShardingPlan,
    rank: int,
    dense_params: int,
    dense_elem: int,
    activations: int,
) -> RankMemory:
    """Rank ``rank``'s memory (module docstring); ``dense_params``: elements of the replicated
    dense half."""
    rows = plan.rows_per_rank[rank]
    tables = 1 + int(plan.linear)
    table = rows * (plan.dim + int(plan.linear)) * plan.dtype_bytes
    optimizer = rows * tables * plan.dtype_bytes
    spec = plan.cache_spec(rank)
    cache = 0 if spec is None else sum(s.capacity for s in spec.segments) * plan.bytes_per_row()
    return RankMemory(
        table=table,
        optimizer=optimizer,
        null_mask=rows,
        dense=dense_params * dense_elem,
        dense_optimizer=2 * dense_params * dense_elem,
        cache=cache,
        activations=activations,
        host=table + optimizer + rows if spec is not None else 0,
    )


def activation_bytes(
    unique_rows: float, samples: int, fields: int, plan: ShardingPlan, widths: Sequence[int],
    inner_steps: int,
) -> int:  # fmt: skip
    """Estimate of one step's activations (module docstring): looked-up rows and their gradients,
    and per sample the pooled fields and each deep layer's output, forward and gradient, for the
    inner steps and the query pass."""
    e = plan.dtype_bytes
    rows = 2 * unique_rows * (plan.dim + int(plan.linear)) * e
    per_sample = 2 * (fields * plan.dim + sum(widths) + 1) * e
    return round(rows + per_sample * samples * (inner_steps + 1))
