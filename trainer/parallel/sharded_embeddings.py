"""Row-sharded embedding collection: the :class:`~trainer.sparse.EmbeddingCollection` of every
configuration except the plain reference (several ranks, MixCache, DES; world size 1 included).
Each rank holds the rows a :class:`~trainer.parallel.plan.ShardingPlan` gives it.

One step, on every rank at once (``batch.ids``: the rank's sorted unique ids, VSI)::

    sparse = coll.lookup(batch)
        owner, local = plan.locate(ids); sort by owner          # requests grouped by destination
        exchange_counts(per-owner counts)                      # "splits": W int64
        all_to_all(local rows, int32)                          # "ids":   requests to the owners
        all_to_all(owner's [emb | linear] of those rows)       # "rows":  ONE exchange for both tables
        -> rows as autograd leaves (ids order), pooled into SparseOut
    ...outer_loss(...).backward()...
    coll.apply_gradients(lr)
        all_to_all([d emb | d linear] in the same order)       # "grads": back to the owners
        owner: unique(requested rows) + index_add (duplicates from different ranks summed), then
        row-wise Adagrad exactly as the plain collection (null rows never move)

The routing of the last ``lookup`` is kept for ``apply_gradients`` (same split sizes: no second
count exchange). Every rank must call ``lookup`` and ``apply_gradients`` the same number of times
(they are collectives); ids need not be unique (without VSI every occurrence travels and the owner
sums the duplicates, which is how the bytes saved by VSI are measured). ``read`` (evaluation) is
the same exchange without gradients.

Storage: a :class:`~trainer.embeddings.DeviceRows` or, with ``cache=plan.cache_spec(rank)``, a
:class:`~trainer.cache.CachedRows` (the shard in a host store behind a device cache), chosen once
in the constructor. Initialisation equals the plain collection's bit for bit at every world size:
every rank replays the same seeded normal stream over the full table in chunks and keeps its rows.
The rows a rank serves are the rows the other ranks requested, known only after the ids exchange,
so ``prefetch(next_batch)`` runs the NEXT step's count and ids exchanges (a collective) and stages
those rows while this step computes; the next ``lookup`` reuses that routing.

DES (``use_des``, :mod:`trainer.parallel.des`): the owners compute the substituted operators'
partial sums and ``lookup`` returns them in the :class:`~trainer.sparse.SparseOut`; their return
trip is an ``autograd.Function``, so ``loss.backward()`` carries the gradients to the owners and
``apply_gradients`` updates the owners' rows without another exchange.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from trainer.cache import CachedRows, CacheSpec
from trainer.embeddings import DeviceRows, RowCollection, RowSpec, RowStore
from trainer.parallel.comm import Collectives
from trainer.parallel.plan import ShardingPlan
from trainer.sparse import Batch, LookedUpRows, Pooling, SparseOut

PLAN_KEY = "sharding.plan"
ROW_KEYS = ("emb.weight", "linear.weight", "emb.adagrad_sum", "linear.adagrad_sum", "null_mask")
"""The per-row tensors of a collection's state (a full table's or a shard's)."""
REPLICATED_PREFIX = "dynamic."


def replicated_entries(state: dict[str, Any]) -> dict[str, Any]:
    """The entries every rank holds whole (a dynamic table's id maps, ``dynamic.*``): carried
    unchanged through merging and resharding."""
    return {k: v for k, v in state.items() if k.startswith(REPLICATED_PREFIX)}


def shard_metadata(plan: ShardingPlan, rank: int) -> dict[str, str | int]:
    """The non-tensor entries of a shard's state: which plan and rank it belongs to (the plan as
    JSON text, so that a checkpoint can be resharded without the run's config)."""
    return {
        PLAN_KEY: plan.fingerprint,
        "sharding.plan_json": json.dumps(plan.to_dict(), sort_keys=True),
        "sharding.world_size": plan.world_size,
        "sharding.rank": rank,
    }


def shard_of_full(plan: ShardingPlan, rank: int, full: dict[str, Any]) -> dict[str, Any]:
    """Rank ``rank``'s shard of a full table under ``plan``.

    Raises:
        ValueError: the table's row count is not the plan's.
    """
    rows = full["emb.weight"].shape[0]
    if rows != plan.total_rows or full["emb.weight"].shape[1] != plan.dim:
        raise ValueError(
            f"the embedding table is {tuple(full['emb.weight'].shape)}, the sharding plan expects "
            f"({plan.total_rows}, {plan.dim}): built for another feature layout or embedding_dim"
        )
    ids = plan.owned_ids(rank)
    out: dict[str, Any] = {
        k: full[k].index_select(0, ids.to(full[k].device)).clone() for k in ROW_KEYS if k in full
    }
    out.update(replicated_entries(full))
    out.update(shard_metadata(plan, rank))
    return out


