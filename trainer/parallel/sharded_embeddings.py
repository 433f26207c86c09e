"""Row-sharded embedding collection: the same interface as :class:`trainer.embeddings.EmbeddingCollection`
(``lookup``/``apply_gradients``/``state_dict``), with each rank holding the rows a
:class:`~trainer.parallel.plan.ShardingPlan` gives it, so models and meta learning do not change.

One step, on every rank at once (``ids``: the rank's sorted unique ids, VSI)::

    rows = coll.lookup(batch.ids)
        owner, local = plan.locate(ids); sort by owner          # requests grouped by destination
        exchange_counts(per-owner counts)                      # "splits": W int64
        all_to_all(local rows, int32)                          # "ids":   requests to the owners
        all_to_all(owner's [emb | linear] of those rows)       # "rows":  ONE exchange for both tables
        -> Rows(emb, linear, trainable) as autograd leaves, in ``ids`` order
    ...outer_loss(...).backward()...
    coll.apply_gradients(batch.ids, rows.grads(), lr)
        all_to_all([d emb | d linear] in the same order)       # "grads": back to the owners
        owner: unique(requested rows) + index_add (duplicates from different ranks summed), then
        row-wise Adagrad exactly as the plain collection (null rows never move)

The routing of the last ``lookup`` is kept for ``apply_gradients`` (same ids, same split sizes: no
second count exchange). Every rank must call ``lookup`` and ``apply_gradients`` the same number of
times (they are collectives); ids need not be unique (without VSI every occurrence travels and the
owner sums the duplicates, which is how the bytes saved by VSI are measured).

Initialisation equals the plain collection's bit for bit at every world size: every rank replays the
same seeded normal stream over the full table in chunks (at most ``_INIT_CHUNK_ROWS`` rows in memory)
and keeps its own rows.

MixCache (``cache=plan.cache_spec(rank)``): the shard's rows and Adagrad state live in a host store
and the tables are views of the device cache, indexed by slot (see ``trainer/cache.py``). The rows a
rank serves in a step are the rows the other ranks requested, known only after the ids exchange, so
``prefetch(next_ids)`` runs the NEXT step's count and ids exchanges (a collective: every rank calls
it, with the reader's next batch) and stages those rows while this step computes; the next
``lookup`` reuses that routing instead of exchanging the ids again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import Tensor

from trainer.cache import CacheSpec, HostStore, MixCache, build_store_columns
from trainer.embeddings import Rows, draw_initial_rows
from trainer.parallel.comm import Collectives
from trainer.parallel.plan import ShardingPlan

_INIT_CHUNK_ROWS = 1 << 16
"""Rows drawn per chunk; a multiple of 16, so chunked draws reproduce one full draw (CPU normal_
fills 16 values at a time)."""
PLAN_KEY = "sharding.plan"


def shard_metadata(plan: ShardingPlan, rank: int) -> dict[str, str | int]:
    """The non-tensor entries of a shard's state: which plan and rank it belongs to (the plan as
    JSON text, so that a checkpoint can be resharded without the run's config)."""
    return {
        PLAN_KEY: plan.fingerprint,
        "sharding.plan_json": json.dumps(plan.to_dict(), sort_keys=True),
        "sharding.world_size": plan.world_size,
        "sharding.rank": rank,
    }


@dataclass
class _Route:
    """How the last lookup's ids were sent: kept for the gradients' trip back."""

    ids: Tensor
    order: Tensor
    send: list[int]
    recv: list[int]
    requested: Tensor
    """Local rows the other ranks asked this rank for (int64, grouped by source rank)."""
    unique: Tensor | None = None
    """``unique(requested)`` and its inverse (the rows this rank serves; a cache step)."""
    inverse: Tensor | None = None


