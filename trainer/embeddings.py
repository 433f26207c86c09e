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

Tables: ``emb`` (``total_rows x dim``) and, for models with first-order terms (DeepFM, Wide&Deep),
``linear`` (``total_rows x 1``). Initialisation: ``emb`` ~ normal(0, ``init_std``) drawn on the CPU
from a ``torch.Generator`` seeded with ``seed`` (so the table is identical on every device), null
rows zeroed; ``linear`` starts at zero (a logistic-regression start).

Optimizer (row-wise Adagrad, as FBGEMM's ``EXACT_ROWWISE_ADAGRAD``), per touched row ``r`` with
gradient ``g_r`` (a ``dim``-vector): ``acc_r += mean(g_r ** 2)``; ``w_r -= lr * g_r / (sqrt(acc_r) +
eps)``. One float of state per row instead of one per weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

TABLES = ("emb", "linear")


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

    def grads(self) -> dict[str, Tensor | None]:
        """Per-table gradients after ``backward`` (``None`` where a table got none)."""
        out: dict[str, Tensor | None] = {"emb": self.emb.grad}
        if self.linear is not None:
            out["linear"] = self.linear.grad
        return out

    def detach(self) -> Rows:
        """The same values without autograd history (for evaluation)."""
        lin = None if self.linear is None else self.linear.detach()
        return Rows(self.emb.detach(), lin, self.trainable)


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
        device, dtype: where the table and its state live.

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
        self.weights = {k: v.to(device=device, dtype=dtype) for k, v in self.weights.items()}
        self.accum = {k: v.to(device=device, dtype=dtype) for k, v in self.accum.items()}
        self.null_mask = self.null_mask.to(device)
        return self

    @torch.no_grad()
    def lookup(self, ids: Tensor) -> Rows:
        """Rows of ``ids`` (sorted unique global ids) as fresh leaves that require grad."""
        emb = self.weights["emb"].index_select(0, ids).requires_grad_()
        lin = self.weights.get("linear")
        lin = None if lin is None else lin.index_select(0, ids).requires_grad_()
        return Rows(emb, lin, ~self.null_mask.index_select(0, ids))

    @torch.no_grad()
    def apply_gradients(self, ids: Tensor, grads: dict[str, Tensor | None], lr: float) -> None:
        """Row-wise Adagrad on the rows ``ids`` (must be unique, as ``EpisodeBatch.ids`` is).

        ``grads`` maps table name -> ``(U, width)`` gradient (``Rows.grads()``); ``None`` entries
        are skipped. Null rows are never updated, whatever their gradient.
        """
        keep = (~self.null_mask.index_select(0, ids)).unsqueeze(1)
        for name, g in grads.items():
            if g is None:
                continue
            if name not in self.weights:
                raise ValueError(
                    f"no {name!r} table in this collection (tables: {list(self.weights)})"
                )
            w, acc = self.weights[name], self.accum[name]
            g = g.to(w.dtype) * keep
            a = acc.index_select(0, ids).add_(g.square().mean(1))
            acc.index_copy_(0, ids, a)
            step = g.mul_((-lr) / (a.sqrt_().add_(self.adagrad_eps)).unsqueeze(1))
            # ids are unique: a gather-update-scatter beats index_add_'s accumulation.
            w.index_copy_(0, ids, w.index_select(0, ids).add_(step))

    def state_dict(self) -> dict[str, Tensor]:
        """Weights and optimizer state as plain tensors (``torch.load(weights_only=True)``-safe)."""
        out = {f"{k}.weight": v for k, v in self.weights.items()}
        out.update({f"{k}.adagrad_sum": v for k, v in self.accum.items()})
        out["null_mask"] = self.null_mask
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore ``state_dict()`` output; the table layout must match exactly."""
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"embedding state has keys {sorted(state)}, this collection expects {sorted(expected)} "
                "(a linear table is present only for models with first-order terms)"
            )
        for key, mine in self.state_dict().items():
            if state[key].shape != mine.shape:
                raise ValueError(
                    f"embedding state {key!r} has shape {tuple(state[key].shape)}, this collection "
                    f"has {tuple(mine.shape)}: the feature layout or embedding_dim differs"
                )
        if not torch.equal(state["null_mask"].to(self.null_mask.device), self.null_mask):
            raise ValueError("embedding state has different null rows: the feature layout differs")
        for k in self.weights:
            self.weights[k].copy_(state[f"{k}.weight"])
            self.accum[k].copy_(state[f"{k}.adagrad_sum"])
