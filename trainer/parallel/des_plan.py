"""Which operators distributed equivalent substitution (DES) applies to, what each costs on the
wire, and which to substitute (``ParallelConfig.des``). Pure data and arithmetic: no processes.

Operators (the fields of :class:`trainer.sparse.SparseOut`; the owner of a row computes them over
the rows it holds, for every requesting rank's samples)::

    operator  model term                                   partial result per sample and owner
    lr        sum of the 1-wide rows of all slots          1 float   (LR / wide part)
    fm        FM second order 0.5 (|sum_f e_f|^2 - sum_f |e_f|^2)
                                                           D + 1 floats, + D per "split" field
    first     concat_f(e_f) @ W1  (the first deep layer)   H floats  (W1 replicated, H = width)
              per tower: ESMM's two towers have two first layers, so 2 H floats

Which apply: DeepFM lr + fm + first; Wide&Deep lr + first; MeLU first; DLRM nothing: its dot
interaction ``<e_i, e_j>`` is not a sum over fields of per-field terms (pairs of fields held by
different owners would need each other's rows), and its first top-MLP layer reads the
interaction's output, not the field embeddings. ``des = "on"`` refuses DLRM; ``auto`` keeps the
row exchange for it.

The FM rule. Pooling is linear: a field's embedding is the sum of its slots' rows, so with rows
spread over owners ``e_f = sum_j e_f^j`` (``e_f^j``: the sum of the rows of field ``f`` that owner
``j`` holds). Hence ``sum_f e_f = sum_j (sum_f e_f^j)`` composes from per-owner sums, but
``|e_f|^2 = |sum_j e_f^j|^2`` does not (cross terms between owners). It composes when each sample's
field ``f`` comes from ONE owner: single-slot fields (one row) and table-wise sharded fields. For
those the owner sends ``sum_f |e_f^j|^2``; for a multi-slot row-wise ("split") field it sends its
partial ``e_f^j`` (D floats) and the requester squares the sum. So: ``D + 1`` floats per sample
and owner, plus ``D`` per split field.

Bytes (counted as the communication meter counts them: what a rank sends to other ranks). For a
requesting rank with ``B`` samples of ``S`` slots, ``U_j`` unique rows and ``n_j`` non-null slots
owned by rank ``j``, and ``W`` ranks:

- plain row exchange: ids ``4 U_j``, rows ``4 w U_j`` and their gradients ``4 w U_j`` to/from
  each other owner (``w`` = D, + 1 with the linear table), and ``8 (W - 1)`` for the counts;
- DES: the request tells each owner which rows and which of its slots belong to which sample:
  unique rows ``4 U_j``, per owned non-null slot its index into them (2 bytes, 4 beyond 32,767
  rows) and a bitmask of the owned slots ``B S / 8``; then ``4 P B`` of partial results from each
  other owner and ``4 P B`` of their gradients back (``P`` = the chosen operators' widths); rows
  of a table that some operator still needs (not substituted) travel as in the plain exchange,
  inside the same messages; ``24 (W - 1)`` for the counts.

DES wins when ``P`` per sample is small next to the rows per sample (``w U / B``): many slots per
sample (multi-hot fields), few samples sharing rows, a narrow first layer. It loses when the
first layer is wider than ``fields x dim`` or when VSI already shrinks the rows: the row exchange
is per UNIQUE row, DES is per SAMPLE.

``auto`` compares every admissible subset of operators (with the rows each leaves behind) on the
first step's counts summed over ranks, picks the cheapest, and keeps it for the run.

Meta learning. Parameters of substituted operators (W1's field block, the linear rows, the rows
they read) adapt only in the OUTER loop: the inner loop runs on the requesting rank, which holds
only the partial results. So ``meta.adapt = "dense+emb"`` (task-local copies of rows) is refused
with any operator, and a first-layer substitution needs ``adapt = "head"`` with ``head_layers``
not reaching the first layer (``dense`` adapts it). ``on`` raises a ``ValueError`` for such a
setting; ``auto`` leaves the operator out. These rules concern training only: evaluation looks
the rows up without substitution (``ShardedEmbeddingCollection.read``), so every ``eval.adapt``
works under DES.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.parallel.plan import ShardingPlan

OPERATORS = ("lr", "fm", "first")
APPLICABLE = {
    "deepfm": ("lr", "fm", "first"),
    "wide_deep": ("lr", "first"),
    "melu": ("first",),
    "dlrm": (),
}
EMB_READERS = {"deepfm": ("fm", "first"), "wide_deep": ("first",), "melu": ("first",)}
"""Operators that read the embedding rows (DLRM's dot interaction reads them too: never DES)."""


@dataclass(frozen=True)
class DESModel:
    """What the owners need to know about the model: sizes and where the first layer is."""

    arch: str
    dim: int
    num_fields: int
    hidden: tuple[int, ...]
    """Width of each tower's first deep layer (``()``: no such layer)."""
    linear: bool
    first_layers: tuple[str, ...]
    """Module names (in the dense half) of the first layers' field parts, one per tower, e.g.
    ``("deep.first.from_fields",)``; ESMM: ``("ctr.deep.first.from_fields",
    "cvr.deep.first.from_fields")``."""
    split_fields: tuple[int, ...]
    """Multi-slot row-wise fields: their FM term needs the per-owner partial embedding."""

    def widths(self, ops: tuple[str, ...]) -> dict[str, int]:
        """Columns of the partial results of ``ops``, in message order."""
        out: dict[str, int] = {}
        if "lr" in ops:
            out["lr"] = 1
        if "fm" in ops:
            out.update(fm_sum=self.dim, fm_sq=1, fm_split=self.dim * len(self.split_fields))
        if "first" in ops:
            out["h1"] = sum(self.hidden)
        return out

    def row_tables(self, ops: tuple[str, ...]) -> tuple[str, ...]:
        """Tables whose rows still travel: read by an operator that is not substituted."""
        readers = EMB_READERS.get(self.arch, ("dot",))
        tables = ("emb",) if any(o not in ops for o in readers) else ()
        if self.linear and "lr" not in ops:
            tables += ("linear",)
        return tables


def describe_model(
    arch: str,
    plan: ShardingPlan,
    slots_per_field: Sequence[int],
    first_layers: Sequence[tuple[str, int]],
) -> DESModel:
    """:class:`DESModel` of a model of ``arch`` under a ``ShardingPlan``; ``first_layers``: the
    module name and width of each tower's first deep layer field part
    (``RecModel.first_field_layers``), none when the model has none."""
    split = tuple(
        f for f, t in enumerate(plan.tables) if slots_per_field[f] > 1 and t.sharding == "row_wise"
    )
    return DESModel(
        arch=arch,
        dim=plan.dim,
        num_fields=len(plan.tables),
        hidden=tuple(h for _, h in first_layers),
        linear=plan.linear,
        first_layers=tuple(n for n, _ in first_layers),
        split_fields=split,
    )


def admissible(
    des: DESModel, meta: Any | None, adapted_layers: Sequence[str]
) -> tuple[tuple[str, ...], list[str]]:
    """Operators DES may substitute under ``meta`` (a ``MetaConfig``; None: plain training) whose
    inner loop adapts ``adapted_layers`` (``RecModel.adapted_layers(meta.adapt)``), and the
    reasons for each one left out."""
    ops, why = list(APPLICABLE[des.arch]), []
    meta_on = meta is not None and meta.mode != "plain"
    if not ops:
        why.append(f"{des.arch}: no operator is a sum over fields (dot interaction)")
    if meta_on and meta.adapt == "dense+emb" and ops:
        why.append("meta.adapt='dense+emb' adapts task-local copies of the rows on the requester")
        ops = []
    adapted_first = [n for n in des.first_layers if n in adapted_layers]
    if meta_on and "first" in ops and adapted_first:
        why.append(
            f"meta.adapt={meta.adapt!r} adapts the first layer ({', '.join(adapted_first)}), "
            "whose field weights DES multiplies on the owners"
        )
        ops.remove("first")
    return tuple(ops), why


def check_on(des: DESModel, allowed: tuple[tuple[str, ...], list[str]]) -> tuple[str, ...]:
    """The operators ``des = "on"`` substitutes: all that apply (``allowed``: the result of
    :func:`admissible`), or a ``ValueError``."""
    ops, why = allowed
    if ops != APPLICABLE[des.arch] or not ops:
        raise ValueError(
            f"parallel.des='on' cannot substitute every operator of {des.arch}: {'; '.join(why)}. "
            "Substituted operators adapt only in the outer loop: use meta.adapt='head' with "
            "model.head_layers below the number of deep layers, or parallel.des='auto' (keeps "
            "the row exchange where DES cannot apply) or 'off'"
        )
    return ops


@dataclass
class RequestCounts:
    """One requesting rank's step, as the byte model needs it (per destination owner ``j``)."""

    samples: int
    slots: int
    unique: list[int]
    """Unique rows wanted from each owner."""
    owned_slots: list[int]
    """Non-null slots whose row each owner holds."""
    rank: int

    def others(self, values: list[int]) -> int:
        return sum(v for j, v in enumerate(values) if j != self.rank)


def index_bytes(unique_rows: int) -> int:
    """Bytes of one slot's index into an owner's unique rows (int16 while they fit)."""
    return 2 if unique_rows <= 32767 else 4


def request_bytes(c: RequestCounts) -> int:
    """Bytes of the DES request (rows, per-slot indices, slot bitmasks) to the other owners."""
    mask = -(-c.samples * c.slots // 8)
    return sum(
        4 * u + index_bytes(u) * n + mask
        for j, (u, n) in enumerate(zip(c.unique, c.owned_slots, strict=True))
        if j != c.rank
    )


def candidate_bytes(des: DESModel, c: RequestCounts, ops: tuple[str, ...], elem: int) -> float:
    """Bytes one step sends for this rank's samples when ``ops`` are substituted (see the module
    docstring); ``ops = ()`` is the plain row exchange. ``elem``: bytes per float."""
    W = len(c.unique)
    u_remote = c.others(c.unique)
    if not ops:
        w = des.dim + int(des.linear)
        return 8 * (W - 1) + 4 * u_remote + 2 * elem * w * u_remote
    p = sum(des.widths(ops).values())
    w = sum(des.dim if t == "emb" else 1 for t in des.row_tables(ops))
    return 24 * (W - 1) + request_bytes(c) + 2 * elem * (p * c.samples * (W - 1) + w * u_remote)


def candidates(ops: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every subset of ``ops`` (the empty one first), each in ``OPERATORS`` order."""
    return [s for k in range(len(ops) + 1) for s in itertools.combinations(ops, k)]


def choose(costs: dict[tuple[str, ...], float]) -> tuple[str, ...]:
    """The cheapest subset; ties go to fewer operators (the plain exchange first)."""
    return min(costs, key=lambda s: (costs[s], len(s)))


def breakdown(des: DESModel, c: RequestCounts, elem: int) -> dict[str, float]:
    """Per-operator bytes for the logs: each operator's partial results (forward + backward), the
    request, and each table's rows in the plain exchange (ids included)."""
    W = len(c.unique)
    u_remote = c.others(c.unique)
    out = {"request": float(request_bytes(c) + 24 * (W - 1))}
    for op in APPLICABLE.get(des.arch, ()):
        out[f"op.{op}"] = float(2 * elem * sum(des.widths((op,)).values()) * c.samples * (W - 1))
    out["rows.emb"] = float(2 * elem * des.dim * u_remote)
    if des.linear:
        out["rows.linear"] = float(2 * elem * u_remote)
    out["ids"] = float(4 * u_remote + 8 * (W - 1))
    return out


def subset_name(ops: tuple[str, ...]) -> str:
    return "+".join(ops) if ops else "plain"
