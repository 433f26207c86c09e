"""Building blocks shared by the model zoo: field pooling (the sparse half), MLPs, and the three
operators that distributed equivalent substitution (DES) will later replace.

Every model is split in two (see ``build.py``):

* the **sparse half** (:class:`SparseArch`, no parameters): looked-up rows -> per-field embeddings
  ``(..., F, D)`` by sum pooling over each feature's slots, plus the per-sample sum of the 1-wide
  linear weights. It runs once per step, for support and query samples together.
* the **dense half**: a module holding every dense parameter whose ``forward(fields, linear,
  dense) -> logit`` is a pure function of its inputs, so ``torch.func.functional_call`` can run it
  with per-task parameters under ``vmap``.

DES operators (kept as free functions so a later issue can substitute each one by owner-side partial
sums without touching the models): :func:`lr_term`, :func:`fm_sums` (+ :func:`fm_from_sums`) and
:func:`field_concat_linear`.

With DES (``trainer/parallel/des.py``) the dense half receives ``fields`` as a dict instead of a
tensor: the owners' summed partial results ``fm_sum`` ``(..., D)``, ``fm_sq`` ``(...,)`` and ``h1``
``(..., H)`` (= ``concat(fields) @ W`` without bias) for the substituted operators, plus
``fields`` ``(..., F, D)`` when another operator still needs the pooled embeddings.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class SparseFeatures:
    """Output of the sparse half: ``fields`` ``(..., F, D)`` (under DES a dict of partial
    results, see the module docstring) and ``linear`` ``(...,)`` (or ``None``)."""

    fields: Tensor | dict[str, Tensor]
    linear: Tensor | None


# ---------------------------------------------------------------------------------------------
# DES operators


def lr_term(linear_rows: Tensor, inverse: Tensor) -> Tensor:
    """LR operator: per-sample sum of the 1-wide weights of all its slots.

    ``linear_rows`` ``(U, 1)``, ``inverse`` ``(..., S)`` -> ``(...,)``. Null slots read a zero row.
    """
    w = linear_rows.reshape(-1).index_select(0, inverse.reshape(-1))
    return w.view(inverse.shape).sum(-1)


def fm_sums(fields: Tensor) -> tuple[Tensor, Tensor]:
    """FM operator, first part: per-sample sum and sum of squares over fields, ``(..., D)`` each."""
    return fields.sum(-2), fields.square().sum(-2)


def fm_from_sums(total: Tensor, total_sq: Tensor) -> Tensor:
    """FM second-order term from :func:`fm_sums`: ``0.5 * sum_d (s_d^2 - q_d)`` = sum of all pairwise
    field dot products (``sum_{i<j} <e_i, e_j>``), ``(...,)``."""
    return 0.5 * (total.square() - total_sq).sum(-1)


def fm_from_partials(total: Tensor, total_sq: Tensor) -> Tensor:
    """FM second-order term from DES partials: ``total`` ``(..., D)`` = sum of the field
    embeddings, ``total_sq`` ``(...,)`` = sum over fields of ``|e_f|^2``. Equals
    :func:`fm_from_sums` (which takes the per-dimension sum of squares)."""
    return 0.5 * (total.square().sum(-1) - total_sq)


def pooled_fields(fields: Tensor | dict[str, Tensor]) -> Tensor:
    """The field embeddings ``(..., F, D)`` (a plain tensor, or the ``fields`` entry under DES)."""
    if isinstance(fields, dict):
        assert "fields" in fields, "DES: this operator needs the rows, but they were not exchanged"
        return fields["fields"]
    return fields


def field_concat_linear(fields: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """First dense layer over the concatenated field embeddings: ``concat_f(e_f) @ W + b``.

    ``fields`` ``(..., F, D)``, ``weight`` ``(F*D, H)`` (field-major: rows ``f*D:(f+1)*D`` belong to
    field ``f``, which is what lets DES compute per-field partial products at the owner).
    """
    return linear(fields.flatten(-2), weight, bias)


# ---------------------------------------------------------------------------------------------
# Sparse half


class SparseArch(nn.Module):
    """Pools looked-up rows into field embeddings with the slot -> feature map (sum pooling).

    Example: features ``a`` (1 slot) and ``tags`` (2 slots) give ``slot_feature = [0, 1, 1]``; a
    sample with ``inverse = [4, 7, 0]`` gets ``fields[0] = rows[4]``, ``fields[1] = rows[7] +
    rows[0]`` (and ``rows[0]`` is the zero null row when the slot is padding).
    """

    def __init__(self, slot_feature: Sequence[int] | Tensor, num_fields: int) -> None:
        super().__init__()
        sf = torch.as_tensor(slot_feature, dtype=torch.int64)
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
        # (S, F) 0/1 matrix: pooling is one matmul (vmap- and double-backward-friendly).
        pool = F.one_hot(sf, num_fields).float()
        self.register_buffer("pool_matrix", pool, persistent=False)

    def pool(self, rows: Tensor, inverse: Tensor) -> Tensor:
        """``rows`` ``(U, D)``, ``inverse`` ``(..., S)`` -> field embeddings ``(..., F, D)``."""
        # index_select: its backward (index_add) is ~2x faster on CPU than that of rows[inverse].
        x = rows.index_select(0, inverse.reshape(-1)).view(*inverse.shape, rows.shape[-1])
        if self.identity:
            return x
        return torch.matmul(x.transpose(-1, -2), self.pool_matrix.to(x.dtype)).transpose(-1, -2)

    def forward(
        self, emb_rows: Tensor, linear_rows: Tensor | None, inverse: Tensor
    ) -> SparseFeatures:
        linear = None if linear_rows is None else lr_term(linear_rows, inverse)
        return SparseFeatures(self.pool(emb_rows, inverse), linear)


# ---------------------------------------------------------------------------------------------
# Dense building blocks


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight + bias`` with ``weight`` stored ``(in, out)`` (one fused addmm)."""
    return F.linear(x, weight.t(), bias)


