"""Dynamic embedding tables: an id -> row map per table, with admission and eviction, behind the
embedding interface (:class:`~trainer.sparse.EmbeddingCollection`).

A hashed table gives every id the row ``1 + pmod(hash, buckets - 1)``: two ids that land on one
row train one vector. A dynamic feature is hashed by the ETL into a LARGE id space (its
``buckets`` in the feature spec, e.g. ``2**62 + 1``, collision-free in practice: XXH64 values
reduced to 62 bits) and the trainer maps each id to a row of a small physical table::

    physical rows of a dynamic feature = 1 null row + fallback_rows + capacity
    id 0 (padding)           -> the null row (zero, never updated)
    admitted id              -> its own row (one row per admitted id: no collision among them)
    id not (yet) admitted    -> fallback row 1 + (id mod fallback_rows): shared, hashed

The map (:class:`IdMap`) is exact: a row holds one id at a time and an id holds one row, so
admitted ids never collide, whatever the id space. Per training step, for the ids seen:

* admission: an id gets a row once it has been seen ``admit_count`` times (counted in a
  count-min sketch of fixed size whose counters are halved every ``10 x width`` additions, as
  TinyLFU ages its counts, so memory stays bounded however many ids pass and old counts fade; an
  over-estimate only admits an id early), and, with ``admit_probability < 1``, when a hash of
  (id, step) falls under that probability (deterministic: the same wherever it is decided);
* eviction when the table is full: ``lru`` (least recently seen), ``lfu`` (fewest occurrences),
  ``ttl`` (rows unseen for more than ``ttl_steps`` steps are freed; a full table then admits
  nothing). A row used in this step or the previous one is never taken (the previous step's
  gradients may still be pending when the next batch is mapped ahead for a prefetch);
* a newly admitted id's row starts afresh: ``emb`` = :func:`id_normal` of the id (a function of
  the id and the seed, the same at any world size), ``linear`` 0, Adagrad state 0.

Sharded by id. Each table's map is split into ``S`` id shards, ``S`` = the world size (one process:
``id_shards``, default 1): id ``x`` belongs to shard ``x mod S`` (dynamic ids are hash values, so
this spreads them evenly), and shard ``s`` owns the slots of :func:`shard_slots`, every ``S``-th
slot, dealt like the rows of a row-wise plan (``capacity`` is split round-robin: ``ceil`` or
``floor(capacity / S)`` slots per shard), so that an id's row lives on its owner's rank with its
Adagrad state. Each shard keeps the keys, LRU/LFU/TTL clocks and admission sketch (``sketch_width``
counters per row, per shard) of its own ids and decides alone: a full shard evicts among its own
slots, so with ``S > 1`` an id may fall back while another shard has room (the price of deciding
without a collective over every id). Per training step, with several ranks:
each rank sends its dynamic ids and their counts to their owners (``exchange_counts`` + AlltoAll,
uneven splits), the owner sums the counts of an id sent by several ranks, admits/evicts, resets the
rows it admitted and sends the slots back (AlltoAll); the sharded lookup then runs on rows. No rank
holds another's ids. Oracle: one process with ``id_shards = S`` makes exactly the decisions of
``S`` ranks whose batches it trains the union of (distributed = single process); with admission 0
and every shard's capacity >= the ids it sees, the table trains exactly as the exact table.

:class:`DynamicEmbeddingCollection` wraps the collection of the PHYSICAL layout
(:func:`physical_layout`: plain, or sharded with MixCache/DES at any world size): it translates
each batch's ids into physical rows and hands the translated batch on, so the rows and their
optimizer state are sharded, cached, checkpointed and resharded like a hashed table's. The
checkpoint holds a GLOBAL description of the maps (id per global slot, clocks, the sketches per
id shard; every rank saves all of it), so a run resumes at another world size: loading it with
another number of id shards moves each admitted id, with its table row, Adagrad state, counts and
recency, to a slot of its new owner (:meth:`DynamicEmbeddingCollection.load_state_dict`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from trainer.sparse import Batch, Pooling, SparseOut

EVICTIONS = ("lru", "lfu", "ttl")
SKETCH_DEPTH = 4
STATE_PREFIX = "dynamic."
COUNTERS = ("admissions", "evictions", "expirations", "fallback_ids")
"""Per-step counters of :meth:`DynamicEmbeddingCollection.cache_stats` (``dynamic.*``)."""
MAP_TENSORS = ("keys", "last_seen", "freq", "sketch", "sketch_adds")
"""An :class:`IdMap`'s state."""
MOVED_ROW_KEYS = ("emb.weight", "linear.weight", "emb.adagrad_sum", "linear.adagrad_sum")
"""The per-row entries of a full table that move with an id when its slot changes."""


