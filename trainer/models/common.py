"""Building blocks shared by the model zoo: linear layers, MLPs and the deep tower.

Every model is a dense half (see ``build.py``): a module holding every dense parameter whose
``forward(sparse, dense) -> logit`` is a pure function of its inputs, so ``torch.func.
functional_call`` can run it with per-task parameters under ``vmap``. ``sparse`` is a
:class:`~trainer.sparse.SparseOut` from the embedding collection; the models read it through its
methods (``fm_term``, ``first_layer``, ``pooled``), whatever the collection computed it from.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.sparse import SparseOut


def relu(x: Tensor) -> Tensor:
    """``F.relu``, with the same values and derivatives of every order, minus a zero tensor per
    second-order pass: autograd differentiates ReLU's backward ``threshold_backward(grad, out)``
    with respect to ``out`` too, as a ``zeros_like`` added into ``out``'s gradient (two full
    passes per layer in every MAML step); here that derivative is absent (ReLU'' = 0)."""
    return _ReLU.apply(x)


class _ReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return _ReLUBackward.apply(grad, out)


class _ReLUBackward(torch.autograd.Function):
    """``threshold_backward(grad, out, 0)`` (ReLU's backward, as autograd's), linear in ``grad``
    and with no derivative with respect to ``out``."""

    @staticmethod
    def forward(ctx: Any, grad: Tensor, out: Tensor) -> Tensor:
        ctx.save_for_backward(out)
        return torch.ops.aten.threshold_backward(grad, out, 0)

    @staticmethod
    def backward(ctx: Any, grad_grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        return _ReLUBackward.apply(grad_grad, out), None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight + bias`` with ``weight`` stored ``(in, out)`` (one fused addmm)."""
    return F.linear(x, weight.t(), bias)


class Linear(nn.Module):
    """``x @ weight + bias`` with the weight stored ``(in, out)``.

    Why ``(in, out)`` and not ``nn.Linear``'s ``(out, in)``: the plain forward is the same, and the
    weight is ``W`` in ``x @ W`` as in the meta-learning formulas (``trainer/lowrank.py``, which
    adapts these layers through forward hooks). Initialisation as ``nn.Linear``:
    uniform(+-1/sqrt(in_features)) for weight and bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = (
            nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None
        )

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


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
                x = relu(x)
        return x

    def layer_names(self, prefix: str) -> list[list[str]]:
        """Parameter names of each layer, input to output (for choosing the adapted head)."""
        return [
            [f"{prefix}.layers.{i}.weight", f"{prefix}.layers.{i}.bias"]
            for i in range(len(self.layers))
        ]


class FieldLinear(nn.Module):
    """The first dense layer of a deep tower: ``from_fields`` on the concatenated field embeddings
    (``(F*D, H)``, field-major: rows ``f*D:(f+1)*D`` belong to field ``f``) plus ``from_dense`` on
    the dense features. The field part is applied by ``SparseOut.first_layer``, which may hold it
    precomputed (``h1``) by the collection."""

    def __init__(self, num_fields: int, dim: int, dense_width: int, out_features: int) -> None:
        super().__init__()
        self.from_fields = Linear(num_fields * dim, out_features)
        self.from_dense = Linear(dense_width, out_features, bias=False) if dense_width else None

    def forward(self, sparse: SparseOut, dense: Tensor) -> Tensor:
        y = sparse.first_layer(self.from_fields)
        if self.from_dense is not None:
            y = y + self.from_dense(dense)
        return y

    def param_names(self, prefix: str) -> list[str]:
        names = [f"{prefix}.from_fields.weight", f"{prefix}.from_fields.bias"]
        return [*names, f"{prefix}.from_dense.weight"] if self.from_dense is not None else names


class DeepTower(nn.Module):
    """Deep MLP over the concatenated fields (+ dense features): ``FieldLinear`` -> ReLU -> MLP -> 1.

    Used by DeepFM and Wide&Deep (the deep part) and MeLU (its decision layers).
    """

    def __init__(self, num_fields: int, dim: int, dense_width: int, sizes: Sequence[int]) -> None:
        super().__init__()
        self.first = FieldLinear(num_fields, dim, dense_width, sizes[0])
        self.over_arch = MLP(sizes[0], [*sizes[1:], 1])

    def forward(self, sparse: SparseOut, dense: Tensor) -> Tensor:
        return self.over_arch(relu(self.first(sparse, dense))).squeeze(-1)

    def layer_names(self, prefix: str) -> list[list[str]]:
        return [
            self.first.param_names(f"{prefix}.first"),
            *self.over_arch.layer_names(f"{prefix}.over_arch"),
        ]
