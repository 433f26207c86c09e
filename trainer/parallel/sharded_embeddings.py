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
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import Tensor

from trainer.embeddings import Rows
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


class ShardedEmbeddingCollection:
    """This rank's shard of the stacked table (+ linear table) and its row-wise Adagrad state.

    Args:
        plan: the placement of every table (``plan.world_size`` must equal ``comm.world_size``).
        comm: the collectives of this rank (counted).
        init_std, adagrad_eps, seed: as :class:`~trainer.embeddings.EmbeddingCollection`; the same
            ``seed`` gives the same rows as the plain collection.
        device, dtype: where the shard and its state live.
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
        emb = _draw_rows(owned, plan.total_rows, plan.dim, init_std, seed, dtype)
        null = plan.is_null(owned)
        emb[null] = 0.0
        self.weights: dict[str, Tensor] = {"emb": emb.to(device)}
        if plan.linear:
            self.weights["linear"] = torch.zeros(len(owned), 1, dtype=dtype, device=device)
        self.accum = {k: torch.zeros(len(owned), dtype=dtype, device=device) for k in self.weights}
        self.null_mask = null.to(device)
        # int32 requests halve the id bytes on the wire while every shard has < 2**31 rows.
        self._id_dtype = torch.int32 if max(plan.rows_per_rank) < 2**31 else torch.int64
        self._route: _Route | None = None

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
        owner, local = self.plan.locate(ids)
        order = torch.argsort(owner, stable=True)
        send_t = torch.bincount(owner, minlength=comm.world_size)
        recv = comm.exchange_counts(send_t).tolist()
        send = send_t.tolist()
        wanted = local.index_select(0, order).to(self._id_dtype)
        requested = comm.all_to_all(wanted, send, recv, "ids").long()
        served = self.weights["emb"].index_select(0, requested)
        if self.has_linear:  # one message for both tables
            served = torch.cat([served, self.weights["linear"].index_select(0, requested)], 1)
        got = comm.all_to_all(served, recv, send, "rows")
        rows = torch.empty_like(got)
        rows[order] = got
        self._route = _Route(ids, order, send, recv, requested)
        emb = rows[:, :dim].contiguous().requires_grad_()
        lin = rows[:, dim:].contiguous().requires_grad_() if self.has_linear else None
        return Rows(emb, lin, ~self.plan.is_null(ids))

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
        rows, inv = torch.unique(route.requested, return_inverse=True)
        summed = received.new_zeros(rows.shape[0], received.shape[1]).index_add_(0, inv, received)
        self._adagrad(rows, summed, lr)

    def _adagrad(self, rows: Tensor, grads: Tensor, lr: float) -> None:
        """Row-wise Adagrad on unique local ``rows`` (the plain collection's arithmetic)."""
        keep = (~self.null_mask.index_select(0, rows)).unsqueeze(1)
        col = 0
        for name, w in self.weights.items():
            width = w.shape[1]
            g = grads[:, col : col + width] * keep
            col += width
            acc = self.accum[name]
            a = acc.index_select(0, rows).add_(g.square().mean(1))
            acc.index_copy_(0, rows, a)
            step = g.mul_((-lr) / (a.sqrt_().add_(self.adagrad_eps)).unsqueeze(1))
            w.index_copy_(0, rows, w.index_select(0, rows).add_(step))

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Tensor | str | int]:
        """This rank's shard: the plain collection's keys (local rows only) plus the plan's
        fingerprint, world size and rank (``torch.load(weights_only=True)``-safe)."""
        out: dict[str, Tensor | str | int] = {f"{k}.weight": v for k, v in self.weights.items()}
        out.update({f"{k}.adagrad_sum": v for k, v in self.accum.items()})
        out["null_mask"] = self.null_mask
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
        mine = self.state_dict()
        expected = {k for k, v in mine.items() if isinstance(v, Tensor)}
        got = {k for k, v in state.items() if isinstance(v, Tensor)}
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
        for k in self.weights:
            self.weights[k].copy_(state[f"{k}.weight"])
            self.accum[k].copy_(state[f"{k}.adagrad_sum"])


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
