"""The plain embedding collection (one process, no cache: the reference every other configuration
is tested against) and the row storage it shares with the sharded collection.

Every feature has its own table; the tables are stacked into one id space (``global id =
table_offset[feature] + local id``, see ``trainer/data/contract.py``), so one lookup serves all
features. Local id 0 of every feature is the null/padding row: it is initialised to zero and never
updated, so sum pooling over a multi-valued feature ignores its padding slots.

One training step touches the table exactly twice::

    sparse = collection.lookup(batch)     # rows of batch.ids (unique: VSI) as leaves, pooled
    loss = ...(sparse)...                 # support and query read the same rows
    loss.backward()                       # one gradient per unique row
    collection.apply_gradients(lr)        # row-wise Adagrad on the rows of the last lookup

Storage (:class:`DeviceRows`): the rows and their Adagrad state as device tensors indexed by LOCAL
row (``0..n-1``: the whole table here, a rank's shard in ``trainer/parallel/
sharded_embeddings.py``). ``trainer.cache.CachedRows`` has the same methods over a host store
behind a device cache; a collection holds one of them, chosen when it is built, and calls only
``read``/``update``/``state_dict``: both take local rows, whatever they index internally.

Tables: ``emb`` (``rows x dim``) and, for models with first-order terms (DeepFM, Wide&Deep),
``linear`` (``rows x 1``). Initialisation: ``emb`` ~ normal(0, ``init_std``) drawn on the CPU from
a ``torch.Generator`` seeded with ``seed``, in chunks that reproduce one draw of the whole table (so
every shard and every device holds the same numbers); null rows zeroed; ``linear`` starts at zero.

Optimizer (row-wise Adagrad, as FBGEMM's ``EXACT_ROWWISE_ADAGRAD``), per touched row ``r`` with
gradient ``g_r`` (a ``width``-vector): ``acc_r += mean(g_r ** 2)``; ``w_r -= lr * g_r / (sqrt(acc_r)
+ eps)``. One float of state per row instead of one per weight.

This module never imports ``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from trainer.sparse import Batch, LookedUpRows, Pooling, SparseOut

TABLES = ("emb", "linear")
INIT_CHUNK_ROWS = 1 << 16
"""Rows drawn per chunk by :func:`draw_initial_rows` (a multiple of 16: chunked draws reproduce one
full draw, CPU ``normal_`` fills 16 values at a time)."""


# ---------------------------------------------------------------------------------------------
# Shared by every row store: the initial draw, the optimizer, the state checks


def initial_row_chunks(
    total_rows: int, dim: int, std: float, seed: int, dtype: torch.dtype
) -> Iterator[tuple[int, Tensor]]:
    """The initial ``emb`` table as ``(first row, chunk)`` pairs of at most ~2 x INIT_CHUNK_ROWS
    rows: the same numbers as one ``normal_`` draw of the whole table with that seed."""
    gen = torch.Generator().manual_seed(seed)
    start = 0
    while start < total_rows:
        # The last chunk takes the remainder whole: a tiny trailing chunk would be drawn by a
        # different code path (fewer than 16 values).
        n = total_rows - start
        n = n if n < 2 * INIT_CHUNK_ROWS else INIT_CHUNK_ROWS
        yield start, torch.empty(n, dim, dtype=dtype).normal_(0.0, std, generator=gen)
        start += n


def draw_initial_rows(
    out: Tensor, owned: Tensor | None, total_rows: int, std: float, seed: int
) -> None:
    """Write rows ``owned`` (ascending global ids; None: all) of the initial table into ``out``
    (e.g. a view of a host store) without materialising the whole table."""
    dim = out.shape[1]
    for start, chunk in initial_row_chunks(total_rows, dim, std, seed, out.dtype):
        n = chunk.shape[0]
        if owned is None:
            out[start : start + n] = chunk
            continue
        lo, hi = torch.searchsorted(owned, torch.tensor([start, start + n])).tolist()
        if hi > lo:
            out[lo:hi] = chunk.index_select(0, owned[lo:hi] - start)


def table_names(linear: bool) -> tuple[str, ...]:
    return TABLES if linear else TABLES[:1]


@torch.no_grad()
def rowwise_adagrad_(
    weights: dict[str, Tensor],
    accum: dict[str, Tensor],
    index: Tensor,
    grads: dict[str, Tensor | None],
    keep: Tensor,
    lr: float,
    eps: float,
) -> None:
    """Row-wise Adagrad in place on positions ``index`` (unique) of ``weights``/``accum``;
    ``keep`` ``(n,)`` is False for null rows (their gradient is dropped: they never move)."""
    for name, g in grads.items():
        if g is None:
            continue
        w, acc = weights[name], accum[name]
        g = g.to(w.dtype).reshape(index.shape[0], w.shape[1]) * keep.unsqueeze(1)
        a = acc.index_select(0, index).add_(g.square().mean(1))
        acc.index_copy_(0, index, a)
        step = g.mul_((-lr) / (a.sqrt_().add_(eps)).unsqueeze(1))
        # rows are unique: a gather-update-scatter beats index_add_'s accumulation.
        w.index_copy_(0, index, w.index_select(0, index).add_(step))


def check_grad_tables(grads: dict[str, Tensor | None], tables: Sequence[str]) -> None:
    unknown = [k for k, g in grads.items() if g is not None and k not in tables]
    if unknown:
        raise ValueError(f"no {unknown[0]!r} table in this collection (tables: {list(tables)})")


@torch.no_grad()
def load_row_state(mine: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """Copy ``state``'s per-row tensors into ``mine`` (``row_state()`` of a store) after checking
    that the keys, shapes and null rows match."""
    if set(state) != set(mine):
        raise ValueError(
            f"embedding state has tables {sorted(state)}, this collection expects {sorted(mine)} "
            "(a linear table is present only for models with first-order terms)"
        )
    for key, value in mine.items():
        if state[key].shape != value.shape:
            raise ValueError(
                f"embedding state {key!r} has shape {tuple(state[key].shape)}, this collection "
                f"has {tuple(value.shape)}: the feature layout or embedding_dim differs"
            )
    if not torch.equal(state["null_mask"].to(mine["null_mask"].device), mine["null_mask"]):
        raise ValueError("embedding state has different null rows: the feature layout differs")
    for key, value in mine.items():
        if key != "null_mask":
            value.copy_(state[key])


# ---------------------------------------------------------------------------------------------
# Device-resident rows


@dataclass(frozen=True)
class RowSpec:
    """Which rows a store holds, how they start and how they are updated (every store's input)."""

    owned: Tensor | None
    """Global ids of the local rows, ascending (None: all ``total_rows``, the whole table)."""
    null: Tensor
    """``(n,)`` bool per local row: the null rows (zero, never updated)."""
    total_rows: int
    dim: int
    linear: bool
    """Also a 1-wide ``linear`` table (zero at the start)."""
    init_std: float
    seed: int
    """``emb`` is drawn as one full table of ``total_rows`` with this seed (any sharding)."""
    adagrad_eps: float

    @property
    def rows(self) -> int:
        return self.null.numel()

    def draw(self, out: Tensor) -> None:
        """The initial ``emb`` rows into ``out`` ``(rows, dim)`` (null rows zero)."""
        draw_initial_rows(out, self.owned, self.total_rows, self.init_std, self.seed)
        out[self.null] = 0.0


class RowStore(Protocol):
    """Rows ``0..n-1`` of a table or shard and their Adagrad state, addressed by LOCAL row
    (:class:`DeviceRows`, ``trainer.cache.CachedRows``)."""

    null: Tensor
    """``(n,)`` bool per local row."""

    @property
    def tables(self) -> tuple[str, ...]: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None): ...

    def read(self, rows: Tensor) -> dict[str, Tensor]:
        """Values of unique local ``rows`` per table."""
        ...

    def update(self, rows: Tensor, grads: dict[str, Tensor | None], lr: float) -> None:
        """Row-wise Adagrad on unique local ``rows`` (null rows never move)."""
        ...

    def reset(self, rows: Tensor, emb: Tensor) -> None:
        """Start unique local ``rows`` afresh (a dynamic table's newly admitted ids): ``emb``
        values, ``linear`` and Adagrad state 0."""
        ...

    @property
    def prefetches(self) -> bool:
        """Whether :meth:`prefetch` stages anything (a cache with its prefetch stage)."""
        ...

    def prefetch(self, rows: Tensor) -> None: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...

    def stats(self, reset: bool = True) -> dict[str, float]: ...

    def close(self) -> None: ...


