"""Distributed equivalent substitution (DES, Rong et al. SIGIR 2020) inside the sharded collection:
the rank that OWNS rows computes the substituted operators' partial sums for every requesting
rank's samples, and only those travel. Which operators, their byte model and the meta-learning
rules are in :mod:`trainer.parallel.des_plan`.

    model, plan = build_parallel_model(cfg.model, layout, env, cfg.parallel, meta=cfg.meta)
    sparse = model.embeddings.lookup(batch)    # SparseOut: the owners' partial sums (+ fields)
    loss, stats = outer_loss(model, sparse, batch, cfg.meta, normalizer)
    loss.backward()                            # the return trip: dL/dpartials to the owners,
                                               # row gradients there, W1's gradient here
    env.reduce_dense_grads(model.parameters()) # W1's owner-side gradients summed over ranks
    optimizers.step()                          # Adam; owners' row-wise Adagrad, no exchange

One step, on every rank (requester ``r`` with ``B`` samples; owner ``j``)::

    header   all_to_all (W, 3) int64: unique rows, owned non-null slots, samples     "des.header"
    request  all_to_all bytes: [owner's unique local rows int32 | per owned slot the
             index into them int16/32 | bitmask of owned slots]                      "des.request"
    owner    rows R (leaves) -> per sample and field e_f^j (pooling) -> partials
             [lr | fm_sum, fm_sq, fm_split | h1 = concat(e^j) @ W1 per tower]  (B_r, P)
    forward  all_to_all floats: partials (+ rows of tables still needed)              "des.forward"
    requester  P = sum over owners -> SparseOut -> model -> loss.backward()
    backward all_to_all floats: dL/dP to every owner (+ row gradients)               "des.backward"
    owner    autograd through its partials -> row gradients (kept), dL/dW1 (returned)
    apply    owner: row-wise Adagrad on its rows (no gradient exchange)

The forward and backward exchanges are one ``torch.autograd.Function`` (:class:`_ReturnTrip`), so
``loss.backward()`` runs the backward exchange and the owners' backward where autograd reaches the
partial sums. Evaluation never substitutes (``ShardedEmbeddingCollection.read``).

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
from torch.autograd.function import once_differentiable

from trainer.parallel import des_plan
from trainer.parallel.des_plan import DESModel, RequestCounts
from trainer.parallel.sharded_embeddings import ShardedEmbeddingCollection
from trainer.sparse import Batch, SparseOut

log = logging.getLogger(__name__)
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


@dataclass
class _Owner:
    """The owner's side of a step: its graph and who asked for which rows."""

    rows: Tensor
    """Unique local rows served this step."""
    inverse: list[Tensor]
    """Per requester: positions in ``rows`` of the rows it asked for (its order)."""
    samples: list[int]
    out: Tensor | None = None
    """``(sum of requesters' samples, P)``: the partial sums, a graph over ``leaves``."""
    leaves: dict[str, Tensor] = field(default_factory=dict)
    """``emb``/``linear`` rows and ``w1.k`` (a detached copy of tower ``k``'s first-layer weight)."""
    grads: Tensor | None = None
    """Summed ``[emb | linear]`` gradients of ``rows`` after the backward exchange."""


@dataclass
class _Step:
    """One DES lookup: the request this rank sent and what it received as an owner."""

    ids: Tensor
    inverse: Tensor
    req: dict[str, Any]
    own: _Owner | None = None