@contextmanager
def capture_linear_inputs() -> Iterator[dict[int, Tensor]]:
    """Record the input of every :class:`Linear` run inside the block, keyed by ``id(module)``.

    Meta learning needs the support inputs of the adapted layers (see :class:`Linear`), while a
    dense half's forward returns only logits; a context-local record keeps the model code unaware.
    """
    inputs: dict[int, Tensor] = {}
    token = _CAPTURE.set(inputs)
    try:
        yield inputs
    finally:
        _CAPTURE.reset(token)


_CAPTURE: ContextVar[dict[int, Tensor] | None] = ContextVar("linear_inputs", default=None)


class Linear(nn.Module):
    """``x @ weight + bias`` (weight stored ``(in, out)``) with optional per-episode adaptation.

    Meta learning (``trainer/meta.py``) sets these ``None`` buffers through ``functional_call``:

    * ``out_offset`` ``(n, out)``: added to the outputs. It is zero; the inner loop differentiates
      with respect to it to get each support sample's output gradient ``delta_k`` instead of a
      weight gradient per episode (for a layer with a bias, the inner loop differentiates with
      respect to a per-sample expanded view of the bias instead, which costs no extra pass);
    * ``factor_a`` ``(R, in)`` and ``factor_b`` ``(R, out)``: a low-rank offset of the parameters.
      One SGD step on a support set of ``K`` samples with inputs ``x_k`` moves the weight by
      ``-lr * sum_k x_k^T delta_k`` and the bias by ``-lr * sum_k delta_k``: a rank-``K`` offset
      ``A^T B`` with ``A = [x_k]`` and ``B = [-lr * delta_k]``. The adapted layer computes
      ``x @ W + b + (x @ A^T + 1) @ B`` (the ``+ 1`` applies the bias offset; absent without bias),
      so no per-episode copy of ``W`` is ever formed: ``K x in`` and ``K x out`` per episode instead
      of ``in x out``, and the shared ``x @ W`` stays one matmul over all episodes. Exact, not an
      approximation; each inner step appends ``K`` rows to ``A`` and ``B``.

    Why ``(in, out)`` and not ``nn.Linear``'s ``(out, in)``: the plain forward is the same, and the
    weight is ``W`` in ``x @ W`` as in the formulas above. Initialisation as ``nn.Linear``:
    uniform(+-1/sqrt(in_features)) for weight and bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = (
            nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None
        )
        for name in ADAPT_BUFFERS:
            self.register_buffer(name, None, persistent=False)

    def offset(self, y: Tensor, x: Tensor) -> Tensor:
        """``y`` (this layer's plain output for input ``x``) plus the per-episode adaptation."""
        captured = _CAPTURE.get()
        if captured is not None:
            captured[id(self)] = x
        if self.out_offset is not None:
            y = y + self.out_offset
        if self.factor_a is not None:
            g = torch.matmul(x, self.factor_a.transpose(-1, -2))  # (n, R)
            if self.bias is not None:
                g = g + 1.0
            y = y + torch.matmul(g, self.factor_b)
        return y

    def forward(self, x: Tensor) -> Tensor:
        return self.offset(linear(x, self.weight, self.bias), x)


ADAPT_BUFFERS = ("out_offset", "factor_a", "factor_b")
"""The per-episode adaptation buffers of :class:`Linear` (``None`` outside meta learning)."""


class MLP(nn.Module):
    """Linear layers with ReLU between them (and after the last one when ``final_relu``)."""

    def __init__(self, in_features: int, sizes: Sequence[int], final_relu: bool = False) -> None:
        super().__init__()
        widths = [in_features, *sizes]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in itertools.pairwise(widths))
        self.final_relu = final_relu

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1 or self.final_relu:
                x = F.relu(x)
        return x

    def layer_names(self, prefix: str) -> list[list[str]]:
        """Parameter names of each layer, input to output (for choosing the adapted head)."""
        return [
            [f"{prefix}.layers.{i}.weight", f"{prefix}.layers.{i}.bias"]
            for i in range(len(self.layers))
        ]