class DeviceRows:
    """Rows ``0..n-1`` (a whole table or a shard, ``spec``) and their Adagrad state as tensors on
    ``device``."""

    def __init__(
        self, spec: RowSpec, device: torch.device | str | None, dtype: torch.dtype
    ) -> None:
        emb = torch.empty(spec.rows, spec.dim, dtype=dtype)
        spec.draw(emb)
        self.weights = {"emb": emb.to(device)}
        if spec.linear:
            self.weights["linear"] = torch.zeros(spec.rows, 1, dtype=dtype, device=device)
        self.accum = {k: torch.zeros(spec.rows, dtype=dtype, device=device) for k in self.weights}
        self.null = spec.null.to(device)
        self.adagrad_eps = spec.adagrad_eps

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.weights)

    @property
    def device(self) -> torch.device:
        return self.weights["emb"].device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights["emb"].dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move rows and state (``dtype`` applies to the floating tensors); returns ``self``."""
        self.weights = {k: v.to(device=device, dtype=dtype) for k, v in self.weights.items()}
        self.accum = {k: v.to(device=device, dtype=dtype) for k, v in self.accum.items()}
        self.null = self.null.to(device)
        return self

    def read(self, rows: Tensor) -> dict[str, Tensor]:
        """Values of local ``rows`` per table."""
        return {k: w.index_select(0, rows) for k, w in self.weights.items()}

    def update(self, rows: Tensor, grads: dict[str, Tensor | None], lr: float) -> None:
        """Row-wise Adagrad on unique local ``rows`` (null rows never move)."""
        check_grad_tables(grads, self.tables)
        keep = ~self.null.index_select(0, rows)
        rowwise_adagrad_(self.weights, self.accum, rows, grads, keep, lr, self.adagrad_eps)

    @torch.no_grad()
    def reset(self, rows: Tensor, emb: Tensor) -> None:
        """Start unique local ``rows`` afresh: ``emb`` values, ``linear`` and Adagrad state 0."""
        self.weights["emb"].index_copy_(0, rows, emb.to(self.weights["emb"]))
        for name, acc in self.accum.items():
            acc.index_fill_(0, rows, 0.0)
            if name != "emb":
                self.weights[name].index_fill_(0, rows, 0.0)

    @property
    def prefetches(self) -> bool:
        return False

    def prefetch(self, rows: Tensor) -> None:
        """Nothing to stage: every row is resident."""

    def row_state(self) -> dict[str, Tensor]:
        out = {f"{k}.weight": v for k, v in self.weights.items()}
        out.update({f"{k}.adagrad_sum": v for k, v in self.accum.items()})
        out["null_mask"] = self.null
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return self.row_state()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore ``state_dict()`` output (``cache.*`` entries of a cached store are ignored)."""
        rows = {k: v for k, v in state.items() if not k.startswith("cache.")}
        load_row_state(self.row_state(), rows)

    def stats(self, reset: bool = True) -> dict[str, float]:
        return {}

    def close(self) -> None:
        """Nothing to stop."""


