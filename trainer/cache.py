"""MixCache (ScaleFreeCTR): a rank's embedding rows AND their row-wise Adagrad state live in host
memory; a device cache of configurable capacity holds the rows the current steps use.

    spec = plan.cache_spec(rank)                            # per-table capacity and policy (plan.py)
    coll = ShardedEmbeddingCollection(plan, comm, slot_feature, cache=spec)  # any world size
    sparse = coll.lookup(batch)          # waits for the prefetch of this step, reads device rows
    coll.prefetch(next_batch)            # stage t+1: misses fetched while step t computes
    ...backward, apply_gradients: the owners update the cached rows in place (marked dirty)...
    coll.cache_stats()                   # {"cache.hits": ..., "cache.misses": ..., ...} of the step

:class:`CachedRows` is the row store a collection holds (``trainer.embeddings.RowStore``): the
MixCache plus the translation of local rows to slots, in one place.

Layout. The host store is ONE packed tensor, a row per embedding row: ``[emb (D) | linear (1) |
emb Adagrad sum (1) | linear Adagrad sum (1)]`` (linear columns only when the model has the linear
table), pinned when CUDA is present, or a memory-mapped file (``torch.from_file``) for shards larger
than RAM. The device cache has the same columns, one row per *slot*; :class:`CachedRows` indexes
it with slots and runs the same Adagrad function (``trainer.embeddings.rowwise_adagrad_``) as the
device-resident store runs with rows, so a run with the cache gives bit-identical parameters to a
run without it.

Each table of the store (a contiguous row range) is one :class:`CacheSegment` with its own slot
range, capacity and policy. Per step ``s``, for the unique rows of the step:

1. every row of the step counts one use (``freq``, kept per ROW for the whole run, also while the
   row is on the host: LFU then ranks by the row's history, not by its time in the cache), and
   hits are stamped ``last_used = s``;
2. each miss takes a free slot of its table, else evicts a victim: a row NOT used by step ``s`` or
   ``s - 1`` (rows of the current and previous step are never evicted: with prefetching, step
   ``s - 1`` is the one still computing). LRU evicts the smallest ``last_used``, LFU the smallest
   ``freq`` (then the smallest ``last_used``); ties go to the lowest slot, so runs are
   deterministic. If too few rows are evictable, a ``ValueError`` names the minimum capacity;
3. dirty victims (rows updated since they were loaded) are written back, then the misses are
   copied host -> device.

Prefetch stage. ``prefetch(rows)`` runs steps 1-3 for the NEXT step on a background thread (and a
CUDA side stream) while the current step computes; ``lookup(rows)`` waits for it. The two never
touch the same rows: the computing step only reads and updates its own rows, which are protected,
and only rows that are not resident are read from the host. Misses and victims are the same with
and without the prefetch stage (the same rule at the same step numbers), so are all counters.

Counters (per step, consumed when the step is looked up): ``lookups`` (unique rows),
``hits + misses = lookups``, ``evictions``, ``h2d_bytes = misses x row bytes``, ``d2h_bytes =
written-back rows x row bytes``. ``state_dict`` flushes dirty rows and saves the resident set,
stamps, per-row use counts and any prefetched step, so a resumed run continues with exactly
the same cache behaviour.

This module never imports ``torch.distributed``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from trainer.embeddings import (
    RowSpec,
    check_grad_tables,
    load_row_state,
    rowwise_adagrad_,
    table_names,
)

log = logging.getLogger(__name__)
COUNTERS = ("lookups", "hits", "misses", "evictions", "h2d_bytes", "d2h_bytes")
POLICIES = ("lru", "lfu")
_FREE = -1


# ---------------------------------------------------------------------------------------------
# Configuration (``ParallelConfig.cache``; resolved per table and rank by the sharding plan)


@dataclass(kw_only=True)
class TableCacheConfig:
    """Per-table override of :class:`CacheConfig`; unset fields inherit the global setting."""

    feature: str
    """The feature (table) these settings apply to."""
    enabled: bool | None = None
    """False keeps this table whole in device memory (e.g. a small, hot table)."""
    capacity_fraction: float | None = None
    capacity_rows: int | None = None
    policy: Literal["lru", "lfu"] | None = None


@dataclass(kw_only=True)
class CacheConfig:
    """MixCache for every table (``parallel.cache`` in the config; see ``trainer/cache.py``)."""

    enabled: bool = False
    """Keep each rank's rows and Adagrad state in host memory behind a device cache."""
    capacity_fraction: float = 0.1
    """Device rows per table and rank, as a fraction of the rank's rows of that table."""
    capacity_rows: int = 0
    """If > 0: device rows per table and rank (overrides ``capacity_fraction``)."""
    policy: Literal["lru", "lfu"] = "lru"
    """Which row to evict: least recently used, or least frequently used (ties: LRU)."""
    prefetch: bool = True
    """Stage the next batch's misses while the current step computes (``prefetch(next_ids)``)."""
    mmap_dir: str = ""
    """If set: each rank's host rows live in a memory-mapped file in this directory (shards
    larger than RAM); otherwise in (pinned, with CUDA) host memory."""
    tables: tuple[TableCacheConfig, ...] = field(default_factory=tuple)
    """Per-table overrides (``[[parallel.cache.tables]]`` with ``feature = "..."``)."""

    def __post_init__(self) -> None:
        self.tables = tuple(self.tables)
        for t in (self, *self.tables):
            fraction, rows, policy = t.capacity_fraction, t.capacity_rows, t.policy
            where = "parallel.cache" + (f".tables[{t.feature}]" if t is not self else "")
            if fraction is not None and not 0.0 < fraction <= 1.0:
                raise ValueError(f"{where}.capacity_fraction must be in (0, 1], got {fraction}")
            if rows is not None and rows < 0:
                raise ValueError(f"{where}.capacity_rows must be >= 0, got {rows}")
            if policy is not None and policy not in POLICIES:
                raise ValueError(f"{where}.policy must be one of {', '.join(POLICIES)}")
        names = [t.feature for t in self.tables]
        if len(set(names)) != len(names):
            raise ValueError(f"parallel.cache.tables names a feature twice: {names}")

    def resolve(self, feature: str, rows: int) -> tuple[bool, int, str]:
        """``(cached, capacity, policy)`` of a table part of ``rows`` rows; a table that is not
        cached gets ``capacity = rows`` (all of it fits in device memory)."""
        over = next((t for t in self.tables if t.feature == feature), None)

        def pick(name: str):  # the override's value where set, else the global one
            value = None if over is None else getattr(over, name)
            return getattr(self, name) if value is None else value

        cached = self.enabled and bool(pick("enabled"))
        if not cached:
            return False, rows, "lru"
        n_rows = pick("capacity_rows")
        cap = n_rows if n_rows else -(-rows * pick("capacity_fraction") // 1)
        return True, max(1, min(rows, int(cap))), pick("policy")


@dataclass(frozen=True)
class CacheSegment:
    """One table's rows ``[start, stop)`` of a rank's store and its part of the device cache."""

    name: str
    start: int
    stop: int
    capacity: int
    policy: str


@dataclass(frozen=True)
class CacheSpec:
    """Everything one rank's cache needs (``ShardingPlan.cache_spec(rank)``)."""

    segments: tuple[CacheSegment, ...]
    prefetch: bool = True
    mmap_path: str | None = None


class HostStore:
    """Packed host rows (see the module docstring): ``data`` is ``(rows, width)``.

    Args:
        rows: rows of the shard.
        columns: ``(name, width)`` in column order, e.g. ``[("emb.weight", 16), ("linear.weight",
            1), ("emb.adagrad_sum", 1), ("linear.adagrad_sum", 1)]``.
        dtype: the tables' dtype.
        path: back the store by this file (created or overwritten to the right size; it persists
            after the process ends) instead of anonymous memory.
        pin: page-lock the memory (fast, asynchronous host -> GPU copies); ignored for a file.
    """

    def __init__(
        self,
        rows: int,
        columns: Sequence[tuple[str, int]],
        dtype: torch.dtype,
        *,
        path: str | Path | None = None,
        pin: bool = False,
    ) -> None:
        self.columns: dict[str, tuple[int, int]] = {}
        start = 0
        for name, width in columns:
            self.columns[name] = (start, width)
            start += width
        self.rows, self.width, self.path = rows, start, None if path is None else str(path)
        if path is not None and rows > 0:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            flat = torch.from_file(str(path), shared=True, size=rows * start, dtype=dtype)
            self.data = flat.view(rows, start)
        else:
            self.data = torch.zeros(rows, start, dtype=dtype, pin_memory=pin)

    def column(self, name: str, table: Tensor | None = None) -> Tensor:
        """Column ``name`` of ``table`` (default: the store) as a view: ``(rows, width)``, or
        ``(rows,)`` for the 1-wide Adagrad sums."""
        start, width = self.columns[name]
        t = self.data if table is None else table
        return t[:, start] if name.endswith(".adagrad_sum") else t[:, start : start + width]

    @property
    def row_bytes(self) -> int:
        return self.width * self.data.element_size()


@dataclass
class _Staged:
    """One staged step: its rows, their slots (host) and the step's counters."""

    step: int
    rows: Tensor
    slots: Tensor
    counts: dict[str, int]


class MixCache:
    """The device cache in front of a :class:`HostStore` (see the module docstring).

    Args:
        store: the host rows (initialised by the caller).
        spec: segments (table row ranges, capacity, policy) and whether to prefetch.
        device: where the cache lives (``cpu`` exercises the same mechanism without a GPU).
    """

    def __init__(self, store: HostStore, spec: CacheSpec, device: torch.device | str) -> None:
        self.store, self.spec, self.device = store, spec, torch.device(device)
        starts = [s.start for s in spec.segments]
        if starts != sorted(starts) or spec.segments[-1].stop != store.rows or starts[0] != 0:
            raise ValueError(f"cache segments must tile the store's {store.rows} rows in order")
        self.capacity = sum(s.capacity for s in spec.segments)
        self.slot_start = torch.tensor([0] + [s.capacity for s in spec.segments]).cumsum(0)
        self.seg_row_start = torch.tensor(starts, dtype=torch.int64)
        self.buf = torch.zeros(self.capacity, store.width, dtype=store.data.dtype, device=device)
        # Host metadata: int32 row -> slot map (4 bytes per row of the shard), per-slot state.
        self.row_slot = torch.full((store.rows,), _FREE, dtype=torch.int32)
        self.slot_row = torch.full((self.capacity,), _FREE, dtype=torch.int64)
        self.last_used = torch.full((self.capacity,), -(2**40), dtype=torch.int64)
        self.freq = torch.zeros(store.rows, dtype=torch.int32)  # uses per row (LFU)
        self.dirty = torch.zeros(self.capacity, dtype=torch.bool)
        self.step = -1
        """The last staged step (a prefetched step counts as staged)."""
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.totals = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()
        self._pending: Future[_Staged] | None = None
        self._pool: ThreadPoolExecutor | None = None
        cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        self._staging: dict[str, Tensor] = {}

    # ----------------------------------------------------------------------------- views
    def table(self, name: str) -> Tensor:
        """Slot-indexed view of one column of the cache (what a collection indexes with slots)."""
        return self.store.column(name, self.buf)

    # ------------------------------------------------------------------------ the step API
    def prefetch(self, rows: Tensor) -> None:
        """Stage the next step's unique ``rows`` in the background (no-op unless ``spec.prefetch``).

        Raises:
            ValueError: a prefetched step has not been looked up yet.
        """
        if not self.spec.prefetch:
            return
        if self._pending is not None:
            raise ValueError("prefetch called twice without a lookup in between")
        rows = rows.detach().to("cpu", torch.int64)
        ready = None
        if self._stream is not None:  # the side stream must see every write queued so far
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixcache")
        self._pending = self._pool.submit(self._stage, rows, self.step + 1, ready)
        self.step += 1

    def lookup(self, rows: Tensor) -> Tensor:
        """Slots (on the cache's device) of this step's unique ``rows``, all resident afterwards.

        Consumes the prefetched step when its rows are these rows; otherwise stages them now
        (a lookup that was not prefetched, or one between a prefetch and its lookup).
        """
        rows = rows.detach().to("cpu", torch.int64)
        staged = self._wait()
        if staged is not None and torch.equal(staged.rows, rows):
            self._count(staged.counts)
            return staged.slots.to(self.device, non_blocking=True)
        if staged is not None:  # rows staged at the prefetched step stay protected with these
            self._count(staged.counts)
            now = self._stage(rows, self.step, None)
        else:
            self.step += 1
            now = self._stage(rows, self.step, None)
        self._count(now.counts)
        return now.slots.to(self.device, non_blocking=True)

    def slots(self, rows: Tensor) -> Tensor:
        """Slots of resident ``rows`` (a step's rows, between its lookup and the next one).

        Raises:
            ValueError: a row is not resident (updated without being looked up).
        """
        with self._lock:
            slots = self.row_slot.index_select(0, rows.detach().to("cpu", torch.int64)).long()
        if bool((slots < 0).any()):
            raise ValueError("rows updated without a lookup in this step are not in the cache")
        return slots.to(self.device, non_blocking=True)

    def mark_dirty(self, rows: Tensor) -> None:
        """Rows whose cached values changed: written back when evicted or flushed."""
        with self._lock:
            slots = self.row_slot.index_select(0, rows.detach().to("cpu", torch.int64)).long()
            self.dirty.index_fill_(0, slots, True)

    def evict(self, rows: Tensor | None = None) -> int:
        """Write back and drop ``rows`` (default: every resident row), except the rows of a
        prefetched step that was not looked up yet; returns the rows evicted."""
        self._settle()
        with self._lock:
            if rows is None:
                slots = (self.slot_row >= 0).nonzero().squeeze(1)
            else:
                slots = self.row_slot.index_select(0, rows.to("cpu", torch.int64)).long()
                slots = slots.masked_select(slots >= 0)
            if self._pending is not None:  # settled: its result is ready
                keep = self._pending.result().slots
                slots = slots.masked_select(~torch.isin(slots, keep))
            vrows, vdirty = self.slot_row.index_select(0, slots), self.dirty.index_select(0, slots)
            self.row_slot.index_fill_(0, vrows, _FREE)
            self.slot_row.index_fill_(0, slots, _FREE)
            self.dirty.index_fill_(0, slots, False)
        counts = dict.fromkeys(COUNTERS, 0)
        self._write_back(slots.masked_select(vdirty), vrows.masked_select(vdirty), counts)
        counts["evictions"] = int(slots.numel())
        self._count(counts)
        return int(slots.numel())

    def overwrite(self, rows: Tensor, values: dict[str, Tensor]) -> None:
        """Set columns of unique ``rows`` (``values``: column name -> ``(n, width)``) in the host
        store and, where a row is resident (or staged by a prefetch), in its slot too."""
        self._settle()
        rows = rows.detach().to("cpu", torch.int64)
        with self._lock:
            slots = self.row_slot.index_select(0, rows).long()
            resident = slots >= 0
            for name, value in values.items():
                host = self.store.column(name)
                value = value.reshape(-1, *host.shape[1:])
                host[rows] = value.to("cpu", host.dtype)
                col = self.store.column(name, self.buf)
                col[slots[resident].to(self.device)] = value[resident.to(value.device)].to(col)
            self.dirty.index_fill_(0, slots[resident], False)

    def flush(self, count: bool = True) -> int:
        """Write every dirty row back to the host store (they stay cached, now clean); returns
        the bytes written. ``count=False`` (checkpoints) keeps them out of the step counters, so
        a resumed run counts exactly what the uninterrupted one counts."""
        self._settle()
        with self._lock:
            slots = self.dirty.nonzero().squeeze(1)
            rows = self.slot_row.index_select(0, slots)
            self.dirty.index_fill_(0, slots, False)
        counts = dict.fromkeys(COUNTERS, 0)
        self._write_back(slots, rows, counts)
        if count:
            self._count(counts)
        return counts["d2h_bytes"]

    def stats(self, reset: bool = True) -> dict[str, float]:
        """Counters since the last reset as ``cache.<name>``, plus ``cache.hit_rate``."""
        out: dict[str, float] = {f"cache.{k}": v for k, v in self.counts.items()}
        out["cache.hit_rate"] = self.counts["hits"] / max(self.counts["lookups"], 1)
        if reset:
            self.counts = dict.fromkeys(COUNTERS, 0)
        return out

    def close(self) -> None:
        """Finish a pending prefetch and stop the background thread (idempotent)."""
        self._settle()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Tensor]:
        """Flush, then the cache's own state (the rows themselves are the store's)."""
        pending = self._wait()
        nbytes = self.flush(count=False)
        log.debug("cache flushed %d bytes for a checkpoint", nbytes)
        self._pending = _done(pending) if pending is not None else None
        p_rows = pending.rows if pending is not None else torch.zeros(0, dtype=torch.int64)
        p_counts = pending.counts if pending is not None else dict.fromkeys(COUNTERS, 0)
        return {
            "cache.slot_row": self.slot_row.clone(),
            "cache.last_used": self.last_used.clone(),
            "cache.freq": self.freq.clone(),
            "cache.step": torch.tensor(self.step - (pending is not None)),
            "cache.pending_rows": p_rows.clone(),
            "cache.pending_counts": torch.tensor([p_counts[k] for k in COUNTERS]),
            "cache.totals": torch.tensor([self.totals[k] for k in COUNTERS]),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict` after the store's rows were restored; without cache keys
        (a checkpoint of an uncached run) the cache starts cold."""
        self._settle()
        cold = "cache.slot_row" not in state or state["cache.slot_row"].numel() != self.capacity
        if cold and "cache.slot_row" in state:
            log.warning("cache capacity changed since the checkpoint: starting with a cold cache")
        with self._lock:
            self.row_slot.fill_(_FREE)
            self.slot_row.fill_(_FREE)
            self.dirty.zero_()
            self.freq.zero_()
            self.last_used.fill_(-(2**40))
            if cold:
                self.step = int(state["cache.step"]) if "cache.step" in state else -1
                return
            self.slot_row.copy_(state["cache.slot_row"])
            self.last_used.copy_(state["cache.last_used"])
            self.freq.copy_(state["cache.freq"])
            self.step = int(state["cache.step"])
            self.totals = dict(zip(COUNTERS, state["cache.totals"].tolist(), strict=True))
            slots = (self.slot_row >= 0).nonzero().squeeze(1)
            rows = self.slot_row.index_select(0, slots)
            self.row_slot.index_copy_(0, rows, slots.to(torch.int32))
        if slots.numel():  # reload the resident rows (restoring, not counted as traffic)
            dev = slots.to(self.device)
            self.buf.index_copy_(0, dev, self.store.data.index_select(0, rows).to(self.device))
        p_rows = state["cache.pending_rows"]
        if p_rows.numel():
            self.step += 1
            slots = self.row_slot.index_select(0, p_rows).long()
            counts = dict(zip(COUNTERS, state["cache.pending_counts"].tolist(), strict=True))
            self._pending = _done(_Staged(self.step, p_rows.clone(), slots, counts))

    # --------------------------------------------------------------------------- internals
    def _wait(self) -> _Staged | None:
        """The pending prefetch's result (re-raising its error), or None; clears it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        staged = pending.result()
        if self._stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return staged

    def _settle(self) -> None:
        """Finish a pending prefetch but keep it for its lookup."""
        staged = self._wait()
        if staged is not None:
            self._pending = _done(staged)

    def _count(self, counts: dict[str, int]) -> None:
        for k, v in counts.items():
            self.counts[k] += v
            self.totals[k] += v

    def _stage(self, rows: Tensor, step: int, ready: torch.cuda.Event | None) -> _Staged:
        """Make ``rows`` resident for ``step`` (see the module docstring); returns their slots."""
        counts = dict.fromkeys(COUNTERS, 0)
        # Explicit index ops throughout: advanced indexing is many times slower on CPU here.
        with self._lock:
            slots = self.row_slot.index_select(0, rows).long()
            hit = slots >= 0
            hit_slots = slots.masked_select(hit)
            self.last_used.index_fill_(0, hit_slots, step)
            self.freq.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int32))  # unique rows
            miss = rows.masked_select(~hit)
            new = self._choose_slots(miss, step)
            old = self.slot_row.index_select(0, new)
            is_victim = old >= 0
            victims, vrows = new.masked_select(is_victim), old.masked_select(is_victim)
            vdirty = self.dirty.index_select(0, victims)
            self.row_slot.index_fill_(0, vrows, _FREE)
            self.row_slot.index_copy_(0, miss, new.to(torch.int32))
            self.slot_row.index_copy_(0, new, miss)
            self.last_used.index_fill_(0, new, step)
            self.dirty.index_fill_(0, new, False)
            slots.masked_scatter_(~hit, new)
        counts["lookups"], counts["misses"] = int(rows.numel()), int(miss.numel())
        counts["hits"], counts["evictions"] = int(hit_slots.numel()), int(victims.numel())
        if miss.numel():  # data: only victim slots, missing rows and victims' host rows
            with self._on_side_stream(ready):
                self._write_back(victims.masked_select(vdirty), vrows.masked_select(vdirty), counts)
                self._load(miss, new, counts)
        return _Staged(step, rows, slots, counts)

    def _choose_slots(self, miss: Tensor, step: int) -> Tensor:
        """A slot for each missing row: free slots of its segment first, then victims."""
        out = torch.empty_like(miss)
        if miss.numel() == 0:
            return out
        seg = torch.searchsorted(self.seg_row_start, miss, right=True) - 1
        # A step's rows come sorted (VSI), so their segments are grouped already: no sort then.
        grouped = bool((seg[1:] >= seg[:-1]).all())
        order = torch.arange(seg.numel()) if grouped else torch.argsort(seg, stable=True)
        counts = torch.bincount(seg, minlength=len(self.spec.segments)).tolist()
        choices, errors = [], []
        for s, k in enumerate(counts):
            if k == 0:
                continue
            a, b = int(self.slot_start[s]), int(self.slot_start[s + 1])
            seg_rows = self.slot_row[a:b]
            take = (seg_rows < 0).nonzero().squeeze(1)[:k] + a
            rest = k - take.numel()
            if rest > 0:
                lu = self.last_used[a:b]
                cand = ((seg_rows >= 0) & (lu < step - 1)).nonzero().squeeze(1)
                if cand.numel() < rest:
                    seg_spec = self.spec.segments[s]
                    protected = int(((seg_rows >= 0) & (lu >= step - 1)).sum())
                    errors.append(
                        f"table {seg_spec.name!r} has {b - a} cache rows but step {step} needs "
                        f"{protected + k} resident at once ({k} new rows plus {protected} used by "
                        f"this step or the previous one, which are never evicted): raise its "
                        f"capacity to at least {protected + k} rows"
                    )
                    continue
                key = lu.index_select(0, cand)
                if self.spec.segments[s].policy == "lfu":
                    use = self.freq.index_select(0, seg_rows.index_select(0, cand)).long()
                    key = (use << 32) + key
                victims = cand.index_select(0, _smallest(key, rest)) + a
                take = torch.cat([take, victims])
            choices.append((s, take))
        if errors:
            more = f"; and {len(errors) - 3} more tables" if len(errors) > 3 else ""
            raise ValueError(
                "MixCache capacity too small: "
                + "; ".join(errors[:3])
                + more
                + " (parallel.cache.capacity_fraction / capacity_rows, or a per-table override)"
            )
        out.index_copy_(0, order, torch.cat([take for _, take in choices]))
        return out

    def _on_side_stream(self, ready: torch.cuda.Event | None):
        """CUDA: run the copies on the side stream after the main stream's queued work."""
        if self._stream is None:
            return _NullContext()
        if ready is not None:
            self._stream.wait_event(ready)
        else:
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
        return _SyncedStream(self._stream)

    def _host_buffer(self, name: str, n: int) -> Tensor:
        """A reusable pinned staging buffer (CUDA only) of at least ``n`` rows."""
        buf = self._staging.get(name)
        if buf is None or buf.shape[0] < n:
            buf = torch.empty(max(n, 1024), self.store.width, dtype=self.buf.dtype, pin_memory=True)
            self._staging[name] = buf
        return buf[:n]

    def _write_back(self, slots: Tensor, rows: Tensor, counts: dict[str, int]) -> None:
        if slots.numel() == 0:
            return
        values = self.buf.index_select(0, slots.to(self.device))
        if self._stream is not None:  # async copy into pinned memory, then wait for it
            host = self._host_buffer("out", slots.numel())
            host.copy_(values, non_blocking=True)
            self._stream.synchronize()
            values = host
        self.store.data.index_copy_(0, rows, values)
        counts["d2h_bytes"] += int(slots.numel()) * self.store.row_bytes

    def _load(self, rows: Tensor, slots: Tensor, counts: dict[str, int]) -> None:
        if self._stream is not None:
            host = self._host_buffer("in", rows.numel())
            torch.index_select(self.store.data, 0, rows, out=host)
            values = host.to(self.device, non_blocking=True)
        else:
            values = self.store.data.index_select(0, rows)
        self.buf.index_copy_(0, slots.to(self.device, non_blocking=True), values)
        counts["h2d_bytes"] += int(rows.numel()) * self.store.row_bytes


def _smallest(key: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` smallest ``key`` values, ascending by (key, position): exactly
    ``torch.argsort(key, stable=True)[:k]``, without sorting every candidate: a selection, then a
    sort of the ``k`` chosen (the full sort was the largest single cost of staging a step)."""
    if k <= 0 or k >= key.numel():
        return torch.argsort(key, stable=True)[: max(k, 0)]
    kth = torch.kthvalue(key, k).values
    below = (key < kth).nonzero().squeeze(1)
    ties = (key == kth).nonzero().squeeze(1)[: k - below.numel()]  # the lowest positions
    pick = torch.cat([below, ties])
    return pick.index_select(0, torch.argsort(key.index_select(0, pick), stable=True))


def _done(staged: _Staged) -> Future[_Staged]:
    fut: Future[_Staged] = Future()
    fut.set_result(staged)
    return fut


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _SyncedStream:
    """``torch.cuda.stream(s)`` that also waits for ``s`` on exit (the staging buffers are
    reused by the next stage, and the background thread may block: the main thread does not)."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self.stream, self.ctx = stream, torch.cuda.stream(stream)

    def __enter__(self) -> None:
        self.ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.ctx.__exit__(*exc)
        self.stream.synchronize()


def build_store_columns(dim: int, linear: bool) -> list[tuple[str, int]]:
    """The packed columns of a collection's rows (named as its ``state_dict`` keys)."""
    cols = [("emb.weight", dim)]
    if linear:
        cols.append(("linear.weight", 1))
    cols.append(("emb.adagrad_sum", 1))
    if linear:
        cols.append(("linear.adagrad_sum", 1))
    return cols


class CachedRows:
    """A shard's rows ``0..n-1`` (``rows``: a :class:`~trainer.embeddings.RowSpec`, drawn chunk by
    chunk straight into the host store) and their Adagrad state in a :class:`HostStore` behind a
    :class:`MixCache` (``cache``: ``ShardingPlan.cache_spec(rank)``), on ``device``. The same
    methods as :class:`trainer.embeddings.DeviceRows`, taking LOCAL rows. The device tables are
    indexed by SLOT; :meth:`read` and :meth:`update` translate rows to slots (``MixCache.lookup``
    / ``slots``) and are the only code that indexes them.
    """

    def __init__(
        self, cache: CacheSpec, rows: RowSpec, device: torch.device | str | None, dtype: torch.dtype
    ) -> None:
        dev = torch.device(device or "cpu")
        columns = build_store_columns(rows.dim, rows.linear)
        store = HostStore(rows.rows, columns, dtype, path=cache.mmap_path, pin=dev.type == "cuda")
        store.data.zero_()
        rows.draw(store.column("emb.weight"))
        self.cache = MixCache(store, cache, dev)
        names = table_names(rows.linear)
        self._slot_weights = {k: self.cache.table(f"{k}.weight") for k in names}
        self._slot_accum = {k: self.cache.table(f"{k}.adagrad_sum") for k in names}
        self.null = rows.null.to(dev)
        """``(n,)`` bool per local row."""
        self.adagrad_eps = rows.adagrad_eps

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self._slot_weights)

    @property
    def device(self) -> torch.device:
        return self.cache.device

    @property
    def dtype(self) -> torch.dtype:
        return self.cache.buf.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """A cached store is placed when built: only a no-op move is accepted."""
        if (device is None or torch.device(device) == self.device) and dtype in (None, self.dtype):
            return self
        raise ValueError("a cached collection is placed when built (device=, dtype=)")

    def read(self, rows: Tensor) -> dict[str, Tensor]:
        """Values of unique local ``rows`` per table (one cache step: misses loaded)."""
        slots = self.cache.lookup(rows)
        return {k: w.index_select(0, slots) for k, w in self._slot_weights.items()}

    def update(self, rows: Tensor, grads: dict[str, Tensor | None], lr: float) -> None:
        """Row-wise Adagrad on unique local ``rows`` of this step (resident since :meth:`read`)."""
        check_grad_tables(grads, self.tables)
        slots = self.cache.slots(rows)
        keep = ~self.null.index_select(0, rows)
        rowwise_adagrad_(
            self._slot_weights, self._slot_accum, slots, grads, keep, lr, self.adagrad_eps
        )
        if any(g is not None for g in grads.values()):
            self.cache.mark_dirty(rows.masked_select(keep))

    def reset(self, rows: Tensor, emb: Tensor) -> None:
        """Start unique local ``rows`` afresh: ``emb`` values, ``linear`` and Adagrad state 0."""
        zeros = emb.new_zeros(emb.shape[0], 1)
        values = {"emb.weight": emb, **{f"{k}.adagrad_sum": zeros for k in self.tables}}
        if "linear" in self.tables:
            values["linear.weight"] = zeros
        self.cache.overwrite(rows, values)

    @property
    def prefetches(self) -> bool:
        return self.cache.spec.prefetch

    def prefetch(self, rows: Tensor) -> None:
        """Stage the next step's unique local ``rows`` in the background."""
        self.cache.prefetch(rows)

    def row_state(self) -> dict[str, Tensor]:
        """Per-row tensors: views of the host store (current after a flush)."""
        store = self.cache.store
        return {**{n: store.column(n) for n in store.columns}, "null_mask": self.null.cpu()}

    def state_dict(self) -> dict[str, Tensor]:
        """Dirty rows written back first; the rows (views of the host store: clone them to keep a
        snapshot) plus the cache's own ``cache.*`` state."""
        cache_state = self.cache.state_dict()  # flushes
        return {**self.row_state(), **cache_state}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        load_row_state(
            self.row_state(), {k: v for k, v in state.items() if not k.startswith("cache.")}
        )
        self.cache.load_state_dict({k: v for k, v in state.items() if k.startswith("cache.")})

    def stats(self, reset: bool = True) -> dict[str, float]:
        return self.cache.stats(reset)

    def close(self) -> None:
        self.cache.close()