class FieldLinear(nn.Module):
    """The first dense layer of a deep tower: ``field_concat_linear`` over the fields plus a linear
    map of the dense features (kept apart so DES can substitute the field part alone)."""

    def __init__(self, num_fields: int, dim: int, dense_width: int, out_features: int) -> None:
        super().__init__()
        self.fields = Linear(num_fields * dim, out_features)
        self.dense = Linear(dense_width, out_features, bias=False) if dense_width else None

    def forward(self, fields: Tensor | dict[str, Tensor], dense: Tensor) -> Tensor:
        if isinstance(fields, dict) and "h1" in fields:
            # DES: the owners computed concat(fields) @ W; these weights adapt only in the outer
            # loop (meta learning refuses to adapt this layer then), so there is no offset here.
            assert self.fields.factor_a is None and self.fields.out_offset is None
            y = fields["h1"] + self.fields.bias
        else:
            x = pooled_fields(fields)
            y = field_concat_linear(x, self.fields.weight, self.fields.bias)
            y = self.fields.offset(y, x.flatten(-2))  # per-episode offset (meta learning), if set
        if self.dense is not None:
            y = y + self.dense(dense)
        return y

    def param_names(self, prefix: str) -> list[str]:
        names = [f"{prefix}.fields.weight", f"{prefix}.fields.bias"]
        return [*names, f"{prefix}.dense.weight"] if self.dense is not None else names


class DeepTower(nn.Module):
    """Deep MLP over the concatenated fields (+ dense features): ``FieldLinear`` -> ReLU -> MLP -> 1.

    Used by DeepFM and Wide&Deep (the deep part) and MeLU (its decision layers).
    """

    def __init__(self, num_fields: int, dim: int, dense_width: int, sizes: Sequence[int]) -> None:
        super().__init__()
        self.first = FieldLinear(num_fields, dim, dense_width, sizes[0])
        self.over_arch = MLP(sizes[0], [*sizes[1:], 1])

    def forward(self, fields: Tensor | dict[str, Tensor], dense: Tensor) -> Tensor:
        return self.over_arch(F.relu(self.first(fields, dense))).squeeze(-1)

    def layer_names(self, prefix: str) -> list[list[str]]:
        return [
            self.first.param_names(f"{prefix}.first"),
            *self.over_arch.layer_names(f"{prefix}.over_arch"),
        ]