class DESExchange:
    """DES over a :class:`ShardedEmbeddingCollection` (see the module docstring).

    Args:
        coll: this rank's shard (its plan, collectives, rows and pooling).
        spec: the model as DES sees it (``des_plan.describe_model``).
        mode: ``on`` (every operator that applies, else ``ValueError``), ``auto`` (the cheapest
            admissible subset, decided on the first step) or an explicit tuple of operators.
        admissible: ``des_plan.admissible(...)``: the operators allowed and why others are not.
        first_layer_weights: each tower's first deep layer field weight ``W1_k`` ``(F*D, H_k)``
            (replicated; ``RecModel.first_field_layers`` order), which the owners multiply for the
            ``first`` operator; ``()`` when the model has none.
    """

    def __init__(
        self,
        coll: ShardedEmbeddingCollection,
        spec: DESModel,
        mode: str | tuple[str, ...],
        admissible: tuple[tuple[str, ...], list[str]],
        first_layer_weights: tuple[Tensor, ...],
    ) -> None:
        self.coll, self.plan, self.comm, self.spec = coll, coll.plan, coll.comm, spec
        self.allowed, self.excluded = admissible
        self.w1 = first_layer_weights
        self.ops: tuple[str, ...] | None = None
        if mode == "on":
            self.ops = des_plan.check_on(spec, admissible)
        elif isinstance(mode, tuple):
            bad = [o for o in mode if o not in self.allowed]
            if bad:
                raise ValueError(f"DES cannot substitute {bad} here: {'; '.join(self.excluded)}")
            self.ops = tuple(o for o in des_plan.OPERATORS if o in mode)
        elif mode != "auto":
            raise ValueError(f"DES mode must be on, auto or a tuple of operators, got {mode!r}")
        self.estimates: dict[str, float] = {}
        self._step: _Step | None = None
        self._next: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        return self.coll.device

    def metrics(self) -> dict[str, float | str]:
        """The decision and the byte estimates it was made on (all ranks' first step, summed)."""
        ops = self.ops if self.ops is not None else ()
        return {"des.ops": des_plan.subset_name(ops), **self.estimates}

    # ------------------------------------------------------------------------- forward
    def lookup(self, batch: Batch) -> SparseOut | None:
        """The substituted operators' partial sums for this rank's samples (plus the pooled rows
        of tables some other operator still needs); None on steps that use the row exchange
        (``auto`` chose no operator). A collective: every rank calls it once per step."""
        ids, inverse = batch.ids.to(self.device), batch.inverse.to(self.device)
        ahead, self._next = self._next, None
        if ahead is not None:
            if not (torch.equal(ahead["ids"], ids) and torch.equal(ahead["inverse"], inverse)):
                raise ValueError("lookup ids/inverse differ from those passed to prefetch")
            return self._substitute(_Step(ids, inverse, ahead))
        req = None
        if self.ops is None:
            with torch.no_grad():
                req = self._request(ids, inverse)
            self._decide(req)
        if not self.ops:  # the plain row exchange
            return None
        with torch.no_grad():
            req = self._send(req or self._request(ids, inverse))
        return self._substitute(_Step(ids, inverse, req))

    @torch.no_grad()
    def prefetch(self, batch: Batch) -> bool:
        """Send the NEXT step's request now and stage the rows the other ranks ask this owner for
        (a collective; every rank calls it with its next batch). False when steps use the row
        exchange (the collection prefetches that itself)."""
        if not self.ops:
            return False
        ids, inverse = batch.ids.to(self.device), batch.inverse.to(self.device)
        req = self._send(self._request(ids, inverse))
        req.update(ids=ids, inverse=inverse)
        self.coll.store.prefetch(torch.unique(torch.cat(req["locals"])))
        self._next = req
        return True

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
        c = req["counts"]
        elem = torch.empty((), dtype=self.coll.dtype).element_size()
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

    def _substitute(self, step: _Step) -> SparseOut:
        """Run the return trip and assemble the requester's :class:`SparseOut`."""
        spec, ops, D = self.spec, self.ops or (), self.coll.dim
        widths = spec.widths(ops)
        tables = spec.row_tables(ops)
        anchor = torch.zeros(0, dtype=self.coll.dtype, device=self.device, requires_grad=True)
        w1 = self.w1 if "h1" in widths else ()
        psum, rows = _ReturnTrip.apply(self, step, anchor, *w1)
        T, N = step.inverse.shape[:2]
        cols = dict(zip(widths, torch.split(psum, list(widths.values()), 1), strict=True))
        out = SparseOut()
        if "lr" in cols:
            out.lr = cols["lr"].reshape(T, N)
        if "fm_sum" in cols:
            split = cols["fm_split"].view(psum.shape[0], len(spec.split_fields), D)
            out.fm_sum = cols["fm_sum"].reshape(T, N, D)
            out.fm_sq = (cols["fm_sq"].squeeze(1) + split.square().sum((1, 2))).reshape(T, N)
        if "h1" in cols:
            towers = torch.split(cols["h1"], list(spec.hidden), 1)
            out.h1 = tuple(h.reshape(T, N, -1) for h in towers)
        col, pooling = 0, self.coll.pooling
        if "emb" in tables:  # rows still exchanged for an operator that is not substituted
            out.fields, col = pooling.fields(rows[:, :D], step.inverse), D
        if "linear" in tables:
            out.lr = pooling.lr(rows[:, col : col + 1], step.inverse)
        self._step = step
        return out

    def _owner_forward(self, step: _Step) -> _Owner:
        """Read the requested rows once and compute the partial sums with autograd."""
        req, S = step.req, step.inverse.shape[-1]
        locals_, uidx, positions = req["locals"], req["decoded"], req["positions"]
        samples = [b for _, _, b in req["got"]]
        rows, inv = torch.unique(torch.cat(locals_), return_inverse=True)
        inverse = list(torch.split(inv, [len(x) for x in locals_]))
        own = _Owner(rows, inverse, samples)
        values = self.coll.store.read(rows)  # one cache step when the shard is cached
        widths = self.spec.widths(self.ops or ())
        D, F = self.coll.dim, self.spec.num_fields
        own.leaves = {k: v.requires_grad_() for k, v in values.items()}
        emb, lin = own.leaves["emb"], own.leaves.get("linear")
        # Every requester's owned slots -> (sample, field) over all requesters' samples.
        sample_base = torch.tensor([0, *samples], device=self.device).cumsum(0)
        row_of, sample_of, slot_of = [], [], []
        for r, pos in enumerate(positions):
            row_of.append(inverse[r].index_select(0, uidx[r]))
            sample_of.append(pos // S + sample_base[r])
            slot_of.append(pos % S)
        row_of, sample_of = torch.cat(row_of), torch.cat(sample_of)
        field_of = self.coll.pooling.slot_feature.index_select(0, torch.cat(slot_of))
        B = int(sample_base[-1])
        with torch.enable_grad():
            e = emb.new_zeros(B * F, D).index_add(
                0, sample_of * F + field_of, emb.index_select(0, row_of)
            )
            e = e.view(B, F, D)
            parts = []
            if "lr" in widths:
                assert lin is not None
                lr = lin.new_zeros(B).index_add(0, sample_of, lin.index_select(0, row_of)[:, 0])
                parts.append(lr[:, None])
            if "fm_sum" in widths:
                split = list(self.spec.split_fields)
                whole = [f for f in range(F) if f not in split]
                parts.append(e.sum(1))
                parts.append(e[:, whole].square().sum((1, 2))[:, None])
                parts.append(e[:, split].flatten(1))
            if "h1" in widths:
                assert self.w1, "DES 'first' needs the first layers' weights"
                for k, weight in enumerate(self.w1):  # one partial per tower
                    w1 = own.leaves[f"w1.{k}"] = weight.detach().requires_grad_()
                    parts.append(e.flatten(1) @ w1)
            own.out = torch.cat(parts, 1)
        return own

    def forward_trip(self, step: _Step) -> tuple[Tensor, Tensor]:
        """Owners' partial sums to the requesters (``des.forward``): this rank's summed partials
        ``(B, P)`` and the rows of the still-exchanged tables ``(U, w)`` in ``ids`` order."""
        comm, spec, ops, D = self.comm, self.spec, self.ops or (), self.coll.dim
        req, c = step.req, step.req["counts"]
        own = step.own = self._owner_forward(step)
        tables = spec.row_tables(ops)
        P = sum(spec.widths(ops).values())
        w = sum(D if t == "emb" else 1 for t in tables)
        cols = [own.leaves[t].detach() for t in tables]
        served = torch.cat(cols, 1) if cols else own.out.new_zeros(own.rows.numel(), 0)
        out = own.out.detach()
        parts, start = [], 0
        for r, b in enumerate(own.samples):
            parts.append(out[start : start + b].reshape(-1))
            parts.append(served.index_select(0, own.inverse[r]).reshape(-1))
            start += b
        send = [b * P + len(inv) * w for b, inv in zip(own.samples, own.inverse, strict=True)]
        back = [c.samples * P + u * w for u in c.unique]
        flat = comm.all_to_all(torch.cat(parts), send, back, "des.forward")
        # Requester: sum the owners' partials (rank order), place the rows in ids order.
        psum = None
        rows = flat.new_zeros(step.ids.numel(), w)
        a, order = 0, req["order"]
        for j, piece in enumerate(torch.split(flat, back)):
            part = piece[: c.samples * P].view(c.samples, P)
            psum = part.clone() if psum is None else psum + part
            u = c.unique[j]
            rows.index_copy_(0, order[a : a + u], piece[c.samples * P :].view(u, w))
            a += u
        assert psum is not None
        return psum, rows

    def backward_trip(
        self, step: _Step, g_psum: Tensor, g_rows: Tensor
    ) -> tuple[Tensor | None, ...]:
        """The partial sums' and exchanged rows' gradients to the owners (``des.backward``), which
        backpropagate their part: row gradients kept for :meth:`take_owner_gradients`; returns
        this owner's gradient of each tower's ``W1`` (``()`` without the ``first`` operator)."""
        own = step.own
        assert own is not None and own.out is not None
        spec, ops, D = self.spec, self.ops or (), self.coll.dim
        tables = spec.row_tables(ops)
        P = sum(spec.widths(ops).values())
        w = g_rows.shape[1]
        msgs, send = [], []
        for idx in step.req["per_owner"]:
            msgs += [g_psum.reshape(-1), g_rows.index_select(0, idx).reshape(-1)]
            send.append(g_psum.numel() + idx.numel() * w)
        recv = [b * P + len(inv) * w for b, inv in zip(own.samples, own.inverse, strict=True)]
        flat = self.comm.all_to_all(torch.cat(msgs), send, recv, "des.backward")
        g_out, row_grads, a = [], [], 0
        for b, inv in zip(own.samples, own.inverse, strict=True):
            g_out.append(flat[a : a + b * P].view(b, P))
            a += b * P
            row_grads.append((inv, flat[a : a + len(inv) * w].view(len(inv), w)))
            a += len(inv) * w
        names = list(own.leaves)
        with torch.enable_grad():
            got = torch.autograd.grad(
                own.out, [own.leaves[k] for k in names], torch.cat(g_out), allow_unused=True
            )
        grads = dict(zip(names, got, strict=True))
        total = flat.new_zeros(own.rows.numel(), D + int(self.coll.has_linear))
        for t in ("emb", "linear"):
            if grads.get(t) is not None:
                total[:, slice(0, D) if t == "emb" else slice(D, D + 1)] += grads[t]
        col = 0
        for t in tables:  # rows still exchanged: their gradients add to the owner's
            n = D if t == "emb" else 1
            sl = slice(0, D) if t == "emb" else slice(D, D + 1)
            for inv, g in row_grads:
                total[:, sl].index_add_(0, inv, g[:, col : col + n])
            col += n
        own.grads = total
        return tuple(g for k, g in grads.items() if k.startswith("w1."))

    def take_owner_gradients(self) -> tuple[Tensor, Tensor]:
        """This owner's rows of the last DES step (unique local rows) and their summed ``[emb |
        linear]`` gradients; consumed (``apply_gradients`` calls it after ``loss.backward()``)."""
        step, self._step = self._step, None
        if step is None or step.own is None or step.own.grads is None:
            raise ValueError("apply_gradients needs a DES lookup and loss.backward() first")
        return step.own.rows, step.own.grads

    def owner_gradients(self) -> tuple[Tensor, Tensor] | None:
        """Like :meth:`take_owner_gradients` without consuming them (None before backward)."""
        own = None if self._step is None else self._step.own
        return None if own is None or own.grads is None else (own.rows, own.grads)


class _ReturnTrip(torch.autograd.Function):
    """The DES exchange as one autograd node. Forward: the owners' partial sums (and the rows of
    the still-exchanged tables) this rank asked for. Backward: their gradients back to the owners,
    whose own graph gives the row gradients (kept by the exchange) and each tower's ``W1``
    gradient (returned for the ``w1`` inputs, so it lands in ``W1.grad`` and the dense all-reduce
    sums it).

    ``anchor`` is an empty tensor that requires grad: it stands for the owners' rows (held on
    other ranks), so that autograd reaches this node even when there is no ``w1``.
    """

    @staticmethod
    def forward(
        ctx: Any, exchange: DESExchange, step: _Step, anchor: Tensor, *w1: Tensor
    ) -> tuple[Tensor, Tensor]:
        ctx.exchange, ctx.step = exchange, step
        return exchange.forward_trip(step)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_psum: Tensor, g_rows: Tensor) -> tuple[Tensor | None, ...]:
        g_w1 = ctx.exchange.backward_trip(ctx.step, g_psum, g_rows)
        return None, None, None, *g_w1