@dataclass(kw_only=True, slots=True)
class DynamicTableConfig:
    """One feature's dynamic table (``[[parallel.dynamic]]`` in the trainer config)."""

    feature: str
    """The feature (its ``buckets`` in the feature spec is the id space, e.g. ``2**62 + 1``)."""
    capacity: int
    """Exact rows: at most this many ids hold their own row at a time."""
    fallback_rows: int = 1
    """Shared rows for ids not admitted (hashed: ``id mod fallback_rows``)."""
    admit_count: int = 0
    """Occurrences before an id gets its own row (0 or 1: at first sight)."""
    admit_probability: float = 1.0
    """Also admit only when a hash of (id, step) falls under this probability."""
    eviction: Literal["lru", "lfu", "ttl"] = "lru"
    """Which row to free when the table is full (see the module docstring)."""
    ttl_steps: int = 0
    """``ttl``: free rows unseen for more than this many steps (>= 1)."""
    sketch_width: int = 0
    """Counters per row of each id shard's admission count-min sketch (4 rows of int32; used
    when admit_count > 1). 0: ``max(1024, ceil(capacity / id shards))``."""

    def __post_init__(self) -> None:
        where = f"parallel.dynamic[{self.feature!r}]"
        if self.capacity < 1 or self.fallback_rows < 1:
            raise ValueError(
                f"{where}: capacity and fallback_rows must be >= 1, "
                f"got {self.capacity} and {self.fallback_rows}"
            )
        if self.admit_count < 0 or not 0.0 < self.admit_probability <= 1.0:
            raise ValueError(
                f"{where}: need admit_count >= 0 and 0 < admit_probability <= 1, "
                f"got {self.admit_count} and {self.admit_probability}"
            )
        if self.eviction not in EVICTIONS:
            raise ValueError(f"{where}: eviction must be one of {EVICTIONS}, got {self.eviction!r}")
        if (self.eviction == "ttl") != (self.ttl_steps > 0) or self.ttl_steps < 0:
            raise ValueError(
                f"{where}: ttl_steps must be >= 1 with eviction = 'ttl' and 0 otherwise, "
                f"got {self.ttl_steps} with {self.eviction!r}"
            )
        if self.sketch_width < 0:
            raise ValueError(f"{where}: sketch_width must be >= 0, got {self.sketch_width}")

    @property
    def physical_rows(self) -> int:
        return 1 + self.fallback_rows + self.capacity


# ---------------------------------------------------------------------------------------------
# Hashing: deterministic, vectorised, the same on every rank


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 ARRAY (numpy array arithmetic wraps mod 2**64 without
    a warning; never pass a scalar)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _u64(values: Tensor | int) -> np.ndarray:
    arr = values.cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    return arr.astype(np.int64).view(np.uint64)


