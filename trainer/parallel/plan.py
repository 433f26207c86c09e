"""The sharding plan: which rank owns which embedding rows, as printable data (no processes needed).

    plan = build_sharding_plan(layout, world_size=8, model=ModelConfig(embedding_dim=16))
    print(plan)                    # one line per table: sharding, owners, rows and MiB per rank
    owner, local = plan.locate(ids)

Every feature's table is either

- ``row_wise`` (default): its rows are dealt round-robin over all ranks, local id ``l`` of feature
  ``f`` to rank ``(l + f) mod W`` at local row ``l // W`` of that rank's part of the table. Hashed
  ids put popular values anywhere in a table, so interleaving spreads the hot rows evenly; the
  rotation by ``f`` spreads the null rows (local id 0, in every batch) and the leftover rows of
  tables whose size is not a multiple of ``W`` over the ranks instead of piling them on rank 0;
- ``table_wise``: the whole table lives on one rank (fewer destinations for small tables), chosen
  greedily: largest table first, onto the rank with the fewest bytes so far.

A rank's shard stacks its parts of the tables in feature order. Worked example, ``W = 2``, features
``a`` (5 rows, row-wise) and ``b`` (3 rows, row-wise), global offsets 0 and 5:

    a: l = 0, 2, 4 -> rank 0 rows 0, 1, 2      l = 1, 3 -> rank 1 rows 0, 1
    b: (l + 1) mod 2: l = 1 -> rank 0 row 3    l = 0, 2 -> rank 1 rows 2, 3
    rows per rank: [4, 4]; rank 0 holds global ids [0, 2, 4, 6], rank 1 [1, 3, 5, 7]

Bytes per rank count the weights (``dim`` + 1 when there is a linear table) and the row-wise Adagrad
state (one float per row and table) in the table's dtype.

The plan also carries the per-table MixCache settings (``ParallelConfig.cache``, resolved per table
and rank by :meth:`ShardingPlan.cache_spec`; printed in the ``cache`` column) and the DES mode
(``ParallelConfig.des``, see ``trainer/parallel/des.py``). Neither changes where rows live, so
neither enters the fingerprint: a checkpoint loads with or without a cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from trainer.cache import CacheConfig, CacheSegment, CacheSpec, TableCacheConfig
from trainer.dynamic import DynamicTableConfig
from trainer.models.build import LINEAR_ARCHS, ModelConfig

SHARDING_TYPES = ("row_wise", "table_wise")
DES_MODES = ("off", "on", "auto")


@dataclass(kw_only=True)
class ParallelConfig:
    """Hybrid parallelism: how embedding tables are sharded and how ranks talk. Validated here;
    feature names are checked against the layout when the plan is built."""

    sharding: Literal["row_wise", "table_wise"] = "row_wise"
    """Default sharding of every table: rows dealt over all ranks, or whole tables on one rank."""
    table_wise: tuple[str, ...] = ()
    """Features kept whole on one rank whatever ``sharding`` says (small tables)."""
    dense_bucket_mb: float = 25.0
    """Bucket size of the dense-gradient all-reduce, in MiB."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """``auto``: NCCL on GPUs, gloo on CPU."""
    timeout_s: float = 1800.0
    """How long a collective waits for the other ranks before the job fails."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """MixCache: host-memory rows behind a device cache, per table (``[parallel.cache]``)."""
    des: Literal["off", "on", "auto"] = "off"
    """Distributed equivalent substitution of the LR, FM and first-dense-layer operators: ``on``
    substitutes every operator that applies to the model, ``auto`` only those whose partial
    results cost fewer bytes than the rows they replace (``trainer/parallel/des.py``)."""
    dynamic: tuple[DynamicTableConfig, ...] = ()
    """Dynamic tables (``[[parallel.dynamic]]`` with ``feature = "..."``, ``capacity = ...``;
    ``trainer/dynamic.py``): an id -> row map per feature with admission and eviction, in front
    of rows sharded, cached and checkpointed like the hashed tables'."""

    def __post_init__(self) -> None:
        self.table_wise = tuple(self.table_wise)
        self.dynamic = tuple(self.dynamic)
        if isinstance(self.cache, dict):
            self.cache = CacheConfig(**self.cache)
        if self.des not in DES_MODES:
            raise ValueError(
                f"parallel.des must be one of {', '.join(DES_MODES)}, got {self.des!r}"
            )
        if self.sharding not in SHARDING_TYPES:
            raise ValueError(
                f"parallel.sharding {self.sharding!r} is not one of {', '.join(SHARDING_TYPES)}"
            )
        if not self.dense_bucket_mb > 0 or not self.timeout_s > 0:
            raise ValueError(
                f"parallel.dense_bucket_mb and parallel.timeout_s must be > 0, "
                f"got {self.dense_bucket_mb} and {self.timeout_s}"
            )
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"parallel.backend must be auto, gloo or nccl, got {self.backend!r}")