# ---------------------------------------------------------------------------------------------
# The collections


class RowCollection:
    """What every collection over a row store shares: the table's sizes, the store
    (:class:`DeviceRows` or ``trainer.cache.CachedRows``), the pooling, and what delegates to
    them. Subclasses set ``dim``, ``total_rows``, ``store`` and ``pooling``."""

    dim: int
    total_rows: int
    store: RowStore
    pooling: Pooling

    @property
    def has_linear(self) -> bool:
        return "linear" in self.store.tables

    @property
    def device(self) -> torch.device:
        return self.store.device

    @property
    def dtype(self) -> torch.dtype:
        return self.store.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move the rows and their state (``dtype`` applies to floating tensors); returns
        ``self``."""
        self.store.to(device, dtype)
        self.pooling.to(device)
        return self

    def cache_stats(self, reset: bool = True) -> dict[str, float]:
        """The cache's counters since the last call (``{}`` without a cache)."""
        return self.store.stats(reset)

    def close(self) -> None:
        """Stop the store's threads (a cache's prefetch; idempotent)."""
        self.store.close()


class PlainEmbeddingCollection(RowCollection):
    """The stacked embedding table (plus an optional 1-wide linear table) of one process, its
    optimizer state and the pooling: the reference implementation of
    :class:`~trainer.sparse.EmbeddingCollection`.

    Args:
        table_offsets: first global row of each feature (``FeatureLayout.table_offsets``); these
            rows are the null rows.
        total_rows: rows of the stacked table (sum of the features' bucket counts).
        dim: embedding width.
        slot_feature: feature of each slot (``FeatureLayout.slot_feature``; default: one slot per
            feature).
        linear: also keep a 1-wide ``linear`` table on the same ids (DeepFM, Wide&Deep).
        init_std: standard deviation of the normal initialisation of ``emb``.
        adagrad_eps: the ``eps`` of the row-wise Adagrad update.
        seed: seed of the ``torch.Generator`` that draws the initial table.
        device, dtype: where the table and its state live.

    Example (two features of 3 and 2 rows; global ids 0 and 3 are the null rows)::

        coll = PlainEmbeddingCollection([0, 3], total_rows=5, dim=4)
        sparse = coll.lookup(batch)          # batch.ids (U,), batch.inverse (T, N, 2)
    """

    def __init__(
        self,
        table_offsets: Sequence[int] | Tensor,
        total_rows: int,
        dim: int,
        slot_feature: Sequence[int] | Tensor | None = None,
        *,
        linear: bool = False,
        init_std: float = 0.01,
        adagrad_eps: float = 1e-8,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        offsets = torch.as_tensor(table_offsets, dtype=torch.int64).cpu()
        if total_rows < 1 or dim < 1:
            raise ValueError(
                f"embedding table needs total_rows >= 1 and dim >= 1, got {total_rows=} {dim=}"
            )
        if offsets.numel() == 0 or offsets.min() < 0 or offsets.max() >= total_rows:
            raise ValueError(
                f"table_offsets {offsets.tolist()[:8]} must be non-empty rows of a {total_rows}-row table"
            )
        if init_std < 0 or adagrad_eps <= 0:
            raise ValueError(
                f"need init_std >= 0 and adagrad_eps > 0, got {init_std=} {adagrad_eps=}"
            )
        self.dim, self.total_rows = dim, total_rows
        null = torch.zeros(total_rows, dtype=torch.bool)
        null[offsets] = True
        spec = RowSpec(None, null, total_rows, dim, linear, init_std, seed, adagrad_eps)
        self.store = DeviceRows(spec, device, dtype)
        sf = range(offsets.numel()) if slot_feature is None else slot_feature
        self.pooling = Pooling(sf, offsets.numel()).to(device)
        self.rows: LookedUpRows | None = None
        """The last lookup's rows (autograd leaves), until :meth:`apply_gradients`."""

    def lookup(self, batch: Batch) -> SparseOut:
        """Rows of ``batch.ids`` as fresh leaves (kept for :meth:`apply_gradients`), pooled."""
        ids = batch.ids.to(self.device)
        with torch.no_grad():
            got = self.store.read(ids)
        emb = got["emb"].requires_grad_()
        lin = got["linear"].requires_grad_() if "linear" in got else None
        self.rows = LookedUpRows(ids, emb, lin)
        return self.pooling(emb, lin, batch.inverse.to(self.device))

    @torch.no_grad()
    def read(self, batch: Batch) -> SparseOut:
        """The pooled rows of ``batch`` without gradients (evaluation)."""
        got = self.store.read(batch.ids.to(self.device))
        return self.pooling(got["emb"], got.get("linear"), batch.inverse.to(self.device))

    def is_null(self, ids: Tensor) -> Tensor:
        return self.store.null.index_select(0, ids.to(self.device))

    def prefetch(self, batch: Batch) -> None:
        """Nothing to stage (no cache)."""

    def reset_rows(self, ids: Tensor, emb: Tensor) -> None:
        """Start rows ``ids`` (unique global ids) afresh: ``emb`` values, ``linear`` and Adagrad
        state 0 (a dynamic table's newly admitted ids, ``trainer.dynamic``)."""
        self.store.reset(ids.to(self.device), emb)

    def apply_gradients(self, lr: float) -> None:
        """Row-wise Adagrad on the rows of the last :meth:`lookup` with their ``.grad``."""
        rows, self.rows = self.rows, None
        if rows is None:
            raise ValueError("apply_gradients needs a lookup first (one lookup, one apply)")
        self.store.update(rows.ids, rows.grads(), lr)

    def state_dict(self) -> dict[str, Tensor]:
        """Weights and optimizer state as plain tensors (``torch.load(weights_only=True)``-safe)."""
        return self.store.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore ``state_dict()`` output; the table layout must match exactly."""
        self.store.load_state_dict(state)
