"""The sparse interface: what an embedding collection gives the dense half, and what a collection is.

One step, under every configuration (plain, sharded, cached, DES)::

    sparse = model.embeddings.lookup(batch)     # SparseOut for all T x (K+Q) samples
    loss, stats = outer_loss(model, sparse, batch, meta)
    loss.backward()                             # row gradients (and DES's return trip) by autograd
    optimizers.step()                           # Adam + model.embeddings.apply_gradients(lr)

The collection owns the rows AND the sum pooling (:class:`Pooling`), so a collection that
substitutes operators (DES, ``trainer/parallel/des.py``) returns the owners' partial sums instead of
pooled fields. The dense half (``trainer/models/``) reads a :class:`SparseOut` through its methods
(:meth:`SparseOut.fm_term`, :meth:`SparseOut.first_layer`) and never asks how it was made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class SparseOut:
    """Per-sample results of the sparse half, leading dims ``(..., )`` = ``(T, N)`` in training.

    Each entry is ``None`` when the collection did not produce it:

    * ``fields`` ``(..., F, D)``: the pooled field embeddings (absent when DES substituted every
      operator that reads them);
    * ``lr`` ``(...,)``: the first-order (LR) term, the sum of the 1-wide rows of all slots
      (models with a linear table);
    * ``fm_sum`` ``(..., D)`` and ``fm_sq`` ``(...,)``: the FM operator's sums over fields of
      ``e_f`` and of ``|e_f|^2`` (DES only; otherwise the FM term is computed from ``fields``);
    * ``h1``: per first deep layer ``k``, its field part ``concat(fields) @ W1_k`` ``(..., H_k)``
      without bias (DES only): one layer per tower, in the dense half's module order (a model of
      several towers over one sparse half hands tower ``k`` its own with :meth:`tower`).

    ``source``: the rows it was pooled from (set by :class:`Pooling`), so that :meth:`side` pools
    a side from the rows again instead of slicing: the backward then scatters straight into the
    rows, without a zero-filled full-size gradient, and a detached side has no graph at all.
    """

    fields: Tensor | None = None
    lr: Tensor | None = None
    fm_sum: Tensor | None = None
    fm_sq: Tensor | None = None
    h1: tuple[Tensor, ...] | None = None
    source: PooledRows | None = field(default=None, repr=False, compare=False)

    def fm_term(self) -> Tensor:
        """FM second order ``sum_{i<j} <e_i, e_j>`` = ``0.5 (|sum_f e_f|^2 - sum_f |e_f|^2)``."""
        if self.fm_sum is not None and self.fm_sq is not None:
            return 0.5 * (self.fm_sum.square().sum(-1) - self.fm_sq)
        x = self.pooled()
        return 0.5 * (x.sum(-2).square() - x.square().sum(-2)).sum(-1)

    def first_layer(self, layer: nn.Module) -> Tensor:
        """``layer`` (weight ``(F*D, H)``, field-major) on the concatenated fields: the owners'
        ``h1`` plus the bias when DES substituted it, else ``layer(concat(fields))``."""
        if self.h1 is not None:
            if len(self.h1) != 1:
                raise ValueError(
                    f"this SparseOut holds the first-layer partials of {len(self.h1)} towers: a "
                    "dense half of several towers gives each tower its own with SparseOut.tower(k)"
                )
            return self.h1[0] + layer.bias
        return layer(self.pooled().flatten(-2))

    def pooled(self) -> Tensor:
        """The field embeddings ``(..., F, D)``; an error when the collection substituted them."""
        if self.fields is None:
            raise ValueError(
                "this operator needs the pooled field embeddings, but the collection returned "
                "only substituted partial sums (parallel.des): the DES operator set is wrong"
            )
        return self.fields

    def tower(self, k: int) -> SparseOut:
        """The input of tower ``k`` of a dense half of several towers over this sparse half
        (ESMM): the same fields and terms, and tower ``k``'s first-layer partial when ``h1`` holds
        one per tower."""
        if self.h1 is None:
            return self
        return replace(self, h1=(self.h1[k],))

    def side(self, positions: slice) -> SparseOut:
        """The samples at ``positions`` of each episode (e.g. the support side)."""
        if self.source is not None:
            return self.source.pool(positions)
        return self.apply(lambda t: t[:, positions])

    def detach(self) -> SparseOut:
        out = self.apply(Tensor.detach)
        out.source = None if self.source is None else self.source.detach()
        return out

    def apply(self, fn: Callable[[Tensor], Tensor]) -> SparseOut:
        """``fn`` on every present entry (the result has no ``source``)."""
        return SparseOut.from_dict({k: fn(v) for k, v in self.as_dict().items()})

    def as_dict(self) -> dict[str, Tensor]:
        """The present entries, flat (a pytree ``vmap`` maps; :meth:`from_dict` rebuilds): the
        first-layer partials as ``h1.0``, ``h1.1``, ..."""
        out = {k: getattr(self, k) for k in ("fields", "lr", "fm_sum", "fm_sq")}
        out.update({f"h1.{k}": h for k, h in enumerate(self.h1 or ())})
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, entries: dict[str, Tensor]) -> SparseOut:
        h1 = [entries[f"h1.{k}"] for k in range(len(entries)) if f"h1.{k}" in entries]
        rest = {k: v for k, v in entries.items() if not k.startswith("h1.")}
        return cls(**rest, h1=tuple(h1) if h1 else None)

    def with_row_offsets(self, fields_offset: Tensor, lr_offset: Tensor | None) -> SparseOut:
        """Add pooled task-local row offsets (meta learning's ``dense+emb``): pooling is linear,
        so pooling ``rows + offset`` equals ``pooled rows + pooled offset``."""
        lr = self.lr if lr_offset is None else self.lr + lr_offset
        return replace(self, fields=self.pooled() + fields_offset, lr=lr, source=None)


class Pooling(nn.Module):
    """Sum pooling of looked-up rows into per-sample fields, with the slot -> feature map.

    Example: features ``a`` (1 slot) and ``tags`` (2 slots) give ``slot_feature = [0, 1, 1]``; a
    sample with ``inverse = [4, 7, 0]`` gets ``fields[0] = rows[4]``, ``fields[1] = rows[7] +
    rows[0]`` (``rows[0]`` is the zero null row when the slot is padding).
    """

    def __init__(self, slot_feature: Sequence[int] | Tensor, num_fields: int) -> None:
        super().__init__()
        sf = torch.as_tensor(slot_feature, dtype=torch.int64).cpu()
        if sf.ndim != 1 or sf.numel() == 0:
            raise ValueError(
                "slot_feature must be a non-empty 1-D list (feature index of each slot)"
            )
        if sf.min() < 0 or sf.max() >= num_fields:
            raise ValueError(
                f"slot_feature values must lie in [0, {num_fields}), got {sf.tolist()}"
            )
        self.num_fields = num_fields
        self.num_slots = sf.numel()
        self.identity = self.num_slots == num_fields and bool(
            (sf == torch.arange(num_fields)).all()
        )
        self.register_buffer("slot_feature", sf, persistent=False)
        # (S, F) 0/1 matrix: pooling is one matmul (vmap- and double-backward-friendly).
        self.register_buffer("pool_matrix", F.one_hot(sf, num_fields).float(), persistent=False)

    def slots_per_field(self) -> list[int]:
        return torch.bincount(self.slot_feature.cpu(), minlength=self.num_fields).tolist()

    def fields(self, rows: Tensor, inverse: Tensor) -> Tensor:
        """``rows`` ``(U, D)``, ``inverse`` ``(..., S)`` -> field embeddings ``(..., F, D)``."""
        # index_select: its backward (index_add) is ~2x faster on CPU than that of rows[inverse].
        x = rows.index_select(0, inverse.reshape(-1)).view(*inverse.shape, rows.shape[-1])
        if self.identity:
            return x
        return torch.matmul(x.transpose(-1, -2), self.pool_matrix.to(x.dtype)).transpose(-1, -2)

    @staticmethod
    def lr(linear_rows: Tensor, inverse: Tensor) -> Tensor:
        """The LR operator: per-sample sum of the 1-wide rows of all slots, ``(...,)``."""
        w = linear_rows.reshape(-1).index_select(0, inverse.reshape(-1))
        return w.view(inverse.shape).sum(-1)

    def forward(self, emb: Tensor, linear: Tensor | None, inverse: Tensor) -> SparseOut:
        """Pooled fields (and the LR term when there is a linear table) of ``inverse``."""
        lr = None if linear is None else self.lr(linear, inverse)
        source = PooledRows(self, emb, linear, inverse)
        return SparseOut(fields=self.fields(emb, inverse), lr=lr, source=source)


@dataclass
class PooledRows:
    """Rows and the samples' ``inverse`` into them: what a pooled :class:`SparseOut` came from."""

    pooling: Pooling
    emb: Tensor
    linear: Tensor | None
    inverse: Tensor

    def pool(self, positions: slice) -> SparseOut:
        """The samples at ``positions`` of each episode, pooled from the rows."""
        return self.pooling(self.emb, self.linear, self.inverse[:, positions])

    def detach(self) -> PooledRows:
        lin = None if self.linear is None else self.linear.detach()
        return PooledRows(self.pooling, self.emb.detach(), lin, self.inverse)


@dataclass
class LookedUpRows:
    """The rows a collection's last lookup produced on this rank, as autograd leaves: ``emb``
    ``(U, D)`` and ``linear`` ``(U, 1)`` (or None) in the order of ``ids``. Their ``.grad`` after
    ``backward`` is what ``apply_gradients`` applies."""

    ids: Tensor
    emb: Tensor
    linear: Tensor | None

    def grads(self) -> dict[str, Tensor | None]:
        out = {"emb": self.emb.grad}
        if self.linear is not None:
            out["linear"] = self.linear.grad
        return out


class Batch(Protocol):
    """What a lookup reads of an ``EpisodeBatch``: sorted unique ``ids`` ``(U,)`` and the samples'
    ``inverse`` ``(T, N, S)`` into them."""

    ids: Tensor
    inverse: Tensor


class EmbeddingCollection(Protocol):
    """An embedding collection: the rows, their row-wise optimizer and the pooling.

    Implementations: :class:`trainer.embeddings.PlainEmbeddingCollection` (one process, no cache:
    the reference), :class:`trainer.parallel.sharded_embeddings.ShardedEmbeddingCollection`
    (rows owned by ranks; optionally MixCache and DES; world size 1 included), and the read-only
    :class:`trainer.exported.model.TableEmbeddings` (``read`` only).
    """

    dim: int
    total_rows: int
    pooling: Pooling

    @property
    def has_linear(self) -> bool: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def lookup(self, batch: Batch) -> SparseOut:
        """Training lookup: per-sample results whose ``backward`` reaches the rows (a collective
        when sharded); the collection keeps what it needs for :meth:`apply_gradients`."""
        ...

    def read(self, batch: Batch) -> SparseOut:
        """Evaluation lookup: the pooled rows without substitution and without gradients."""
        ...

    def is_null(self, ids: Tensor) -> Tensor:
        """``(U,)`` bool: the null (padding) rows among ``ids``, fixed at zero."""
        ...

    def apply_gradients(self, lr: float) -> None:
        """Row-wise Adagrad with the gradients of the last lookup (after ``loss.backward()``)."""
        ...

    def prefetch(self, batch: Batch) -> None:
        """Stage the next step's rows (MixCache) while this step computes; may be a no-op."""
        ...

    def state_dict(self) -> dict[str, Tensor | str | int]: ...

    def load_state_dict(self, state: dict[str, Tensor | str | int]) -> None: ...

    def cache_stats(self, reset: bool = True) -> dict[str, float]: ...

    def close(self) -> None: ...