@functools.lru_cache(maxsize=256)
def _salt(*salts: int) -> np.uint64:
    """One 64-bit key from ``salts`` (SplitMix64 over Python ints)."""
    key = 0
    for s in salts:
        key = int(_mix64(np.array([(key ^ s) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0])
    return np.uint64(key)


def _hash(ids: Tensor | np.ndarray, *salts: int) -> np.ndarray:
    """A uint64 hash of each id and the ``salts``."""
    arr = ids if isinstance(ids, np.ndarray) else _u64(ids)
    return _mix64(_mix64(arr ^ _salt(*salts)))


def _unit(h: np.ndarray) -> np.ndarray:
    """Uniform in (0, 1] from a uint64 hash (53 bits)."""
    return ((h >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53


def id_normal(ids: Tensor, dim: int, std: float, seed: int, dtype: torch.dtype) -> Tensor:
    """The initial ``emb`` row of each id, ``(n, dim)`` ~ normal(0, ``std``): a function of the id
    and ``seed`` only (Box-Muller on counter-based hashes), the same wherever it is computed."""
    n = ids.numel()
    if n == 0:
        return torch.zeros(0, dim, dtype=dtype)
    base = _hash(ids.reshape(-1), seed, 0x1D)[:, None]
    even, odd = _columns(dim)
    u1 = _unit(_mix64(base ^ even))
    u2 = _unit(_mix64(base ^ odd))
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
    return torch.from_numpy(z * std).to(dtype)


@functools.lru_cache(maxsize=8)
def _columns(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-column keys of :func:`id_normal`: ``mix64(2j)`` and ``mix64(2j + 1)``, ``(1, dim)``."""
    j = np.arange(dim, dtype=np.uint64)[None, :]
    return _mix64(2 * j), _mix64(2 * j + np.uint64(1))


# ---------------------------------------------------------------------------------------------
# The id -> row map of one table


def shard_slots(capacity: int, shard: int, shards: int, base: int) -> Tensor:
    """The global slots (ascending) of id shard ``shard`` of ``shards``: the slots ``j`` with
    ``(base + j) mod shards == shard``. ``base`` is the first slot's local row in its physical
    table plus the feature's index, so that these are the rows a row-wise plan over ``shards``
    ranks places on rank ``shard`` (``trainer.parallel.plan``: local row ``l`` of feature ``f`` on
    rank ``(l + f) mod W``); the capacity is dealt round-robin, ``ceil`` or ``floor(C / shards)``
    slots per shard."""
    return torch.arange((shard - base) % shards, capacity, shards, dtype=torch.int64)


class IdMap:
    """Which id holds which slot of id shard ``shard`` of ``shards`` (the ids with
    ``id mod shards == shard``, the slots of :func:`shard_slots`), with admission and eviction
    (module docstring). One shard (the default) is the whole table.

    State (tensors, per local slot): ``keys`` (id per slot, -1 free), ``last_seen`` (step),
    ``freq`` (occurrences while admitted), ``sketch`` (admission counts). :meth:`find` and
    :meth:`assign` speak GLOBAL slots (``self.slots[local]``).
    """

    def __init__(
        self, cfg: DynamicTableConfig, seed: int, shard: int = 0, shards: int = 1, base: int = 0
    ) -> None:
        self.cfg, self.seed = cfg, seed
        self.slots = shard_slots(cfg.capacity, shard, shards, base)
        c = self.slots.numel()
        self.keys = torch.full((c,), -1, dtype=torch.int64)
        self.last_seen = torch.full((c,), -1, dtype=torch.int64)
        self.freq = torch.zeros(c, dtype=torch.int64)
        width = cfg.sketch_width or max(1024, -(-cfg.capacity // shards))
        width = width if cfg.admit_count > 1 else 0
        self.sketch = torch.zeros(SKETCH_DEPTH, width, dtype=torch.int32)
        self.sketch_adds = torch.zeros((), dtype=torch.int64)
        """Occurrences added since the last halving."""
        salts = np.array([_salt(d) for d in range(SKETCH_DEPTH)], dtype=np.uint64)[:, None]
        rows = np.arange(SKETCH_DEPTH, dtype=np.uint64)[:, None] * np.uint64(max(width, 1))
        self._sketch_keys = (salts, np.uint64(max(width, 1)), rows)
        """Per sketch row: its salt, the width and the row's first cell in the flat sketch."""
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._reindex()

    def _reindex(self) -> None:
        used = (self.keys >= 0).nonzero().squeeze(1)
        keys, order = torch.sort(self.keys.index_select(0, used))
        self._sorted_keys, self._sorted_slots = keys, used.index_select(0, order)

    @property
    def used(self) -> int:
        return int(self._sorted_keys.numel())

    def _global(self, local: Tensor) -> Tensor:
        if self.slots.numel() == 0:
            return local
        return torch.where(local >= 0, self.slots.index_select(0, local.clamp(min=0)), -1)

    def _find_local(self, ids: Tensor) -> Tensor:
        keys = self._sorted_keys
        if keys.numel() == 0:
            return torch.full_like(ids, -1)
        pos = torch.searchsorted(keys, ids).clamp_(max=keys.numel() - 1)
        hit = keys.index_select(0, pos) == ids
        return torch.where(hit, self._sorted_slots.index_select(0, pos), -1)

    def find(self, ids: Tensor) -> Tensor:
        """The global slot of each id, -1 where it holds none."""
        return self._global(self._find_local(ids))

    def assign(self, ids: Tensor, counts: Tensor, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """One training step's unique ``ids`` (sorted, > 0, of this shard) seen ``counts`` times:
        admit, evict, record use. Returns each id's global slot (-1: not admitted) and the newly
        admitted ``(global slots, ids)`` whose rows must start afresh."""
        cfg = self.cfg
        if cfg.eviction == "ttl":
            stale = (self.keys >= 0) & (self.last_seen < step - cfg.ttl_steps)
            if bool(stale.any()):
                self.counts["expirations"] += int(stale.sum())
                self.keys[stale] = -1
                self._reindex()
        slots = self._find_local(ids)
        hit = slots >= 0
        held = slots[hit]
        self.last_seen.index_fill_(0, held, step)
        self.freq.index_add_(0, held, counts[hit])
        miss = (~hit).nonzero().squeeze(1)
        admit = miss[self._admissible(ids[miss], counts[miss], step)]
        new_slots = torch.zeros(0, dtype=torch.int64)
        if admit.numel():
            # Most frequent first, then the smaller id: the same order wherever it is decided.
            order = torch.argsort(ids[admit], stable=True)
            order = order[torch.argsort(-counts[admit][order], stable=True)]
            admit = admit[order]
            room = self._free_slots(step)[: admit.numel()]
            admit = admit[: room.numel()]
            evicted = room[self.keys[room] >= 0]
            self.counts["evictions"] += int(evicted.numel())
            self.counts["admissions"] += int(admit.numel())
            self.keys[room] = ids[admit]
            self.last_seen[room] = step
            self.freq[room] = counts[admit]
            slots[admit] = room
            new_slots = room
            self._reindex()
        self.counts["fallback_ids"] += int((slots < 0).sum())
        return self._global(slots), self._global(new_slots), ids[admit]

    def _admissible(self, ids: Tensor, counts: Tensor, step: int) -> Tensor:
        cfg = self.cfg
        ok = torch.ones(ids.numel(), dtype=torch.bool)
        if cfg.admit_count > 1 and ids.numel():
            width = self.sketch.shape[1]
            salts, w, first = self._sketch_keys
            # The (depth, n) cells of the flattened sketch: one scatter, one gather.
            col = _mix64(_hash(ids, self.seed)[None, :] ^ salts) % w + first
            cell = torch.from_numpy(col.view(np.int64)).reshape(-1)
            flat = self.sketch.view(-1)
            flat.index_add_(0, cell, counts.to(torch.int32).repeat(SKETCH_DEPTH))
            seen = flat.index_select(0, cell).view(SKETCH_DEPTH, -1)
            ok &= seen.min(0).values >= cfg.admit_count
            self.sketch_adds += counts.sum()
            if int(self.sketch_adds) >= 10 * width:  # age: old counts fade
                self.sketch.bitwise_right_shift_(1)
                self.sketch_adds //= 2
        if cfg.admit_probability < 1.0 and ids.numel():
            u = torch.from_numpy(_unit(_hash(ids, self.seed, step, 0xAD)))
            ok &= u <= cfg.admit_probability
        return ok

    def _free_slots(self, step: int) -> Tensor:
        """Free slots (ascending), then the evictable ones in policy order (none for ``ttl``)."""
        free = (self.keys < 0).nonzero().squeeze(1)
        if self.cfg.eviction == "ttl":
            return free
        taken = ((self.keys >= 0) & (self.last_seen < step - 1)).nonzero().squeeze(1)
        order = torch.argsort(self.last_seen[taken], stable=True)  # ties: the lower slot
        if self.cfg.eviction == "lfu":
            order = order[torch.argsort(self.freq[taken][order], stable=True)]
        return torch.cat([free, taken[order]])


# ---------------------------------------------------------------------------------------------
# The layout the rows live in


def physical_layout(layout: Any, tables: Sequence[DynamicTableConfig]) -> Any:
    """``layout`` (a ``FeatureLayout``) with every dynamic feature's table resized to its
    physical rows (null + fallback + capacity): the layout the row collection is built over.

    Raises:
        ValueError: a table names a feature the layout lacks, or twice.
    """
    names = list(layout.feature_names)
    by_name = {t.feature: t for t in tables}
    unknown = sorted(set(by_name) - set(names))
    if unknown or len(by_name) != len(tables):
        raise ValueError(
            f"parallel.dynamic names {unknown or 'a feature twice'}: each entry must name a "
            f"different feature of this layout (features: {', '.join(names)})"
        )
    buckets = [
        by_name[n].physical_rows if n in by_name else b
        for n, b in zip(names, layout.feature_buckets, strict=True)
    ]
    offsets = np.cumsum([0, *buckets])[:-1].tolist()
    return dataclasses.replace(
        layout,
        feature_buckets=tuple(int(b) for b in buckets),
        table_offsets=tuple(int(o) for o in offsets),
        total_rows=int(sum(buckets)),
        slot_offsets=torch.tensor(offsets, dtype=torch.int64)[layout.slot_feature],
    )


@dataclass
class MappedBatch:
    """A batch in the physical row space: what the wrapped collection looks up."""

    ids: Tensor
    inverse: Tensor


# ---------------------------------------------------------------------------------------------
# The collection


class DynamicEmbeddingCollection:
    """Dynamic tables in front of a row collection over :func:`physical_layout` (module docstring).

    Args:
        inner: the collection of the physical layout (plain or sharded, any cache or DES).
        layout: the logical layout (the ids the batches carry).
        tables: the dynamic features.
        init_std, seed: how an admitted id's row starts (:func:`id_normal`).
        comm: the ranks' collectives when sharded (``inner.comm``); None: one process.
        id_shards: one process only: split each map into this many id shards, as that many ranks
            do (the distributed oracle); with ``comm`` the id shards are the ranks.
    """

    def __init__(
        self,
        inner: Any,
        layout: Any,
        tables: Sequence[DynamicTableConfig],
        *,
        init_std: float,
        seed: int,
        comm: Any | None = None,
        id_shards: int = 1,
    ) -> None:
        phys = physical_layout(layout, tables)
        if inner.total_rows != phys.total_rows:
            raise ValueError(
                f"the row collection has {inner.total_rows} rows, the dynamic tables' physical "
                f"layout {phys.total_rows}: build it over trainer.dynamic.physical_layout(...)"
            )
        if comm is not None and id_shards not in (1, comm.world_size):
            raise ValueError(
                f"id_shards={id_shards} with {comm.world_size} ranks: sharded, the id shards are "
                "the ranks (leave id_shards at 1)"
            )
        self.inner, self.comm = inner, comm
        self.init_std, self.seed = init_std, seed
        self.total_rows = layout.total_rows
        self.names = tuple(layout.feature_names)
        self._offsets = torch.tensor(layout.table_offsets, dtype=torch.int64)
        self._phys_offsets = torch.tensor(phys.table_offsets, dtype=torch.int64)
        self.shards = comm.world_size if comm is not None else id_shards
        held = [comm.rank] if comm is not None else list(range(self.shards))
        self.maps: dict[int, dict[int, IdMap]] = {}
        """Feature index -> {id shard: its map}: every shard in one process, this rank's when
        sharded."""
        self.cfgs: dict[int, DynamicTableConfig] = {}
        for t in tables:
            fi = self.names.index(t.feature)
            self.cfgs[fi] = t
            base = 1 + t.fallback_rows + fi
            self.maps[fi] = {
                s: IdMap(t, seed + 7919 * fi, s, self.shards, base) for s in held
            }  # fmt: skip
        if comm is not None:
            self._check_placement()
        self._fallback = torch.zeros(len(self.names), dtype=torch.int64)
        """Fallback rows per feature (0: not dynamic)."""
        for fi, t in self.cfgs.items():
            self._fallback[fi] = t.fallback_rows
        self.step = 0
        """Training translations so far (the maps' clock)."""
        self._pending: tuple[Tensor, MappedBatch, tuple[Tensor, Tensor]] | None = None
        self._before_pending: tuple[int, dict[tuple[int, int], dict[str, Tensor]]] | None = None

    def _check_placement(self) -> None:
        """Id shard ``s``'s slots must be rows the row collection's plan places on rank ``s``
        (checked for every shard, so that every rank refuses the same plan)."""
        plan = self.inner.plan
        for fi, cfg in self.cfgs.items():
            slots = torch.arange(cfg.capacity)
            shard = (1 + cfg.fallback_rows + fi + slots) % self.shards
            if not torch.equal(plan.locate(self._slot_rows(fi, slots))[0].cpu(), shard):
                raise ValueError(
                    f"dynamic table {self.names[fi]!r}: its rows must be sharded row_wise "
                    "(the id map is sharded by id over the ranks, each rank holding the rows "
                    "of its ids); remove it from parallel.table_wise"
                )

    def _slot_rows(self, fi: int, slots: Tensor) -> Tensor:
        """Global physical rows of feature ``fi``'s (global) ``slots``."""
        return int(self._phys_offsets[fi]) + 1 + self.cfgs[fi].fallback_rows + slots

    # ------------------------------------------------------------------ delegated attributes
    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def pooling(self) -> Pooling:
        return self.inner.pooling

    @property
    def has_linear(self) -> bool:
        return self.inner.has_linear

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.inner.to(device, dtype)
        return self

    def is_null(self, ids: Tensor) -> Tensor:
        """Padding ids (local id 0 of every feature) of the LOGICAL id space."""
        return torch.isin(ids, self._offsets.to(ids.device))

    def close(self) -> None:
        self.inner.close()

    def rows_used(self) -> int:
        """Slots held now by the maps of this process (this rank's id shards when sharded)."""
        return sum(m.used for shards in self.maps.values() for m in shards.values())

    # --------------------------------------------------------------------------- the step
    def lookup(self, batch: Batch) -> SparseOut:
        """Translate (admitting and evicting; unless :meth:`prefetch` did) and look up."""
        ids = batch.ids.cpu()
        if self._pending is not None:
            pending_ids, mapped, fresh = self._pending
            self._pending = self._before_pending = None
            if not torch.equal(pending_ids, ids):
                raise ValueError(
                    "lookup ids differ from the ids passed to prefetch: prefetch exactly the "
                    "next batch"
                )
        else:
            mapped, fresh = self._translate(batch, train=True)
        if fresh[0].numel():
            self.inner.reset_rows(*fresh)
        return self.inner.lookup(mapped)

    def prefetch(self, batch: Batch) -> None:
        """Translate the next batch now (its admissions decided; a collective when sharded) and
        let the row collection stage its rows; the admitted ids' rows restart at that batch's
        :meth:`lookup`, after this step's gradients are applied."""
        if self._pending is not None:
            raise ValueError("prefetch called twice without a lookup in between")
        before = (self.step, self._held_state())
        mapped, fresh = self._translate(batch, train=True)
        self._pending, self._before_pending = (batch.ids.cpu(), mapped, fresh), before
        self.inner.prefetch(mapped)

    @torch.no_grad()
    def read(self, batch: Batch) -> SparseOut:
        """Evaluation: admitted ids read their rows, the others their fallback row; the maps do
        not change (a collective when sharded: the owners find the ids)."""
        if self._pending is not None:
            raise ValueError("read between prefetch and its lookup: prefetch no batch before it")
        return self.inner.read(self._translate(batch, train=False)[0])

    def apply_gradients(self, lr: float) -> None:
        self.inner.apply_gradients(lr)

    def _translate(self, batch: Batch, train: bool) -> tuple[MappedBatch, tuple[Tensor, Tensor]]:
        """The batch in physical rows, and the rows that restart (global rows, their ``emb``)."""
        ids = batch.ids.cpu()
        f = torch.searchsorted(self._offsets, ids, right=True) - 1
        local = ids - self._offsets.index_select(0, f)
        phys = self._phys_offsets.index_select(0, f) + local
        sel = (self._fallback.index_select(0, f) > 0).logical_and_(local > 0).nonzero().squeeze(1)
        f_sel, l_sel = f.index_select(0, sel), local.index_select(0, sel)
        counts = torch.zeros(0, dtype=torch.int64)
        if train:
            counts = torch.bincount(batch.inverse.reshape(-1).cpu(), minlength=ids.numel())
            counts = counts.index_select(0, sel)
        slots, fresh = self._owner_slots(f_sel, l_sel, counts, train)
        if train:
            self.step += 1
        fb = self._fallback.index_select(0, f_sel)
        row = torch.where(slots >= 0, 1 + fb + slots, 1 + l_sel % fb)
        phys[sel] = self._phys_offsets.index_select(0, f_sel) + row
        new_ids, remap = torch.unique(phys, return_inverse=True)
        inverse = remap.to(batch.inverse.device).index_select(0, batch.inverse.reshape(-1))
        mapped = MappedBatch(new_ids.to(batch.ids.device), inverse.view(batch.inverse.shape))
        return mapped, fresh

    def _owner_slots(
        self, feature: Tensor, local: Tensor, counts: Tensor, train: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Each dynamic id's global slot (-1: fallback), decided by its owner (id shard
        ``local mod shards``), and the rows that restart. Sharded: the ids (with their counts)
        go to their owners and the slots come back (``exchange_counts`` + two AlltoAlls)."""
        if not train:
            counts = torch.zeros_like(local)
        if self.comm is None or not self.comm.distributed:
            return self._decide(feature, local, counts, train, unique=False)
        comm, dev = self.comm, self.device
        owner = local % self.shards
        order = torch.argsort(owner, stable=True)
        send_t = torch.bincount(owner, minlength=self.shards)
        recv = comm.exchange_counts(send_t, "dynamic.splits").tolist()
        send = send_t.tolist()
        msg = torch.stack([feature, local, counts], 1).index_select(0, order)
        got = comm.all_to_all(msg.to(dev), send, recv, "dynamic.ids").cpu()
        slots, fresh = self._decide(*got.unbind(1), train, unique=True)
        back = comm.all_to_all(slots.to(dev), recv, send, "dynamic.slots").cpu()
        out = torch.empty_like(back)
        out[order] = back
        return out, fresh

    def _decide(
        self, feature: Tensor, local: Tensor, counts: Tensor, train: bool, unique: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The owner's side: ids ``(feature, local id, count)`` of the id shards held here
        (``unique``: ids may repeat, from several ranks, and their counts are summed; else they
        are one batch's: sorted and unique); admit and evict (``train``) or only find. Returns
        each id's global slot and the rows that restart (all of them on this rank), with their
        initial ``emb``."""
        out = torch.full_like(local, -1)
        fresh_rows, fresh_ids = [], []
        for fi, shards in self.maps.items():
            if unique:
                in_table = (feature == fi).nonzero().squeeze(1)
            else:  # sorted ids: a feature's are contiguous
                lo, hi = torch.searchsorted(feature, torch.tensor([fi, fi + 1])).tolist()
                in_table = torch.arange(lo, hi)
            for s, m in shards.items():
                here = in_table
                if self.shards > 1:
                    here = here[local.index_select(0, here) % self.shards == s]
                if here.numel() == 0 and not train:
                    continue
                ids, n = local.index_select(0, here), counts.index_select(0, here)
                inv = None
                if unique:
                    ids, inv = torch.unique(ids, return_inverse=True)
                    n = torch.zeros_like(ids).index_add_(0, inv, n)
                if train:
                    slots, new_slots, new_ids = m.assign(ids, n, self.step)
                    fresh_rows.append(self._slot_rows(fi, new_slots))
                    fresh_ids.append(new_ids + self._offsets[fi])
                else:
                    slots = m.find(ids)
                out[here] = slots if inv is None else slots.index_select(0, inv)
        rows = torch.cat(fresh_rows) if fresh_rows else torch.zeros(0, dtype=torch.int64)
        gids = torch.cat(fresh_ids) if fresh_ids else rows
        emb = id_normal(gids, self.dim, self.init_std, self.seed, self.dtype)
        return out, (rows.to(self.device), emb.to(self.device))

    # ----------------------------------------------------------------------------- state
    def _held_state(self) -> dict[tuple[int, int], dict[str, Tensor]]:
        """A copy of the held maps' state, per (feature, id shard)."""
        return {
            (fi, s): {name: getattr(m, name).clone() for name in MAP_TENSORS}
            for fi, shards in self.maps.items()
            for s, m in shards.items()
        }

    def _global_state(self, held: dict[tuple[int, int], dict[str, Tensor]]) -> dict[str, Tensor]:
        """The GLOBAL description of the maps (every id shard's, gathered when sharded; a
        collective), independent of the world size but for ``id_shards``::

            dynamic.<feature>.keys, .last_seen, .freq   (capacity,) per global slot (-1 free)
            dynamic.<feature>.sketch                    (id_shards, 4, width) int32
            dynamic.<feature>.sketch_adds               (id_shards,) int64
            dynamic.id_shards                           how many id shards saved it
        """
        out: dict[str, Tensor] = {}
        S = self.shards
        for fi, cfg in self.cfgs.items():
            prefix = f"{STATE_PREFIX}{self.names[fi]}."
            base = 1 + cfg.fallback_rows + fi
            mine = {s: held[(fi, s)] for s in self.maps[fi]}
            if self.comm is not None and self.comm.distributed:
                (s,) = mine
                st = mine[s]
                per_slot = torch.stack([st["keys"], st["last_seen"], st["freq"]], 1)
                sketch = torch.cat([st["sketch"].reshape(-1).long(), st["sketch_adds"].view(1)])
                dev = self.device
                slot_parts = self.comm.all_gather_rows(per_slot.to(dev), "dynamic.state")
                sketch_parts = self.comm.all_gather_rows(sketch[None].to(dev), "dynamic.state")
                depth_width = st["sketch"].shape
                mine = {}
                for r in range(S):
                    a, b = slot_parts[r].cpu(), sketch_parts[r].cpu()[0]
                    mine[r] = {
                        "keys": a[:, 0], "last_seen": a[:, 1], "freq": a[:, 2],
                        "sketch": b[:-1].to(torch.int32).view(depth_width), "sketch_adds": b[-1],
                    }  # fmt: skip
            keys = torch.full((cfg.capacity,), -1, dtype=torch.int64)
            last_seen = torch.full((cfg.capacity,), -1, dtype=torch.int64)
            freq = torch.zeros(cfg.capacity, dtype=torch.int64)
            for s in range(S):
                slots = shard_slots(cfg.capacity, s, S, base)
                keys[slots], last_seen[slots] = mine[s]["keys"], mine[s]["last_seen"]
                freq[slots] = mine[s]["freq"]
            out[f"{prefix}keys"], out[f"{prefix}last_seen"], out[f"{prefix}freq"] = (
                keys, last_seen, freq,
            )  # fmt: skip
            out[f"{prefix}sketch"] = torch.stack([mine[s]["sketch"] for s in range(S)])
            out[f"{prefix}sketch_adds"] = torch.stack([mine[s]["sketch_adds"] for s in range(S)])
        out[f"{STATE_PREFIX}id_shards"] = torch.tensor(S, dtype=torch.int64)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The row collection's state plus the maps' GLOBAL description (``dynamic.*``, see
        :meth:`_global_state`; a collective when sharded: every rank saves every map). Between a
        prefetch and its lookup the maps are saved as they were before the prefetch: a resumed
        run maps that batch again and makes the same decisions."""
        step, held = self._before_pending or (self.step, self._held_state())
        return {
            **self.inner.state_dict(),
            **self._global_state(held),
            f"{STATE_PREFIX}step": torch.tensor(step, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the row part as the row collection loads it: a
        shard, or a full table). Saved with another number of id shards (another world size),
        each admitted id moves to its new owner's block (:meth:`_relayout`): that needs the FULL
        table (``trainer.parallel.reshard.merge_shards`` of the saved shards).

        Raises:
            ValueError: no maps in ``state``, another capacity, or a shard of another id layout.
        """
        if f"{STATE_PREFIX}step" not in state:
            raise ValueError(
                "this embedding state has no dynamic-table maps (dynamic.*): it was saved by a "
                "run without parallel.dynamic, whose hashed rows cannot be mapped to ids"
            )
        saved = int(state.get(f"{STATE_PREFIX}id_shards", 1))
        rows = {k: v for k, v in state.items() if not k.startswith(STATE_PREFIX)}
        maps = {k: v for k, v in state.items() if k.startswith(STATE_PREFIX)}
        if saved != self.shards:
            if "sharding.plan" in state:
                raise ValueError(
                    f"this dynamic-table state was saved by {saved} id shards (ranks), this run "
                    f"has {self.shards}: load the merged full table "
                    "(trainer.parallel.reshard.merge_shards of every rank's state), from which "
                    "each id's row moves to its new owner's rows"
                )
            maps, rows = self._relayout(saved, maps, rows)
        for fi, cfg in self.cfgs.items():
            prefix = f"{STATE_PREFIX}{self.names[fi]}."
            keys = maps[f"{prefix}keys"]
            if tuple(keys.shape) != (cfg.capacity,):
                raise ValueError(
                    f"dynamic table state {prefix}keys has shape {tuple(keys.shape)}, this table "
                    f"({cfg.capacity},): capacity differs from the run that saved it"
                )
            sketch = maps[f"{prefix}sketch"]
            sketch = sketch if sketch.dim() == 3 else sketch[None]  # saved by one process
            adds = maps[f"{prefix}sketch_adds"].reshape(-1)
            for s, m in self.maps[fi].items():
                m.keys.copy_(keys[m.slots])
                m.last_seen.copy_(maps[f"{prefix}last_seen"][m.slots])
                m.freq.copy_(maps[f"{prefix}freq"][m.slots])
                if tuple(sketch.shape[1:]) == tuple(m.sketch.shape):
                    m.sketch.copy_(sketch[s])
                    m.sketch_adds.copy_(adds[s])
                else:  # another sketch_width: admission counts restart
                    m.sketch.zero_()
                    m.sketch_adds.zero_()
                m._reindex()
        self.step = int(maps[f"{STATE_PREFIX}step"])
        self._pending = self._before_pending = None
        self.inner.load_state_dict(rows)

    def _relayout(
        self, saved: int, maps: dict[str, Tensor], rows: dict[str, Any]
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The maps and the full table of ``saved`` id shards laid out for this run's: each
        admitted id moves to a slot of its new owner (its slots in ascending order, the ids by
        their old slot), its table rows and Adagrad state with it; where a new shard has more ids
        than slots, the least recently seen are dropped. Sketches: the sum of the old shards'
        (a count-min sketch of every id: still never an under-estimate), each new shard a copy."""
        maps, rows = dict(maps), dict(rows)
        moved = {k: rows[k].clone() for k in MOVED_ROW_KEYS if k in rows}
        for fi, cfg in self.cfgs.items():
            prefix = f"{STATE_PREFIX}{self.names[fi]}."
            keys, last = maps[f"{prefix}keys"], maps[f"{prefix}last_seen"]
            freq = maps[f"{prefix}freq"]
            new_keys = torch.full_like(keys, -1)
            new_last, new_freq = torch.full_like(last, -1), torch.zeros_like(freq)
            base = 1 + cfg.fallback_rows + fi
            held = (keys >= 0).nonzero().squeeze(1)
            for s in range(self.shards):
                old = held[keys[held] % self.shards == s]
                room = shard_slots(cfg.capacity, s, self.shards, base)
                if old.numel() > room.numel():  # keep the most recently seen
                    keep = torch.argsort(-last[old], stable=True)[: room.numel()]
                    old = old[keep.sort().values]
                new = room[: old.numel()]
                new_keys[new], new_last[new], new_freq[new] = keys[old], last[old], freq[old]
                for k, table in moved.items():
                    table[self._slot_rows(fi, new)] = rows[k][self._slot_rows(fi, old)]
            maps[f"{prefix}keys"], maps[f"{prefix}last_seen"] = new_keys, new_last
            maps[f"{prefix}freq"] = new_freq
            sketch = maps[f"{prefix}sketch"]
            sketch = sketch if sketch.dim() == 3 else sketch[None]
            summed = sketch.sum(0, dtype=torch.int32)
            maps[f"{prefix}sketch"] = summed.expand(self.shards, *summed.shape).clone()
            adds = maps[f"{prefix}sketch_adds"].reshape(-1).sum()
            maps[f"{prefix}sketch_adds"] = adds.expand(self.shards).clone()
        rows.update(moved)
        return maps, rows

    def cache_stats(self, reset: bool = True) -> dict[str, float]:
        """The row collection's cache counters plus ``dynamic.admissions``, ``.evictions``,
        ``.expirations``, ``.fallback_ids`` (ids served by a fallback row; since the last reset)
        and ``dynamic.rows_used`` (rows held now), of the id shards held here: summed over ranks,
        they count each decision once."""
        out = dict(self.inner.cache_stats(reset))
        held = [m for shards in self.maps.values() for m in shards.values()]
        for name in COUNTERS:
            out[f"{STATE_PREFIX}{name}"] = float(sum(m.counts[name] for m in held))
        out[f"{STATE_PREFIX}rows_used"] = float(self.rows_used())
        if reset:
            for m in held:
                m.counts = dict.fromkeys(COUNTERS, 0)
        return out


# ---------------------------------------------------------------------------------------------
# The maps as an export carries them


def exported_id_map(
    state: dict[str, Any], tables: Sequence[DynamicTableConfig]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each dynamic feature's map as an export writes it: ``(ids, rows)``, the admitted local ids
    (sorted, int64) and the row each one holds in the feature's PHYSICAL table (int64, in
    ``[1 + fallback_rows, physical_rows)``).

    ``state`` is an embedding state holding the maps (``dynamic.*``: a checkpoint's, merged over
    its ranks, or :meth:`DynamicEmbeddingCollection.state_dict`). Scoring with the map maps a
    local id as the trainer's evaluation does: 0 -> the null row 0, an admitted id -> its row,
    any other id -> the fallback row ``1 + id % fallback_rows`` (``tables``' ``fallback_rows``).

    Raises:
        ValueError: ``state`` lacks the map of one of ``tables``.
    """
    out = {}
    for t in tables:
        key = f"{STATE_PREFIX}{t.feature}.keys"
        if key not in state:
            raise ValueError(
                f"the embedding state has no map of the dynamic table {t.feature!r} ({key}): it "
                "was saved by a run with other parallel.dynamic tables"
            )
        keys = torch.as_tensor(state[key]).cpu().to(torch.int64)
        slots = (keys >= 0).nonzero().squeeze(1)
        ids, order = torch.sort(keys.index_select(0, slots))
        rows = 1 + t.fallback_rows + slots.index_select(0, order)
        out[t.feature] = (ids.numpy().copy(), rows.numpy().copy())
    return out