class ShardedEmbeddingCollection:
    """This rank's shard of the stacked table (+ linear table) and its row-wise Adagrad state.

    Args:
        plan: the placement of every table (``plan.world_size`` must equal ``comm.world_size``).
        comm: the collectives of this rank (counted).
        init_std, adagrad_eps, seed: as :class:`~trainer.embeddings.EmbeddingCollection`; the same
            ``seed`` gives the same rows as the plain collection.
        device, dtype: where the shard and its state live (with a cache: the device cache).
        cache: keep the shard in a host store behind a device cache (``plan.cache_spec(rank)``).
    """

    def __init__(
        self,
        plan: ShardingPlan,
        comm: Collectives,
        *,
        init_std: float = 0.01,
        adagrad_eps: float = 1e-8,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        cache: CacheSpec | None = None,
    ) -> None:
        if plan.world_size != comm.world_size:
            raise ValueError(
                f"the sharding plan is for {plan.world_size} ranks but the job has {comm.world_size}"
            )
        if init_std < 0 or adagrad_eps <= 0:
            raise ValueError(
                f"need init_std >= 0 and adagrad_eps > 0, got {init_std=} {adagrad_eps=}"
            )
        self.plan, self.comm, self.rank = plan, comm, comm.rank
        self.dim, self.total_rows, self.adagrad_eps = plan.dim, plan.total_rows, adagrad_eps
        owned = plan.owned_ids(self.rank)
        # int32 requests halve the id bytes on the wire while every shard has < 2**31 rows.
        self._id_dtype = torch.int32 if max(plan.rows_per_rank) < 2**31 else torch.int64
        self._route: _Route | None = None
        self._next: _Route | None = None
        self.cache: MixCache | None = None
        null = plan.is_null(owned)
        if cache is not None:
            self._init_cached(cache, owned, null, init_std, seed, device, dtype)
            return
        emb = _draw_rows(owned, plan.total_rows, plan.dim, init_std, seed, dtype)
        emb[null] = 0.0
        self.weights: dict[str, Tensor] = {"emb": emb.to(device)}
        if plan.linear:
            self.weights["linear"] = torch.zeros(len(owned), 1, dtype=dtype, device=device)
        self.accum = {k: torch.zeros(len(owned), dtype=dtype, device=device) for k in self.weights}
        self.null_mask = null.to(device)

    def _init_cached(
        self,
        spec: CacheSpec,
        owned: Tensor,
        null: Tensor,
        init_std: float,
        seed: int,
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> None:
        """The shard in a host store (drawn chunk by chunk), the tables as cache views."""
        dev = torch.device(device or "cpu")
        columns = build_store_columns(self.dim, self.plan.linear)
        store = HostStore(len(owned), columns, dtype, path=spec.mmap_path, pin=dev.type == "cuda")
        store.data.zero_()
        draw_initial_rows(store.column("emb.weight"), owned, self.plan.total_rows, init_std, seed)
        store.column("emb.weight")[null] = 0.0
        self.cache = MixCache(store, spec, null.nonzero().squeeze(1), dev)
        names = ["emb", "linear"] if self.plan.linear else ["emb"]
        self.weights = {k: self.cache.table(f"{k}.weight") for k in names}
        self.accum = {k: self.cache.table(f"{k}.adagrad_sum") for k in names}
        self.null_mask = self.cache.null  # per slot
        self._null_rows = null

    @property
    def has_linear(self) -> bool:
        return "linear" in self.weights

    @property
    def device(self) -> torch.device:
        return self.weights["emb"].device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights["emb"].dtype

    @property
    def local_rows(self) -> int:
        """Rows of this rank's shard."""
        return int(self.weights["emb"].shape[0])

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ShardedEmbeddingCollection:
        """Move the shard and its state (``dtype`` applies to floating tensors); returns ``self``."""
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

    # --------------------------------------------------------------------------------- lookup
    @torch.no_grad()
    def lookup(self, ids: Tensor) -> Rows:
        """Rows of ``ids`` (global ids, normally sorted unique) from their owners, as fresh leaves
        that require grad. A collective: every rank calls it once per step."""
        comm, dim = self.comm, self.dim
        ids = ids.to(self.device)
        route, self._next = self._next, None
        if route is not None and not (ids.shape == route.ids.shape and torch.equal(ids, route.ids)):
            raise ValueError(
                "lookup ids differ from the ids passed to prefetch: prefetch exactly the next "
                "batch's ids (the routing of the next step is exchanged ahead, by every rank)"
            )
        route = route or self._exchange_ids(ids)
        served = self.serve(route)
        got = comm.all_to_all(served, route.recv, route.send, "rows")
        rows = torch.empty_like(got)
        rows[route.order] = got
        self._route = route
        emb = rows[:, :dim].contiguous().requires_grad_()
        lin = rows[:, dim:].contiguous().requires_grad_() if self.has_linear else None
        return Rows(emb, lin, ~self.plan.is_null(ids))

    def _exchange_ids(self, ids: Tensor) -> _Route:
        """Counts and ids to the owners: what each rank will serve (two collectives)."""
        comm = self.comm
        owner, local = self.plan.locate(ids)
        order = torch.argsort(owner, stable=True)
        send_t = torch.bincount(owner, minlength=comm.world_size)
        recv = comm.exchange_counts(send_t).tolist()
        send = send_t.tolist()
        wanted = local.index_select(0, order).to(self._id_dtype)
        requested = comm.all_to_all(wanted, send, recv, "ids").long()
        return _Route(ids, order, send, recv, requested)

    def serve(self, route: _Route) -> Tensor:
        """Packed ``[emb | linear]`` values of the rows requested in ``route`` (one cache step)."""
        if self.cache is None:
            return self._gather(route.requested)
        if route.unique is None:
            route.unique, route.inverse = torch.unique(route.requested, return_inverse=True)
        return self._gather(self.cache.lookup(route.unique).index_select(0, route.inverse))

    def read_local(self, rows: Tensor) -> Tensor:
        """Packed ``[emb | linear]`` values of this step's unique local ``rows`` (one cache step;
        for owner-side computations such as DES). No communication."""
        return self._gather(rows if self.cache is None else self.cache.lookup(rows))

    def _gather(self, idx: Tensor) -> Tensor:
        served = self.weights["emb"].index_select(0, idx)
        if self.has_linear:  # one message for both tables
            served = torch.cat([served, self.weights["linear"].index_select(0, idx)], 1)
        return served

    def prefetch(self, ids: Tensor, inverse: Tensor | None = None) -> None:
        """With a prefetching cache: exchange the NEXT step's ids now and stage the rows the other
        ranks will ask for. A collective when it does anything (every rank calls it, each with
        its next batch's ids); a no-op without a cache. ``inverse`` is unused (DES needs it)."""
        if self.cache is None or not self.cache.spec.prefetch:
            return
        route = self._exchange_ids(ids.to(self.device))
        route.unique, route.inverse = torch.unique(route.requested, return_inverse=True)
        self.cache.prefetch(route.unique)
        self._next = route

    def cache_stats(self, reset: bool = True) -> dict[str, float]:
        """The cache's counters since the last call (``{}`` without a cache)."""
        return {} if self.cache is None else self.cache.stats(reset)

    # ------------------------------------------------------------------------------- optimizer
    @torch.no_grad()
    def apply_gradients(self, ids: Tensor, grads: dict[str, Tensor | None], lr: float) -> None:
        """Send the row gradients of the last :meth:`lookup` (same ``ids``) to their owners, which
        sum them per row and apply row-wise Adagrad (null rows never move). A collective.

        Raises:
            ValueError: ``ids`` are not those of the last lookup, or an unknown table is named.
        """
        route = self._route
        ids = ids.to(self.device)
        if route is None or not (
            ids is route.ids or (ids.shape == route.ids.shape and torch.equal(ids, route.ids))
        ):
            raise ValueError(
                "apply_gradients needs the ids of the last lookup on this collection "
                "(one lookup, one backward, one apply per step)"
            )
        unknown = [k for k, g in grads.items() if g is not None and k not in self.weights]
        if unknown:
            raise ValueError(
                f"no {unknown} table in this collection (tables: {list(self.weights)})"
            )
        U = ids.shape[0]
        parts = []
        for name, w in self.weights.items():  # a table without a gradient gets zeros: no update
            g = grads.get(name)
            width = w.shape[1]
            parts.append(w.new_zeros(U, width) if g is None else g.to(w.dtype).reshape(U, width))
        flat = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        received = self.comm.all_to_all(
            flat.index_select(0, route.order), route.send, route.recv, "grads"
        )
        self._route = None
        if route.unique is None:
            route.unique, route.inverse = torch.unique(route.requested, return_inverse=True)
        rows, inv = route.unique, route.inverse
        summed = received.new_zeros(rows.shape[0], received.shape[1]).index_add_(0, inv, received)
        self.update_local(rows, summed, lr)

    def update_local(self, rows: Tensor, grads: Tensor, lr: float) -> None:
        """Row-wise Adagrad on unique local ``rows`` with packed ``[emb | linear]`` gradients
        (the plain collection's arithmetic; null rows never move). No communication."""
        idx = rows if self.cache is None else self.cache.slots(rows)
        null = self.null_mask.index_select(0, idx)
        keep = (~null).unsqueeze(1)
        col = 0
        for name, w in self.weights.items():
            width = w.shape[1]
            g = grads[:, col : col + width] * keep
            col += width
            acc = self.accum[name]
            a = acc.index_select(0, idx).add_(g.square().mean(1))
            acc.index_copy_(0, idx, a)
            step = g.mul_((-lr) / (a.sqrt_().add_(self.adagrad_eps)).unsqueeze(1))
            w.index_copy_(0, idx, w.index_select(0, idx).add_(step))
        if self.cache is not None:
            self.cache.mark_dirty(rows.masked_select(~null))

    # ----------------------------------------------------------------------------------- state
    def _row_state(self) -> dict[str, Tensor]:
        """Per-row tensors of the shard (with a cache: views of the host store)."""
        if self.cache is None:
            out = {f"{k}.weight": v for k, v in self.weights.items()}
            out.update({f"{k}.adagrad_sum": v for k, v in self.accum.items()})
            out["null_mask"] = self.null_mask
            return out
        store = self.cache.store
        return {**{n: store.column(n) for n in store.columns}, "null_mask": self._null_rows}

    def state_dict(self) -> dict[str, Tensor | str | int]:
        """This rank's shard: the plain collection's keys (local rows only) plus the plan's
        fingerprint, world size and rank (``torch.load(weights_only=True)``-safe). With a cache:
        dirty rows are written back first, the rows are views of the host store, and the cache's
        own state is under ``cache.*``."""
        cache_state = {} if self.cache is None else self.cache.state_dict()
        out: dict[str, Tensor | str | int] = {**self._row_state(), **cache_state}
        out.update(shard_metadata(self.plan, self.rank))
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor | str | int]) -> None:
        """Restore this rank's :meth:`state_dict`, or take this rank's rows of a FULL table (a
        plain collection's ``state_dict``, e.g. a single-process run to warm start from).

        Raises:
            ValueError: the shard was saved under another plan (world size, sharding, layout);
                ``trainer.parallel.reshard`` converts a checkpoint between world sizes.
        """
        if PLAN_KEY not in state:
            from trainer.parallel.reshard import shard_of_full

            state = shard_of_full(self.plan, self.rank, state)
        elif state[PLAN_KEY] != self.plan.fingerprint or state["sharding.rank"] != self.rank:
            raise ValueError(
                f"embedding shard saved by rank {state['sharding.rank']} of "
                f"{state['sharding.world_size']} under plan {state[PLAN_KEY]}, but this is rank "
                f"{self.rank} of {self.plan.world_size} under plan {self.plan.fingerprint}: resume "
                "with the same world size and sharding, or convert the checkpoint with "
                "trainer.parallel.reshard.reshard_states"
            )
        mine = self._row_state()
        expected = set(mine)
        got = {k for k, v in state.items() if isinstance(v, Tensor) and not k.startswith("cache.")}
        if got != expected:
            raise ValueError(
                f"embedding shard has tables {sorted(got)}, this collection {sorted(expected)} "
                "(a linear table is present only for models with first-order terms)"
            )
        for key in expected:
            if state[key].shape != mine[key].shape:
                raise ValueError(
                    f"embedding shard {key!r} has shape {tuple(state[key].shape)}, this one "
                    f"{tuple(mine[key].shape)}: the feature layout or embedding_dim differs"
                )
        for key, value in mine.items():
            if key != "null_mask":
                value.copy_(state[key])
        if self.cache is not None:
            self.cache.load_state_dict({k: v for k, v in state.items() if k.startswith("cache.")})


def _draw_rows(
    owned: Tensor, total_rows: int, dim: int, std: float, seed: int, dtype: torch.dtype
) -> Tensor:
    """Rows ``owned`` (ascending within each table) of the plain collection's initial table."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(len(owned), dim, dtype=dtype)
    start = 0
    while start < total_rows:
        # The last chunk takes the remainder whole (>= _INIT_CHUNK_ROWS rows unless the table is
        # smaller): a tiny trailing chunk would be drawn by a different code path.
        n = total_rows - start
        n = n if n < 2 * _INIT_CHUNK_ROWS else _INIT_CHUNK_ROWS
        chunk = torch.empty(n, dim, dtype=dtype).normal_(0.0, std, generator=gen)
        hit = (owned >= start) & (owned < start + n)
        if hit.any():
            out[hit] = chunk.index_select(0, owned[hit] - start)
        start += n
    return out
