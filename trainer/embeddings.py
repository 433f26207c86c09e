"""Embedding storage: one stacked table over all sparse features, with a row-wise Adagrad optimizer.

Every feature has its own table; the tables are stacked into one id space (``global id =
table_offset[feature] + local id``, see ``trainer/data/contract.py``), so one lookup serves all
features. Local id 0 of every feature is the null/padding row: it is initialised to zero and never
updated, so sum pooling over a multi-valued feature ignores its padding slots.

One training step touches the table exactly twice::

    rows = collection.lookup(batch.ids)          # (U,) sorted unique ids: only unique rows (VSI)
    loss = ...(rows.emb, rows.linear, ...)       # support and query read the same rows
    loss.backward()                              # rows.emb.grad: one gradient per unique row
    collection.apply_gradients(batch.ids, rows.grads(), lr)

The interface is deliberately narrow (``lookup``/``apply_gradients``/``state_dict``) so that a
sharded collection (rows owned by ranks, exchanged by AlltoAll) or a cached one (host table behind a
device cache) can replace this class without touching model or meta-learning code. This module never
imports ``torch.distributed``.

MixCache (``cache=``, a :class:`~trainer.cache.CacheSpec`): rows and Adagrad state live in a host
store, the tables below are views of the device cache indexed by *slot*; ``lookup`` and
``apply_gradients`` translate ids to slots and nothing else changes, so training gives bit-identical
parameters with and without the cache. ``prefetch(next_ids)`` stages the next step's misses.

Tables: ``emb`` (``total_rows x dim``) and, for models with first-order terms (DeepFM, Wide&Deep),
``linear`` (``total_rows x 1``). Initialisation: ``emb`` ~ normal(0, ``init_std``) drawn on the CPU
from a ``torch.Generator`` seeded with ``seed`` (so the table is identical on every device), null
rows zeroed; ``linear`` starts at zero (a logistic-regression start).

Optimizer (row-wise Adagrad, as FBGEMM's ``EXACT_ROWWISE_ADAGRAD``), per touched row ``r`` with
gradient ``g_r`` (a ``dim``-vector): ``acc_r += mean(g_r ** 2)``; ``w_r -= lr * g_r / (sqrt(acc_r) +
eps)``. One float of state per row instead of one per weight.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from trainer.cache import CacheSpec, HostStore, MixCache, build_store_columns

TABLES = ("emb", "linear")
INIT_CHUNK_ROWS = 1 << 16
"""Rows drawn per chunk by :func:`draw_initial_rows` (a multiple of 16: chunked draws reproduce one
full draw, CPU ``normal_`` fills 16 values at a time)."""


@dataclass
class Rows:
    """The rows of one batch's unique ids, as autograd leaves (one ``backward`` fills ``.grad``).

    ``emb`` is ``(U, dim)``; ``linear`` is ``(U, 1)`` or ``None`` when the collection has no linear
    table; ``trainable`` is ``(U,)`` bool, ``False`` for null rows (fixed at zero: their gradients
    are dropped, and inner-loop adaptation must leave them alone).
    """

    emb: Tensor
    linear: Tensor | None
    trainable: Tensor
    partials: dict[str, Tensor] | None = None
    """Distributed equivalent substitution (``trainer/parallel/des.py``): per-sample results of the
    substituted operators, ``(T, N, width)`` each (``lr``, ``fm_sum``, ``fm_sq``, ``h1``). The
    model uses them instead of pooling rows for those operators; ``emb`` then has no rows when no
    other operator needs them."""

    def grads(self) -> dict[str, Tensor | None]:
        """Per-table gradients after ``backward`` (``None`` where a table got none)."""
        out: dict[str, Tensor | None] = {"emb": self.emb.grad}
        if self.linear is not None:
            out["linear"] = self.linear.grad
        return out

    def detach(self) -> Rows:
        """The same values without autograd history (for evaluation)."""
        lin = None if self.linear is None else self.linear.detach()
        part = None if self.partials is None else {k: v.detach() for k, v in self.partials.items()}
        return Rows(self.emb.detach(), lin, self.trainable, part)

    def samples(self, positions: slice) -> Rows:
        """The rows for the samples at ``positions`` of each episode (e.g. the support side):
        rows are shared by all samples, per-sample ``partials`` are sliced."""
        if self.partials is None:
            return self
        return replace(self, partials={k: v[:, positions] for k, v in self.partials.items()})


class EmbeddingCollection:
    """The stacked embedding table (plus an optional 1-wide linear table) and its optimizer state.

    Args:
        table_offsets: first global row of each feature (``FeatureLayout.table_offsets``); these
            rows are the null rows.
        total_rows: rows of the stacked table (sum of the features' bucket counts).
        dim: embedding width.
        linear: also keep a 1-wide ``linear`` table on the same ids (DeepFM, Wide&Deep).
        init_std: standard deviation of the normal initialisation of ``emb``.
        adagrad_eps: the ``eps`` of the row-wise Adagrad update.
        seed: seed of the ``torch.Generator`` that draws the initial table.
        device, dtype: where the table and its state live (with a cache: the device cache).
        cache: keep rows and state in a host store behind a device cache (MixCache); one
            segment per feature table, e.g. from ``build_sharding_plan(layout, 1, ...).cache_spec(0)``.

    Example (two features of 3 and 2 rows; global ids 0 and 3 are the null rows)::

        coll = EmbeddingCollection([0, 3], total_rows=5, dim=4)
        rows = coll.lookup(torch.tensor([0, 2, 4]))   # rows.emb: (3, 4); rows.emb[0] == 0
    """

    def __init__(
        self,
        table_offsets: Sequence[int] | Tensor,
        total_rows: int,
        dim: int,
        *,
        linear: bool = False,
        init_std: float = 0.01,
        adagrad_eps: float = 1e-8,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        cache: CacheSpec | None = None,
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
        self.dim = dim
        self.total_rows = total_rows
        self.adagrad_eps = adagrad_eps
        self.cache: MixCache | None = None
        if cache is not None:
            self._init_cached(cache, offsets, linear, init_std, seed, device, dtype)
            return
        gen = torch.Generator().manual_seed(seed)
        emb = torch.empty(total_rows, dim, dtype=dtype).normal_(0.0, init_std, generator=gen)
        null = torch.zeros(total_rows, dtype=torch.bool)
        null[offsets] = True
        emb[null] = 0.0
        self.weights: dict[str, Tensor] = {"emb": emb.to(device)}
        if linear:
            self.weights["linear"] = torch.zeros(total_rows, 1, dtype=dtype, device=device)
        self.accum: dict[str, Tensor] = {
            name: torch.zeros(total_rows, dtype=dtype, device=device) for name in self.weights
        }
        self.null_mask = null.to(device)

    def _init_cached(
        self,
        spec: CacheSpec,
        offsets: Tensor,
        linear: bool,
        init_std: float,
        seed: int,
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> None:
        """Rows and state in a host store (drawn chunk by chunk), tables as cache views."""
        dev = torch.device(device or "cpu")
        store = HostStore(
            self.total_rows,
            build_store_columns(self.dim, linear),
            dtype,
            path=spec.mmap_path,
            pin=dev.type == "cuda",
        )
        store.data.zero_()
        draw_initial_rows(store.column("emb.weight"), None, self.total_rows, init_std, seed)
        store.column("emb.weight")[offsets] = 0.0
        self.cache = MixCache(store, spec, offsets, dev)
        self.weights = {k: self.cache.table(f"{k}.weight") for k in TABLES[: 1 + int(linear)]}
        self.accum = {k: self.cache.table(f"{k}.adagrad_sum") for k in self.weights}
        self.null_mask = self.cache.null  # per slot
        self._offsets = offsets

    @property
    def has_linear(self) -> bool:
        return "linear" in self.weights

    @property
    def device(self) -> torch.device:
        return self.weights["emb"].device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights["emb"].dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move tables and state (``dtype`` applies to floating tensors); returns ``self``."""
        if self.cache is not None:
            if (device is None or torch.device(device) == self.device) and dtype in (
                None,
                self.dtype,
            ):
                return self
            raise ValueError("a cached collection is placed when built (device=, dtype=)")
        self.weights = {k: v.to(device=device, dtype=dtype) for k, v in self.weights.items()}
        self.accum = {k: v.to(device=device, dtype=dtype) for k, v in self.accum.items()}
        self.null_mask = self.null_mask.to(device)
        return self

    @torch.no_grad()
    def lookup(self, ids: Tensor) -> Rows:
        """Rows of ``ids`` (sorted unique global ids) as fresh leaves that require grad."""
        idx = ids if self.cache is None else self.cache.lookup(ids)
        emb = self.weights["emb"].index_select(0, idx).requires_grad_()
        lin = self.weights.get("linear")
        lin = None if lin is None else lin.index_select(0, idx).requires_grad_()
        return Rows(emb, lin, ~self.null_mask.index_select(0, idx))

    def prefetch(self, ids: Tensor, inverse: Tensor | None = None) -> None:
        """Stage the NEXT step's ids (the reader's next batch) in the cache while this step
        computes; a no-op without a cache. ``inverse`` is unused (the DES collection needs it)."""
        if self.cache is not None:
            self.cache.prefetch(ids)

    def cache_stats(self, reset: bool = True) -> dict[str, float]:
        """The cache's counters since the last call (``{}`` without a cache)."""
        return {} if self.cache is None else self.cache.stats(reset)

    @torch.no_grad()
    def apply_gradients(self, ids: Tensor, grads: dict[str, Tensor | None], lr: float) -> None:
        """Row-wise Adagrad on the rows ``ids`` (must be unique, as ``EpisodeBatch.ids`` is).

        ``grads`` maps table name -> ``(U, width)`` gradient (``Rows.grads()``); ``None`` entries
        are skipped. Null rows are never updated, whatever their gradient.
        """
        unknown = [k for k, g in grads.items() if g is not None and k not in self.weights]
        if unknown:
            raise ValueError(
                f"no {unknown[0]!r} table in this collection (tables: {list(self.weights)})"
            )
        idx = ids if self.cache is None else self.cache.slots(ids)
        null = self.null_mask.index_select(0, idx)
        keep = (~null).unsqueeze(1)
        for name, g in grads.items():
            if g is None:
                continue
            w, acc = self.weights[name], self.accum[name]
            g = g.to(w.dtype) * keep
            a = acc.index_select(0, idx).add_(g.square().mean(1))
            acc.index_copy_(0, idx, a)
            step = g.mul_((-lr) / (a.sqrt_().add_(self.adagrad_eps)).unsqueeze(1))
            # ids are unique: a gather-update-scatter beats index_add_'s accumulation.
            w.index_copy_(0, idx, w.index_select(0, idx).add_(step))
        if self.cache is not None and any(g is not None for g in grads.values()):
            self.cache.mark_dirty(ids.masked_select(~null))

    def _row_state(self) -> dict[str, Tensor]:
        """Per-row tensors of the whole table (with a cache: views of the host store)."""
        if self.cache is None:
            out = {f"{k}.weight": v for k, v in self.weights.items()}
            out.update({f"{k}.adagrad_sum": v for k, v in self.accum.items()})
            out["null_mask"] = self.null_mask
            return out
        store = self.cache.store
        out = {name: store.column(name) for name in store.columns}
        null = torch.zeros(self.total_rows, dtype=torch.bool)
        null[self._offsets] = True
        out["null_mask"] = null
        return out

    def state_dict(self) -> dict[str, Tensor]:
        """Weights and optimizer state as plain tensors (``torch.load(weights_only=True)``-safe).

        With a cache: dirty rows are written back first; the row tensors are views of the host
        store (clone them to keep a snapshot), plus the cache's own ``cache.*`` state.
        """
        if self.cache is None:
            return self._row_state()
        cache_state = self.cache.state_dict()  # flushes
        return {**self._row_state(), **cache_state}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore ``state_dict()`` output; the table layout must match exactly. Cache state
        (``cache.*``) is restored by a cached collection and ignored by an uncached one."""
        rows = {k: v for k, v in state.items() if not k.startswith("cache.")}
        mine = self._row_state()
        if set(rows) != set(mine):
            raise ValueError(
                f"embedding state has keys {sorted(rows)}, this collection expects {sorted(mine)} "
                "(a linear table is present only for models with first-order terms)"
            )
        for key, value in mine.items():
            if rows[key].shape != value.shape:
                raise ValueError(
                    f"embedding state {key!r} has shape {tuple(rows[key].shape)}, this collection "
                    f"has {tuple(value.shape)}: the feature layout or embedding_dim differs"
                )
        if not torch.equal(rows["null_mask"].to(mine["null_mask"].device), mine["null_mask"]):
            raise ValueError("embedding state has different null rows: the feature layout differs")
        for key, value in mine.items():
            if key != "null_mask":
                value.copy_(rows[key])
        if self.cache is not None:
            self.cache.load_state_dict({k: v for k, v in state.items() if k.startswith("cache.")})


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