@dataclass(frozen=True)
class TableShard:
    """Placement of one feature's table."""

    feature: str
    rows: int
    """Rows of the table (its hash buckets, null row included)."""
    global_offset: int
    """First global (stacked) id of the table."""
    sharding: str
    owners: tuple[int, ...]
    """Ranks holding rows of this table."""
    rows_per_rank: tuple[int, ...]
    shard_offsets: tuple[int, ...]
    """First local row of this table in each rank's shard."""
    shift: int
    """Row-wise rotation: local id ``l`` lives on rank ``(l + shift) mod W``."""


@dataclass(frozen=True)
class ShardingPlan:
    """Placement of every table over ``world_size`` ranks (see the module docstring)."""

    world_size: int
    dim: int
    linear: bool
    dtype_bytes: int
    tables: tuple[TableShard, ...] = field(repr=False)
    cache: CacheConfig | None = field(default=None, repr=False, compare=False, hash=False)
    """MixCache settings (not part of the placement nor of the fingerprint)."""
    des: str = field(default="off", compare=False, hash=False)
    """DES mode (not part of the placement nor of the fingerprint)."""

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def rows_per_rank(self) -> tuple[int, ...]:
        return tuple(sum(t.rows_per_rank[r] for t in self.tables) for r in range(self.world_size))

    def bytes_per_row(self) -> int:
        """Weights plus Adagrad state of one row."""
        return (self.dim + 2 * int(self.linear) + 1) * self.dtype_bytes

    @property
    def bytes_per_rank(self) -> tuple[int, ...]:
        return tuple(n * self.bytes_per_row() for n in self.rows_per_rank)

    def _placement(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "dim": self.dim,
            "linear": self.linear,
            "dtype_bytes": self.dtype_bytes,
            "tables": [asdict(t) for t in self.tables],
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON, checkpoint metadata)."""
        out = self._placement()
        if self.cache is not None and self.cache.enabled:
            out["cache"] = asdict(self.cache)
        if self.des != "off":
            out["des"] = self.des
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardingPlan:
        """Inverse of :meth:`to_dict`."""
        tables = tuple(
            TableShard(**{k: tuple(v) if isinstance(v, list) else v for k, v in t.items()})
            for t in data["tables"]
        )
        cache = None
        if "cache" in data:
            c = dict(data["cache"])
            c["tables"] = tuple(TableCacheConfig(**t) for t in c.get("tables", ()))
            cache = CacheConfig(**c)
        return cls(
            world_size=int(data["world_size"]),
            dim=int(data["dim"]),
            linear=bool(data["linear"]),
            dtype_bytes=int(data["dtype_bytes"]),
            tables=tables,
            cache=cache,
            des=str(data.get("des", "off")),
        )

    @cached_property
    def fingerprint(self) -> str:
        """Short hash of the placement (:meth:`to_dict` without cache and DES settings): two
        shards fit together iff their plans' hashes match."""
        body = json.dumps(self._placement(), sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()[:16]

    def cache_spec(self, rank: int) -> CacheSpec | None:
        """Rank ``rank``'s MixCache: one segment per table part it holds (None: no cache).

        Example: ``capacity_fraction = 0.1``, rank 0 holds 6,250 rows of ``user`` (shard rows
        0-6,249) and 2 of ``hour`` (rows 6,250-6,251) -> segments ``user`` rows [0, 6250) with 625
        cache rows and ``hour`` rows [6250, 6252) with 1 cache row.
        """
        cfg = self.cache
        if cfg is None or not cfg.enabled:
            return None
        segments = []
        for t in self.tables:
            rows = t.rows_per_rank[rank]
            if rows:
                _, capacity, policy = cfg.resolve(t.feature, rows)
                start = t.shard_offsets[rank]
                segments.append(CacheSegment(t.feature, start, start + rows, capacity, policy))
        if not segments:
            return None
        mmap = None
        if cfg.mmap_dir:
            name = f"shard-{rank}-of-{self.world_size}-{self.fingerprint}.rows"
            mmap = str(Path(cfg.mmap_dir) / name)
        return CacheSpec(tuple(segments), cfg.prefetch, mmap)

    def _cache_text(self, t: TableShard) -> str:
        cfg = self.cache
        owned = [t.rows_per_rank[r] for r in t.owners]
        cached, cap, policy = cfg.resolve(t.feature, max(owned))  # type: ignore[union-attr]
        if not cached:
            return "off"
        mib = cap * self.bytes_per_row() / 1024.0**2
        return f"{policy} {cap:,} rows ({mib:.2f} MiB)"

    def __str__(self) -> str:
        W, mib = self.world_size, 1024.0**2
        per_rank = [t.rows_per_rank for t in self.tables]
        cached = self.cache is not None and self.cache.enabled
        head = (
            f"sharding plan {self.fingerprint}: {len(self.tables)} tables, {self.total_rows:,} rows "
            f"x dim {self.dim}{' + linear' if self.linear else ''}, {W} rank(s), "
            f"{self.dtype_bytes}-byte floats"
        )
        if cached:
            where = f"mmap files in {self.cache.mmap_dir}" if self.cache.mmap_dir else "host RAM"
            prefetch = "prefetch on" if self.cache.prefetch else "no prefetch"
            head += f"; MixCache: rows in {where}, {prefetch} (cache = device rows per rank)"
        if self.des != "off":
            head += f"; DES {self.des}"
        cols = ["feature", "rows", "sharding", "owners", "rows/rank (min-max)", "MiB/rank (max)"]
        cols += ["cache"] if cached else []
        body = []
        for t, rows in zip(self.tables, per_rank, strict=True):
            owned = [rows[r] for r in t.owners]
            owners = _ranks_text(t.owners)
            body.append([
                t.feature, f"{t.rows:,}", t.sharding, owners,
                f"{min(owned):,}-{max(owned):,}", f"{max(owned) * self.bytes_per_row() / mib:.2f}",
            ] + ([self._cache_text(t)] if cached else []))  # fmt: skip
        rpr, bpr = self.rows_per_rank, self.bytes_per_rank
        body.append([
            "total", f"{self.total_rows:,}", "", _ranks_text(range(W)),
            f"{min(rpr):,}-{max(rpr):,}", f"{max(bpr) / mib:.2f}",
        ] + ([""] if cached else []))  # fmt: skip
        widths = [max(len(str(r[i])) for r in [cols, *body]) for i in range(len(cols))]
        lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
        return "\n".join(line.rstrip() for line in lines)

    # ------------------------------------------------------------------------------ id mapping
    @cached_property
    def _index(self) -> dict[str, Tensor]:
        W = self.world_size
        return {
            "offsets": torch.tensor([t.global_offset for t in self.tables], dtype=torch.int64),
            "table_wise": torch.tensor([t.sharding == "table_wise" for t in self.tables]),
            "owner": torch.tensor([t.owners[0] for t in self.tables], dtype=torch.int64),
            "shift": torch.tensor([t.shift for t in self.tables], dtype=torch.int64),
            # (W * F,): shard_offsets[owner * F + f]
            "shard_offsets": torch.tensor(
                [t.shard_offsets[r] for r in range(W) for t in self.tables], dtype=torch.int64
            ),
        }

    @cached_property
    def _index_by_device(self) -> dict[torch.device, dict[str, Tensor]]:
        return {}

    def _index_on(self, device: torch.device) -> dict[str, Tensor]:
        """The lookup tables on ``device`` (copied there once, not every step)."""
        ix = self._index_by_device.get(device)
        if ix is None:
            ix = self._index_by_device[device] = {k: v.to(device) for k, v in self._index.items()}
        return ix

    def locate(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(owner, local_row)`` of each global id (int64 tensors on ``ids``' device)."""
        ix = self._index_on(ids.device)
        f = torch.searchsorted(ix["offsets"], ids, right=True) - 1
        local_id = ids - ix["offsets"][f]
        tw = ix["table_wise"][f]
        owner = torch.where(tw, ix["owner"][f], (local_id + ix["shift"][f]) % self.world_size)
        within = torch.where(tw, local_id, local_id // self.world_size)
        return owner, ix["shard_offsets"][owner * len(self.tables) + f] + within

    def is_null(self, ids: Tensor) -> Tensor:
        """True for every feature's null/padding row (local id 0)."""
        return torch.isin(ids, self._index_on(ids.device)["offsets"])

    def owned_ids(self, rank: int) -> Tensor:
        """Global ids of ``rank``'s shard in local-row order (``locate(owned_ids(r))[1] == arange``)."""
        W, parts = self.world_size, []
        for t in self.tables:
            if t.sharding == "table_wise":
                if t.owners[0] == rank:
                    parts.append(torch.arange(t.rows, dtype=torch.int64) + t.global_offset)
                continue
            first = (rank - t.shift) % W
            parts.append(torch.arange(first, t.rows, W, dtype=torch.int64) + t.global_offset)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def _ranks_text(ranks: Any) -> str:
    ranks = list(ranks)
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(str(r) for r in ranks)


def build_sharding_plan(
    layout: Any,
    world_size: int,
    model: ModelConfig,
    cfg: ParallelConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> ShardingPlan:
    """Place ``layout``'s tables (``FeatureLayout``: names, buckets, offsets) on ``world_size`` ranks.

    Raises:
        ValueError: ``world_size < 1``, or ``cfg.table_wise`` names a feature the layout lacks.
    """
    cfg = cfg or ParallelConfig()
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    names = list(layout.feature_names)
    unknown = sorted(set(cfg.table_wise) - set(names))
    if unknown:
        raise ValueError(
            f"parallel.table_wise names {unknown}, which are not features of this layout "
            f"(features: {', '.join(names)})"
        )
    W = world_size
    kinds = ["table_wise" if n in cfg.table_wise else cfg.sharding for n in names]
    per_rank: list[list[int]] = []
    for f, (rows, kind) in enumerate(zip(layout.feature_buckets, kinds, strict=True)):
        if kind == "row_wise":
            per_rank.append([_dealt(rows, (r - f) % W, W) for r in range(W)])
        else:
            per_rank.append([0] * W)
    load = [sum(p[r] for p in per_rank) for r in range(W)]
    owners: dict[int, int] = {}
    for f in sorted(range(len(names)), key=lambda f: (-layout.feature_buckets[f], f)):
        if kinds[f] == "table_wise":
            owners[f] = min(range(W), key=lambda r: (load[r], r))
            load[owners[f]] += layout.feature_buckets[f]
            per_rank[f][owners[f]] = layout.feature_buckets[f]
    tables, running = [], [0] * W
    for f, name in enumerate(names):
        offsets = tuple(running)
        running = [a + b for a, b in zip(running, per_rank[f], strict=True)]
        tables.append(
            TableShard(
                feature=name,
                rows=int(layout.feature_buckets[f]),
                global_offset=int(layout.table_offsets[f]),
                sharding=kinds[f],
                owners=(owners[f],)
                if f in owners
                else tuple(r for r in range(W) if per_rank[f][r]),
                rows_per_rank=tuple(per_rank[f]),
                shard_offsets=offsets,
                shift=f % W,
            )
        )
    unknown = sorted({t.feature for t in cfg.cache.tables} - set(names))
    if unknown:
        raise ValueError(
            f"parallel.cache.tables names {unknown}, which are not features of this layout "
            f"(features: {', '.join(names)})"
        )
    return ShardingPlan(
        world_size=W,
        dim=model.embedding_dim,
        linear=model.arch in LINEAR_ARCHS,
        dtype_bytes=torch.empty((), dtype=dtype).element_size(),
        tables=tuple(tables),
        cache=cfg.cache if cfg.cache.enabled else None,
        des=cfg.des,
    )


def _dealt(rows: int, first: int, world_size: int) -> int:
    """How many of ``first, first + W, first + 2W, ...`` are below ``rows``."""
    return 0 if first >= rows else (rows - first + world_size - 1) // world_size
