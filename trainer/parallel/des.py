"""Distributed equivalent substitution (DES, Rong et al. SIGIR 2020) over the sharded embeddings:
the rank that OWNS rows computes the substituted operators' partial results for every requesting
rank's samples, and only those travel. Which operators, their byte model and the meta-learning
rules are in :mod:`trainer.parallel.des_plan`.

    model, plan = build_parallel_model(cfg.model, layout, env, cfg.parallel, meta=cfg.meta)
    des = model.embeddings                         # a DESEmbeddings when parallel.des != "off"
    rows = des.lookup(batch.ids, batch.inverse)    # partial results (+ rows still needed)
    loss, stats = outer_loss(model, rows, batch, cfg.meta, normalizer)
    loss.backward()
    des.backward(rows)          # partial-result gradients to the owners: W1.grad, row gradients
    env.reduce_dense_grads(model.parameters())     # W1's owner-side gradients summed here
    optimizers.step(batch.ids, rows)               # Adam; owners' row-wise Adagrad, no exchange

One step, on every rank (requester ``r`` with ``B`` samples; owner ``j``)::

    header   all_to_all (W, 3) int64: unique rows, owned non-null slots, samples     "des.header"
    request  all_to_all bytes: [owner's unique local rows int32 | per owned slot the
             index into them int16/32 | bitmask of owned slots]                      "des.request"
    owner    rows R (leaves) -> per sample and field e_f^j (pooling) -> partials
             [lr | fm_sum, fm_sq, fm_split | h1 = concat(e^j) @ W1]  (B_r, P) per requester
    forward  all_to_all floats: partials (+ rows of tables still needed)              "des.forward"
    requester  P = sum over owners (a leaf) -> rows.partials -> model -> loss.backward()
    backward all_to_all floats: dL/dP to every owner (+ row gradients)               "des.backward"
    owner    autograd.backward(partials, dL/dP) -> R.grad, W1.grad; + received row gradients
    apply    owner: row-wise Adagrad on its rows (no gradient exchange)

Equivalence: pooling and the first layer are linear in the rows and FM composes as derived in
``des_plan``, so results and gradients equal the unsubstituted computation up to the order of the
float sums (tested at world size 1, 2 and 4 for every model, plain, MAML and FOMAML).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trainer.embeddings import Rows
from trainer.parallel import des_plan
from trainer.parallel.des_plan import DESModel, RequestCounts
from trainer.parallel.sharded_embeddings import ShardedEmbeddingCollection

log = logging.getLogger(__name__)
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


@dataclass
class _Requester:
    """This rank's side of the step: which owner got which of its rows, and its partials leaf."""

    per_owner: list[Tensor]
    """Per owner: positions (in ``ids`` order) of the rows asked of it."""
    partial: Tensor | None = None


@dataclass
class _Owner:
    """The owner's side of the step: its graph and who asked for which rows."""

    rows: Tensor
    """Unique local rows served this step."""
    inverse: list[Tensor]
    """Per requester: positions in ``rows`` of the rows it asked for (its order)."""
    samples: list[int]
    out: Tensor | None
    leaves: dict[str, Tensor] = field(default_factory=dict)
    grads: Tensor | None = None