class Substitution(Protocol):
    """What the collection calls on DES (``trainer.parallel.des.DESExchange``, built over it)."""

    ops: tuple[str, ...] | None

    def lookup(self, batch: Batch) -> SparseOut | None:
        """The substituted operators' results, or None for a step on the row exchange."""
        ...

    def prefetch(self, batch: Batch) -> bool:
        """Stage the next DES step (True), or False when steps use the row exchange."""
        ...

    def take_owner_gradients(self) -> tuple[Tensor, Tensor]:
        """This owner's rows of the last DES step and their packed gradients."""
        ...

    def owner_gradients(self) -> tuple[Tensor, Tensor] | None: ...

    def metrics(self) -> dict[str, float | str]: ...


@dataclass
class _Route:
    """How a lookup's ids were sent: kept for the gradients' trip back."""

    ids: Tensor
    order: Tensor
    send: list[int]
    recv: list[int]
    requested: Tensor
    """Local rows the other ranks asked this rank for (int64, grouped by source rank)."""
    unique: Tensor
    """``unique(requested)`` and its inverse: the rows this rank serves (one store read)."""
    inverse: Tensor


class ShardedEmbeddingCollection(RowCollection):
    """This rank's shard of the stacked table (+ linear table), its row-wise Adagrad state and the
    pooling (see the module docstring).

    Args:
        plan: the placement of every table (``plan.world_size`` must equal ``comm.world_size``).
        comm: the collectives of this rank (counted).
        slot_feature: feature of each slot (``FeatureLayout.slot_feature``; default: one slot per
            feature).
        init_std, adagrad_eps, seed: as :class:`~trainer.embeddings.PlainEmbeddingCollection`; the
            same ``seed`` gives the same rows as the plain collection.
        device, dtype: where the shard and its state live (with a cache: the device cache).
        cache: keep the shard in a host store behind a device cache (``plan.cache_spec(rank)``).
    """

    def __init__(
        self,
        plan: ShardingPlan,
        comm: Collectives,
        slot_feature: Sequence[int] | Tensor | None = None,
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
        self.dim, self.total_rows = plan.dim, plan.total_rows
        owned = plan.owned_ids(self.rank)
        # int32 requests halve the id bytes on the wire while every shard has < 2**31 rows.
        self._id_dtype = torch.int32 if max(plan.rows_per_rank) < 2**31 else torch.int64
        rows = RowSpec(
            owned, plan.is_null(owned), plan.total_rows, plan.dim, plan.linear, init_std, seed,
            adagrad_eps,
        )  # fmt: skip
        self.store: RowStore = (
            DeviceRows(rows, device, dtype)
            if cache is None
            else CachedRows(cache, rows, device, dtype)
        )
        sf = range(len(plan.tables)) if slot_feature is None else slot_feature
        self.pooling = Pooling(sf, len(plan.tables)).to(self.device)
        self.des: Substitution | None = None
        """DES over this shard (:meth:`use_des`); None: every step exchanges rows."""
        self.rows: LookedUpRows | None = None
        """The last row-exchange lookup's leaves, until :meth:`apply_gradients`."""
        self._route: _Route | None = None
        self._next: _Route | None = None
        self._des_step = False

    def use_des(self, des: Substitution) -> None:
        """Substitute operators with DES from the next lookup on (``des`` is built over ``self``)."""
        self.des = des

    def is_null(self, ids: Tensor) -> Tensor:
        return self.plan.is_null(ids.to(self.device))

    # --------------------------------------------------------------------------------- lookup
    def lookup(self, batch: Batch) -> SparseOut:
        """Training lookup (a collective: every rank calls it once per step): DES's partial sums
        when DES substitutes operators on this step, else the rows of ``batch.ids`` from their
        owners as fresh leaves, pooled."""
        self._des_step = False
        if self.des is not None:
            sparse = self.des.lookup(batch)
            if sparse is not None:
                self._des_step = True
                return sparse
        ids = batch.ids.to(self.device)
        route, self._next = self._next, None
        if route is not None and not (ids.shape == route.ids.shape and torch.equal(ids, route.ids)):
            raise ValueError(
                "lookup ids differ from the ids passed to prefetch: prefetch exactly the next "
                "batch's ids (the routing of the next step is exchanged ahead, by every rank)"
            )
        route = route or self._exchange_ids(ids)
        with torch.no_grad():
            got = self._fetch(route)
        self._route = route
        emb = got[:, : self.dim].contiguous().requires_grad_()
        lin = got[:, self.dim :].contiguous().requires_grad_() if self.has_linear else None
        self.rows = LookedUpRows(ids, emb, lin)
        return self.pooling(emb, lin, batch.inverse.to(self.device))

    @torch.no_grad()
    def read(self, batch: Batch) -> SparseOut:
        """Evaluation lookup: the row exchange (never DES: exact, whatever is adapted) without
        gradients. A collective."""
        if self._next is not None:
            raise ValueError("read between prefetch and its lookup: prefetch no batch before it")
        got = self._fetch(self._exchange_ids(batch.ids.to(self.device)))
        lin = got[:, self.dim :] if self.has_linear else None
        return self.pooling(got[:, : self.dim], lin, batch.inverse.to(self.device))

    def _fetch(self, route: _Route) -> Tensor:
        """Packed ``[emb | linear]`` rows of ``route.ids`` from their owners (one AlltoAll)."""
        got = self.store.read(route.unique)  # one cache step when the shard is cached
        served = torch.cat(list(got.values()), 1) if len(got) > 1 else got["emb"]
        served = served.index_select(0, route.inverse)
        got = self.comm.all_to_all(served, route.recv, route.send, "rows")
        rows = torch.empty_like(got)
        rows[route.order] = got
        return rows

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
        unique, inverse = torch.unique(requested, return_inverse=True)
        return _Route(ids, order, send, recv, requested, unique, inverse)

    def prefetch(self, batch: Batch) -> None:
        """With a prefetching cache: exchange the NEXT step's ids now and stage the rows the other
        ranks will ask for (DES: its request). A collective when it does anything (every rank
        calls it, each with its next batch); a no-op without a prefetching cache."""
        if not self.store.prefetches:
            return
        if self.des is not None and self.des.prefetch(batch):
            return
        route = self._exchange_ids(batch.ids.to(self.device))
        self.store.prefetch(route.unique)
        self._next = route

    def reset_rows(self, ids: Tensor, emb: Tensor) -> None:
        """Start rows ``ids`` (unique global ids, the same on every rank) afresh: this rank resets
        those it owns (``emb`` values, ``linear`` and Adagrad state 0). No collective."""
        owner, local = self.plan.locate(ids.to(self.device))
        mine = owner == self.rank
        self.store.reset(local[mine], emb.to(self.device)[mine])

    # ------------------------------------------------------------------------------- optimizer
    @torch.no_grad()
    def apply_gradients(self, lr: float) -> None:
        """Row-wise Adagrad with the last lookup's gradients. After a row exchange: send the rows'
        gradients to their owners, which sum them per row and update (a collective). After a DES
        lookup: the owners already hold their rows' gradients (``loss.backward()`` took them
        there); no exchange.

        Raises:
            ValueError: no lookup since the last apply.
        """
        if self._des_step:
            assert self.des is not None
            self._des_step = False
            rows, grads = self.des.take_owner_gradients()
            self.store.update(rows, self._split(grads), lr)
            return
        route, rows = self._route, self.rows
        self._route = self.rows = None
        if route is None or rows is None:
            raise ValueError("apply_gradients needs a lookup first (one lookup, one apply)")
        U = route.ids.shape[0]
        parts = []
        for name, g in rows.grads().items():  # a table without a gradient gets zeros: no update
            width = self.dim if name == "emb" else 1
            parts.append(
                torch.zeros(U, width, dtype=self.dtype, device=self.device) if g is None else g
            )
        flat = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        received = self.comm.all_to_all(
            flat.index_select(0, route.order), route.send, route.recv, "grads"
        )
        summed = received.new_zeros(route.unique.shape[0], received.shape[1])
        summed.index_add_(0, route.inverse, received)
        self.store.update(route.unique, self._split(summed), lr)

    def _split(self, packed: Tensor) -> dict[str, Tensor | None]:
        """Per-table views of packed ``[emb | linear]`` gradients."""
        out: dict[str, Tensor | None] = {"emb": packed[:, : self.dim]}
        if self.has_linear:
            out["linear"] = packed[:, self.dim :]
        return out

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Tensor | str | int]:
        """This rank's shard: the plain collection's keys (local rows only) plus the plan's
        fingerprint, world size and rank (``torch.load(weights_only=True)``-safe). With a cache:
        dirty rows are written back first, the rows are views of the host store, and the cache's
        own state is under ``cache.*``."""
        out: dict[str, Tensor | str | int] = {**self.store.state_dict()}
        out.update(shard_metadata(self.plan, self.rank))
        return out

    def load_state_dict(self, state: dict[str, Tensor | str | int]) -> None:
        """Restore this rank's :meth:`state_dict`, or take this rank's rows of a FULL table (a
        plain collection's ``state_dict``, e.g. a single-process run to warm start from).

        Raises:
            ValueError: the shard was saved under another plan (world size, sharding, layout);
                ``trainer.parallel.reshard`` converts a checkpoint between world sizes.
        """
        if PLAN_KEY not in state:
            state = shard_of_full(self.plan, self.rank, state)
        elif state[PLAN_KEY] != self.plan.fingerprint or state["sharding.rank"] != self.rank:
            raise ValueError(
                f"embedding shard saved by rank {state['sharding.rank']} of "
                f"{state['sharding.world_size']} under plan {state[PLAN_KEY]}, but this is rank "
                f"{self.rank} of {self.plan.world_size} under plan {self.plan.fingerprint}: resume "
                "with the same world size and sharding, or convert the checkpoint with "
                "trainer.parallel.reshard.reshard_states"
            )
        self.store.load_state_dict({k: v for k, v in state.items() if isinstance(v, Tensor)})
