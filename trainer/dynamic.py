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
  (id, step) falls under that probability (deterministic: every rank decides the same);
* eviction when the table is full: ``lru`` (least recently seen), ``lfu`` (fewest occurrences),
  ``ttl`` (rows unseen for more than ``ttl_steps`` steps are freed; a full table then admits
  nothing). A row used in this step or the previous one is never taken (the previous step's
  gradients may still be pending when the next batch is mapped ahead for a prefetch);
* a newly admitted id's row starts afresh: ``emb`` = :func:`id_normal` of the id (a function of
  the id and the seed, the same at any world size), ``linear`` 0, Adagrad state 0.

:class:`DynamicEmbeddingCollection` wraps the collection of the PHYSICAL layout
(:func:`physical_layout`: plain, or sharded with MixCache/DES at any world size): it translates
each batch's ids into physical rows and hands the translated batch on, so the rows and their
optimizer state are sharded, cached, checkpointed and resharded exactly like a hashed table's.
The map is replicated: with several ranks, every training step all-gathers the dynamic ids and
their counts (one collective), and every rank makes the same decisions on the union, which is
what one process training on the union of the batches decides (distributed = single process).
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
    """Counters per row of the admission count-min sketch (4 rows of int32; used when
    admit_count > 1). 0: ``max(1024, capacity)``."""

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


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
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
    j = np.arange(dim, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        u1 = _unit(_mix64(base ^ _mix64(2 * j)))
        u2 = _unit(_mix64(base ^ _mix64(2 * j + np.uint64(1))))
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
    return torch.from_numpy(z * std).to(dtype)


# ---------------------------------------------------------------------------------------------
# The id -> row map of one table


class IdMap:
    """Which id holds which of ``capacity`` slots, with admission and eviction (module docstring).

    State (tensors, checkpointed): ``keys`` (id per slot, -1 free), ``last_seen`` (step),
    ``freq`` (occurrences while admitted), ``sketch`` (admission counts).
    """

    def __init__(self, cfg: DynamicTableConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        c = cfg.capacity
        self.keys = torch.full((c,), -1, dtype=torch.int64)
        self.last_seen = torch.full((c,), -1, dtype=torch.int64)
        self.freq = torch.zeros(c, dtype=torch.int64)
        width = (cfg.sketch_width or max(1024, c)) if cfg.admit_count > 1 else 0
        self.sketch = torch.zeros(SKETCH_DEPTH, width, dtype=torch.int32)
        self.sketch_adds = torch.zeros((), dtype=torch.int64)
        """Occurrences added since the last halving."""
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._reindex()

    def _reindex(self) -> None:
        used = (self.keys >= 0).nonzero().squeeze(1)
        keys, order = torch.sort(self.keys.index_select(0, used))
        self._sorted_keys, self._sorted_slots = keys, used.index_select(0, order)

    @property
    def used(self) -> int:
        return int(self._sorted_keys.numel())

    def find(self, ids: Tensor) -> Tensor:
        """The slot of each id, -1 where it holds none."""
        keys = self._sorted_keys
        if keys.numel() == 0:
            return torch.full_like(ids, -1)
        pos = torch.searchsorted(keys, ids).clamp_(max=keys.numel() - 1)
        hit = keys.index_select(0, pos) == ids
        return torch.where(hit, self._sorted_slots.index_select(0, pos), -1)

    def assign(self, ids: Tensor, counts: Tensor, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """One training step's unique ``ids`` (sorted, > 0) seen ``counts`` times: admit, evict,
        record use. Returns each id's slot (-1: not admitted) and the newly admitted
        ``(slots, ids)`` whose rows must start afresh."""
        cfg = self.cfg
        if cfg.eviction == "ttl":
            stale = (self.keys >= 0) & (self.last_seen < step - cfg.ttl_steps)
            if bool(stale.any()):
                self.counts["expirations"] += int(stale.sum())
                self.keys[stale] = -1
                self._reindex()
        slots = self.find(ids)
        hit = slots >= 0
        self.last_seen[slots[hit]] = step
        self.freq[slots[hit]] += counts[hit]
        miss = (~hit).nonzero().squeeze(1)
        admit = miss[self._admissible(ids[miss], counts[miss], step)]
        new_slots = torch.zeros(0, dtype=torch.int64)
        if admit.numel():
            # Most frequent first, then the smaller id: the same order on every rank.
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
        return slots, new_slots, ids[admit]

    def _admissible(self, ids: Tensor, counts: Tensor, step: int) -> Tensor:
        cfg = self.cfg
        ok = torch.ones(ids.numel(), dtype=torch.bool)
        if cfg.admit_count > 1 and ids.numel():
            width = self.sketch.shape[1]
            salts = np.array([_salt(d) for d in range(SKETCH_DEPTH)], dtype=np.uint64)[:, None]
            col = _mix64(_hash(ids, self.seed)[None, :] ^ salts) % np.uint64(width)
            # The (depth, n) cells of the flattened sketch: one scatter, one gather.
            col += np.arange(SKETCH_DEPTH, dtype=np.uint64)[:, None] * np.uint64(width)
            cell = torch.from_numpy(col.astype(np.int64)).reshape(-1)
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

    def state(self, prefix: str) -> dict[str, Tensor]:
        return {
            f"{prefix}keys": self.keys.clone(),
            f"{prefix}last_seen": self.last_seen.clone(),
            f"{prefix}freq": self.freq.clone(),
            f"{prefix}sketch": self.sketch.clone(),
            f"{prefix}sketch_adds": self.sketch_adds.clone(),
        }

    def load(self, prefix: str, state: dict[str, Any]) -> None:
        for name in ("keys", "last_seen", "freq", "sketch", "sketch_adds"):
            mine, theirs = getattr(self, name), state[f"{prefix}{name}"]
            if tuple(theirs.shape) != tuple(mine.shape):
                raise ValueError(
                    f"dynamic table state {prefix}{name} has shape {tuple(theirs.shape)}, this "
                    f"table {tuple(mine.shape)}: capacity or sketch_width differ from the run "
                    "that saved it"
                )
            mine.copy_(theirs)
        self._reindex()


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
    ) -> None:
        phys = physical_layout(layout, tables)
        if inner.total_rows != phys.total_rows:
            raise ValueError(
                f"the row collection has {inner.total_rows} rows, the dynamic tables' physical "
                f"layout {phys.total_rows}: build it over trainer.dynamic.physical_layout(...)"
            )
        self.inner, self.comm = inner, comm
        self.init_std, self.seed = init_std, seed
        self.total_rows = layout.total_rows
        self.names = tuple(layout.feature_names)
        self._offsets = torch.tensor(layout.table_offsets, dtype=torch.int64)
        self._phys_offsets = torch.tensor(phys.table_offsets, dtype=torch.int64)
        index = {n: i for i, n in enumerate(self.names)}
        self.maps = {index[t.feature]: IdMap(t, seed + 7919 * index[t.feature]) for t in tables}
        self._fallback = torch.zeros(len(self.names), dtype=torch.int64)
        """Fallback rows per feature (0: not dynamic)."""
        for fi, m in self.maps.items():
            self._fallback[fi] = m.cfg.fallback_rows
        self.step = 0
        """Training translations so far (the maps' clock)."""
        self._pending: tuple[Tensor, MappedBatch, tuple[Tensor, Tensor]] | None = None
        self._before_pending: tuple[int, dict[str, Tensor]] | None = None

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
        """Translate the next batch now (its admissions decided) and let the row collection stage
        its rows; the admitted ids' rows restart at that batch's :meth:`lookup`, after this
        step's gradients are applied."""
        if self._pending is not None:
            raise ValueError("prefetch called twice without a lookup in between")
        before = (self.step, self._map_state())
        mapped, fresh = self._translate(batch, train=True)
        self._pending, self._before_pending = (batch.ids.cpu(), mapped, fresh), before
        self.inner.prefetch(mapped)

    @torch.no_grad()
    def read(self, batch: Batch) -> SparseOut:
        """Evaluation: admitted ids read their rows, the others their fallback row; the maps do
        not change."""
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
        if train:
            counts = torch.bincount(batch.inverse.reshape(-1).cpu(), minlength=ids.numel())
            slots, fresh = self._assign(f_sel, l_sel, counts.index_select(0, sel))
            self.step += 1
        else:
            fresh = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, self.dim))
            slots = torch.full_like(sel, -1)
            for fi, m in self.maps.items():
                here = f_sel == fi
                slots[here] = m.find(l_sel[here])
        fb = self._fallback.index_select(0, f_sel)
        row = torch.where(slots >= 0, 1 + fb + slots, 1 + l_sel % fb)
        phys[sel] = self._phys_offsets.index_select(0, f_sel) + row
        new_ids, remap = torch.unique(phys, return_inverse=True)
        inverse = remap.to(batch.inverse.device).index_select(0, batch.inverse.reshape(-1))
        mapped = MappedBatch(new_ids.to(batch.ids.device), inverse.view(batch.inverse.shape))
        return mapped, fresh

    def _assign(
        self, feature: Tensor, local: Tensor, counts: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Admit/evict on the union of every rank's dynamic ids: this rank's ids' slots, and the
        rows that restart with their initial ``emb`` (every rank resets those it owns)."""
        mine = torch.stack([feature, local, counts], 1)
        if self.comm is not None:
            everyone = torch.cat(
                [t.cpu() for t in self.comm.all_gather_rows(mine.to(self.device), "dynamic")]
            )
        else:
            everyone = mine
        out = torch.full_like(local, -1)
        fresh_rows, fresh_ids = [], []
        for fi, m in self.maps.items():
            part = everyone[everyone[:, 0] == fi]
            if self.comm is None:  # one batch: its ids are unique and sorted already
                uids, ucounts = part[:, 1].contiguous(), part[:, 2].contiguous()
            else:
                uids, inv = torch.unique(part[:, 1], return_inverse=True)
                ucounts = torch.zeros_like(uids).index_add_(0, inv, part[:, 2])
            slots, new_slots, new_ids = m.assign(uids, ucounts, self.step)
            here = (feature == fi).nonzero().squeeze(1)
            if here.numel():
                out[here] = slots.index_select(0, torch.searchsorted(uids, local[here]))
            base = int(self._phys_offsets[fi]) + 1 + m.cfg.fallback_rows
            fresh_rows.append(base + new_slots)
            fresh_ids.append(new_ids + self._offsets[fi])
        rows = torch.cat(fresh_rows) if fresh_rows else torch.zeros(0, dtype=torch.int64)
        gids = torch.cat(fresh_ids) if fresh_ids else rows
        emb = id_normal(gids, self.dim, self.init_std, self.seed, self.dtype)
        return out, (rows.to(self.device), emb.to(self.device))

    # ----------------------------------------------------------------------------- state
    def _map_state(self) -> dict[str, Tensor]:
        out = {}
        for fi, m in self.maps.items():
            out.update(m.state(f"{STATE_PREFIX}{self.names[fi]}."))
        return out

    def state_dict(self) -> dict[str, Any]:
        """The row collection's state plus the maps (``dynamic.*``). Between a prefetch and its
        lookup the maps are saved as they were before the prefetch: a resumed run maps that
        batch again and makes the same decisions."""
        step, maps = self._before_pending or (self.step, self._map_state())
        return {
            **self.inner.state_dict(),
            **maps,
            f"{STATE_PREFIX}step": torch.tensor(step, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the row part as the row collection loads it: a
        shard, or a full table)."""
        if f"{STATE_PREFIX}step" not in state:
            raise ValueError(
                "this embedding state has no dynamic-table maps (dynamic.*): it was saved by a "
                "run without parallel.dynamic, whose hashed rows cannot be mapped to ids"
            )
        for fi, m in self.maps.items():
            m.load(f"{STATE_PREFIX}{self.names[fi]}.", state)
        self.step = int(state[f"{STATE_PREFIX}step"])
        self._pending = self._before_pending = None
        self.inner.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith(STATE_PREFIX)}
        )

    def cache_stats(self, reset: bool = True) -> dict[str, float]:
        """The row collection's cache counters plus ``dynamic.admissions``, ``.evictions``,
        ``.expirations``, ``.fallback_ids`` (ids served by a fallback row; since the last reset)
        and ``dynamic.rows_used`` (rows held now), reported by rank 0 (0 on the others)."""
        out = dict(self.inner.cache_stats(reset))
        # Every rank holds the same maps: rank 0 reports them, so that summing over ranks counts
        # each decision once.
        report = self.comm is None or self.comm.rank == 0
        for name in COUNTERS:
            count = sum(m.counts[name] for m in self.maps.values()) if report else 0
            out[f"{STATE_PREFIX}{name}"] = float(count)
        used = sum(m.used for m in self.maps.values()) if report else 0
        out[f"{STATE_PREFIX}rows_used"] = float(used)
        if reset:
            for m in self.maps.values():
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