class DESEmbeddings:
    """DES in front of a :class:`ShardedEmbeddingCollection` (see the module docstring).

    Args:
        coll: this rank's shard (its plan, collectives and rows).
        model: the model (the first layer's weights are read on the owners).
        mode: ``on`` (every operator that applies, else ``ValueError``), ``auto`` (the cheapest
            admissible subset, decided on the first step) or an explicit tuple of operators.
        meta: the ``MetaConfig`` (what the inner loop adapts); None for plain training.
    """

    def __init__(
        self,
        coll: ShardedEmbeddingCollection,
        model: Any,
        mode: str | tuple[str, ...] = "auto",
        meta: Any | None = None,
    ) -> None:
        self.coll, self.model, self.plan, self.comm = coll, model, coll.plan, coll.comm
        self.spec: DESModel = des_plan.describe_model(model, self.plan)
        self.slot_feature = model.sparse_arch.pool_matrix.argmax(1).to(coll.device)
        self.allowed, self.excluded = des_plan.admissible(model, self.spec, meta)
        self.ops: tuple[str, ...] | None = None
        if mode == "on":
            self.ops = des_plan.check_on(model, self.spec, meta)
        elif isinstance(mode, tuple):
            bad = [o for o in mode if o not in self.allowed]
            if bad:
                raise ValueError(f"DES cannot substitute {bad} here: {'; '.join(self.excluded)}")
            self.ops = tuple(o for o in des_plan.OPERATORS if o in mode)
        elif mode != "auto":
            raise ValueError(f"DES mode must be on, auto or a tuple of operators, got {mode!r}")
        self.estimates: dict[str, float] = {}
        self._req: _Requester | None = None
        self._own: _Owner | None = None
        self._next: dict[str, Any] | None = None

    # ---------------------------------------------------------- the collection's attributes
    dim = property(lambda self: self.coll.dim)
    total_rows = property(lambda self: self.coll.total_rows)
    has_linear = property(lambda self: self.coll.has_linear)
    device = property(lambda self: self.coll.device)
    dtype = property(lambda self: self.coll.dtype)

    def state_dict(self) -> dict[str, Any]:
        return self.coll.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coll.load_state_dict(state)

    def cache_stats(self, reset: bool = True) -> dict[str, float]:
        return self.coll.cache_stats(reset)

    def metrics(self) -> dict[str, float | str]:
        """The decision and the byte estimates it was made on (all ranks' first step, summed)."""
        ops = self.ops if self.ops is not None else ()
        return {"des.ops": des_plan.subset_name(ops), **self.estimates}

    # ------------------------------------------------------------------------- forward
    @torch.no_grad()
    def lookup(self, ids: Tensor, inverse: Tensor) -> Rows:
        """Partial results of the substituted operators for this rank's samples (``inverse``
        ``(T, N, S)`` into ``ids``), plus the rows of tables some other operator still needs.
        A collective: every rank calls it once per step."""
        ids, inverse = ids.to(self.device), inverse.to(self.device)
        ahead, self._next = self._next, None
        if ahead is not None:
            if not (torch.equal(ahead["ids"], ids) and torch.equal(ahead["inverse"], inverse)):
                raise ValueError("lookup ids/inverse differ from those passed to prefetch")
            return self._exchange(ids, inverse, ahead)
        req = None
        if self.ops is None:
            req = self._request(ids, inverse)
            self._decide(req)
        if not self.ops:  # the plain row exchange
            self._req = self._own = None
            return self.coll.lookup(ids)
        return self._exchange(ids, inverse, self._send(req or self._request(ids, inverse)))

    def prefetch(self, ids: Tensor, inverse: Tensor | None = None) -> None:
        """With a prefetching cache: send the NEXT step's request now and stage the rows the
        other ranks ask this owner for (a collective; every rank calls it with its next batch).
        Steps on the plain row exchange prefetch like the sharded collection."""
        cache = self.coll.cache
        if cache is None or not cache.spec.prefetch or self.ops is None:
            return
        if not self.ops:
            self.coll.prefetch(ids)
            return
        if inverse is None:
            raise ValueError("DES prefetch needs the next batch's inverse too")
        ids, inverse = ids.to(self.device), inverse.to(self.device)
        req = self._send(self._request(ids, inverse))
        req.update(ids=ids, inverse=inverse)
        cache.prefetch(torch.unique(torch.cat(req["locals"])))
        self._next = req

    def _send(self, req: dict[str, Any]) -> dict[str, Any]:
        """Header and request to the owners; adds what this rank received as an owner."""
        comm, W = self.comm, self.comm.world_size
        c: RequestCounts = req["counts"]
        head = torch.tensor(
            [[u, n, c.samples] for u, n in zip(c.unique, c.owned_slots, strict=True)],
            dtype=torch.int64,
            device=self.device,
        )
        got = comm.all_to_all(head, [1] * W, [1] * W, "des.header").tolist()
        sizes = [m.numel() for m in req["msgs"]]
        recv = [4 * u + des_plan.index_bytes(u) * n + -(-b * c.slots // 8) for u, n, b in got]
        data = comm.all_to_all(torch.cat(req["msgs"]), sizes, recv, "des.request")
        req.update(got=got, locals=[], decoded=[], positions=[])
        off = 0
        for u, n, b in got:  # per requester: its local rows, slot indices, owned positions
            ib = des_plan.index_bytes(u)
            req["locals"].append(data[off : off + 4 * u].clone().view(torch.int32).long())
            off += 4 * u
            dt = torch.int16 if ib == 2 else torch.int32
            req["decoded"].append(data[off : off + ib * n].clone().view(dt).long())
            off += ib * n
            nbytes = -(-b * c.slots // 8)
            bits = (data[off : off + nbytes, None] >> torch.arange(8, device=data.device)) & 1
            req["positions"].append(bits.reshape(-1)[: b * c.slots].nonzero().squeeze(1))
            off += nbytes
        return req

    def _request(self, ids: Tensor, inverse: Tensor) -> dict[str, Any]:
        """Per owner: its unique rows, and which of this rank's slots they fill."""
        W, S = self.comm.world_size, inverse.shape[-1]
        owner, local = self.plan.locate(ids)
        null = self.plan.is_null(ids)
        order = torch.argsort(owner, stable=True)
        unique = torch.bincount(owner, minlength=W)
        starts = torch.cumsum(unique, 0) - unique
        # Position of each id within its owner's list (explicit index ops: fast on CPU too).
        rank_in_all = torch.arange(ids.numel(), device=ids.device)
        pos = torch.empty_like(owner).index_copy_(
            0, order, rank_in_all - starts.index_select(0, owner.index_select(0, order))
        )
        flat = inverse.reshape(-1)
        slot_null = null.index_select(0, flat)
        slot_owner = torch.where(slot_null, -1, owner.index_select(0, flat))
        flat_pos = pos.index_select(0, flat)
        msgs, owned = [], []
        local_sorted = local.index_select(0, order).to(torch.int32)
        for j, (a, u) in enumerate(zip(starts.tolist(), unique.tolist(), strict=True)):
            mine = slot_owner == j
            dt = torch.int16 if des_plan.index_bytes(u) == 2 else torch.int32
            uidx = flat_pos.masked_select(mine).to(dt)
            owned.append(int(uidx.numel()))
            bits = torch.nn.functional.pad(mine.to(torch.uint8), (0, -mine.numel() % 8))
            mask = (bits.view(-1, 8) * _BITS.to(bits.device)).sum(1, dtype=torch.uint8)
            msgs.append(
                torch.cat([local_sorted[a : a + u].view(torch.uint8), uidx.view(torch.uint8), mask])
            )
        counts = RequestCounts(flat.numel() // S, S, unique.tolist(), owned, self.comm.rank)
        per_owner = list(torch.split(order, unique.tolist()))
        return {
            "order": order,
            "msgs": msgs,
            "counts": counts,
            "null": null,
            "per_owner": per_owner,
        }

    def _decide(self, req: dict[str, Any]) -> None:
        """``auto``: the cheapest admissible subset on this step's counts summed over ranks."""
        c, elem = req["counts"], self.coll.weights["emb"].element_size()
        subsets = des_plan.candidates(self.allowed)
        parts = des_plan.breakdown(self.spec, c, elem)
        values = [des_plan.candidate_bytes(self.spec, c, s, elem) for s in subsets]
        values += [*parts.values(), c.samples]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.comm.all_reduce(t, "des.decide")
        summed = t.tolist()
        totals = dict(zip(subsets, summed[: len(subsets)], strict=True))
        self.ops = des_plan.choose(totals)
        samples = max(summed[-1], 1.0)
        self.estimates = {
            f"des.bytes_per_sample.{des_plan.subset_name(s)}": v / samples
            for s, v in totals.items()
        }
        rest = summed[len(subsets) : -1]
        self.estimates.update(
            {f"des.bytes_per_sample.{k}": v / samples for k, v in zip(parts, rest, strict=True)}
        )
        if self.comm.rank == 0:
            log.info(
                "DES auto: %s (bytes/sample: %s)%s",
                des_plan.subset_name(self.ops),
                ", ".join(
                    f"{des_plan.subset_name(s)} {v / samples:,.0f}" for s, v in totals.items()
                ),
                f"; left out: {'; '.join(self.excluded)}" if self.excluded else "",
            )

    def _exchange(self, ids: Tensor, inverse: Tensor, req: dict[str, Any]) -> Rows:
        comm, spec, ops = self.comm, self.spec, self.ops
        c: RequestCounts = req["counts"]
        own = self._owner_forward(req, c.slots)
        # Forward: per requester, its partials then the rows of tables still needed.
        widths = spec.widths(ops)
        tables = spec.row_tables(ops)
        P, w = sum(widths.values()), sum(self.dim if t == "emb" else 1 for t in tables)
        served = self._served(own, tables)
        out = own.out.detach() if own.out is not None else None
        parts, start = [], 0
        for r, b in enumerate(own.samples):
            if out is not None:
                parts.append(out[start : start + b].reshape(-1))
            parts.append(served.index_select(0, own.inverse[r]).reshape(-1))
            start += b
        send = [b * P + len(inv) * w for b, inv in zip(own.samples, own.inverse, strict=True)]
        back = [c.samples * P + u * w for u in c.unique]
        flat = comm.all_to_all(torch.cat(parts), send, back, "des.forward")
        # Requester: sum the owners' partials (rank order), place the rows in ids order.
        pieces = torch.split(flat, back)
        psum = None
        rows = flat.new_zeros(ids.numel(), w)
        a = 0
        order = req["order"]
        self._req = _Requester(req["per_owner"])
        for j, piece in enumerate(pieces):
            part, got_rows = piece[: c.samples * P], piece[c.samples * P :]
            if P:
                part = part.view(c.samples, P)
                psum = part.clone() if psum is None else psum + part
            u = c.unique[j]
            rows.index_copy_(0, order[a : a + u], got_rows.view(u, w))
            a += u
        self._own = own
        return self._rows(ids, inverse, psum, rows, tables, widths, req["null"])

    def _owner_forward(self, req: dict[str, Any], S: int) -> _Owner:
        """Read the requested rows once and compute the partials with autograd."""
        locals_, uidx, positions = req["locals"], req["decoded"], req["positions"]
        samples = [b for _, _, b in req["got"]]
        all_local = torch.cat(locals_)
        rows, inv = torch.unique(all_local, return_inverse=True)
        inverse = list(torch.split(inv, [len(x) for x in locals_]))
        own = _Owner(rows, inverse, samples, None)
        values = self.coll.read_local(rows)  # one cache step when the shard is cached
        widths = self.spec.widths(self.ops)
        D, F = self.dim, self.spec.num_fields
        emb = values[:, :D].clone().requires_grad_()
        lin = values[:, D:].clone().requires_grad_() if self.has_linear else None
        own.leaves = {"emb": emb, **({"linear": lin} if lin is not None else {})}
        # Every requester's owned slots -> (sample, field) over all requesters' samples.
        sample_base = torch.tensor([0, *samples], device=self.device).cumsum(0)
        row_of, sample_of, slot_of = [], [], []
        for r, pos in enumerate(positions):
            row_of.append(inverse[r].index_select(0, uidx[r]))
            sample_of.append(pos // S + sample_base[r])
            slot_of.append(pos % S)
        row_of, sample_of = torch.cat(row_of), torch.cat(sample_of)
        field_of = self.slot_feature.index_select(0, torch.cat(slot_of))
        B = int(sample_base[-1])
        with torch.enable_grad():
            e = emb.new_zeros(B * F, D).index_add(
                0, sample_of * F + field_of, emb.index_select(0, row_of)
            )
            e = e.view(B, F, D)
            parts = []
            if "lr" in widths:
                assert lin is not None
                parts.append(
                    lin.new_zeros(B).index_add(0, sample_of, lin.index_select(0, row_of)[:, 0])[
                        :, None
                    ]
                )
            if "fm_sum" in widths:
                split = list(self.spec.split_fields)
                whole = [f for f in range(F) if f not in split]
                parts.append(e.sum(1))
                parts.append(e[:, whole].square().sum((1, 2))[:, None])
                parts.append(e[:, split].flatten(1))
            if "h1" in widths:
                w1 = self.model.dense_half.get_submodule(self.spec.first_layer).weight
                parts.append(e.flatten(1) @ w1)
            own.out = torch.cat(parts, 1)
        return own

    def _served(self, own: _Owner, tables: tuple[str, ...]) -> Tensor:
        """Values of the still-exchanged tables for ``own.rows`` (detached)."""
        leaves = own.leaves
        cols = [leaves[t].detach() for t in tables]
        return torch.cat(cols, 1) if cols else leaves["emb"].new_zeros(own.rows.numel(), 0)

    def _rows(
        self,
        ids: Tensor,
        inverse: Tensor,
        psum: Tensor | None,
        rows: Tensor,
        tables: tuple[str, ...],
        widths: dict[str, int],
        null: Tensor,
    ) -> Rows:
        """The requester's leaves: the summed partials and the exchanged rows."""
        T, N = inverse.shape[:2]
        D, U = self.dim, ids.numel()
        col = 0
        emb = rows.new_zeros(0, D)
        lin = None
        if "emb" in tables:
            emb, col = rows[:, :D].contiguous(), D
        if "linear" in tables:
            lin = rows[:, col : col + 1].contiguous()
        elif self.has_linear:
            lin = rows.new_zeros(0, 1)
        emb.requires_grad_()
        if lin is not None:
            lin.requires_grad_()
        assert psum is not None and self._req is not None
        leaf = self._req.partial = psum.requires_grad_()
        with torch.enable_grad():
            cols = dict(zip(widths, torch.split(leaf, list(widths.values()), 1), strict=True))
            partials: dict[str, Tensor] = {}
            if "lr" in cols:
                partials["lr"] = cols["lr"].reshape(T, N)
            if "fm_sum" in cols:
                split = cols["fm_split"].view(leaf.shape[0], len(self.spec.split_fields), D)
                fm_sq = cols["fm_sq"].squeeze(1) + split.square().sum((1, 2))
                partials["fm_sum"] = cols["fm_sum"].reshape(T, N, D)
                partials["fm_sq"] = fm_sq.reshape(T, N)
            if "h1" in cols:
                partials["h1"] = cols["h1"].reshape(T, N, -1)
        assert null.numel() == U
        return Rows(emb, lin, ~null, partials)

    # ------------------------------------------------------------------------- backward
    @torch.no_grad()
    def backward(self, rows: Rows) -> None:
        """Send the partial results' gradients (and any exchanged rows' gradients) to the owners,
        which backpropagate their part: row gradients there, and W1's gradient into ``.grad`` of
        the replicated parameter (summed over ranks by the dense all-reduce that follows). Call
        after ``loss.backward()``, before the dense all-reduce. A collective (a no-op on steps
        that used the plain row exchange)."""
        req, own = self._req, self._own
        if req is None:
            return
        assert own is not None, "backward without a DES lookup"
        comm, spec, ops = self.comm, self.spec, self.ops
        tables = spec.row_tables(ops)
        P = sum(spec.widths(ops).values())
        g_part = req.partial.grad if req.partial.grad is not None else torch.zeros_like(req.partial)
        grads = []
        for t in tables:
            leaf = rows.emb if t == "emb" else rows.linear
            grads.append(leaf.grad if leaf.grad is not None else torch.zeros_like(leaf))
        n_ids = rows.trainable.numel()
        g_rows = torch.cat(grads, 1) if grads else g_part.new_zeros(n_ids, 0)
        msgs, send = [], []
        for idx in req.per_owner:
            msgs += [g_part.reshape(-1), g_rows.index_select(0, idx).reshape(-1)]
            send.append(g_part.numel() + idx.numel() * g_rows.shape[1])
        w = g_rows.shape[1]
        recv = [b * P + len(inv) * w for b, inv in zip(own.samples, own.inverse, strict=True)]
        flat = comm.all_to_all(torch.cat(msgs), send, recv, "des.backward")
        g_out, row_grads, a = [], [], 0
        for b, inv in zip(own.samples, own.inverse, strict=True):
            g_out.append(flat[a : a + b * P].view(b, P))
            a += b * P
            row_grads.append((inv, flat[a : a + len(inv) * w].view(len(inv), w)))
            a += len(inv) * w
        D = self.dim
        width = D + int(self.has_linear)
        total = flat.new_zeros(own.rows.numel(), width)
        if own.out is not None:
            with torch.enable_grad():
                torch.autograd.backward(own.out, torch.cat(g_out))
            for t, leaf in own.leaves.items():
                if leaf.grad is not None:
                    total[:, slice(0, D) if t == "emb" else slice(D, D + 1)] += leaf.grad
        col = 0
        for t in tables:  # rows still exchanged: their gradients add to the owner's
            sl = slice(0, D) if t == "emb" else slice(D, D + 1)
            n = D if t == "emb" else 1
            for inv, g in row_grads:
                total[:, sl].index_add_(0, inv, g[:, col : col + n])
            col += n
        own.grads = total
        self._req = None

    def last_row_gradients(self) -> tuple[Tensor, Tensor] | None:
        """This owner's rows of the step (unique local rows) and their summed ``[emb | linear]``
        gradients, between :meth:`backward` and :meth:`apply_gradients` (None otherwise)."""
        own = self._own
        return None if own is None or own.grads is None else (own.rows, own.grads)

    @torch.no_grad()
    def apply_gradients(self, ids: Tensor, grads: dict[str, Tensor | None], lr: float) -> None:
        """Row-wise Adagrad: on the owners' rows after :meth:`backward` (``grads`` were already
        sent there), or the plain exchange's update on steps without DES."""
        own, self._own = self._own, None
        if own is None or own.grads is None:
            if self.ops:
                raise ValueError("apply_gradients needs lookup and backward of the same step first")
            self.coll.apply_gradients(ids, grads, lr)
            return
        self.coll.update_local(own.rows, own.grads, lr)
