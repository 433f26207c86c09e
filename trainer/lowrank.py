"""Meta learning's inner-loop trick: per-episode adaptation of linear layers as low-rank offsets,
applied through forward hooks so that the models stay plain (``trainer/meta.py`` uses it).

One SGD step on a support set of ``K`` samples with inputs ``x_k`` and output gradients ``delta_k``
moves a layer's weight by ``-lr * sum_k x_k^T delta_k`` and its bias by ``-lr * sum_k delta_k``: a
rank-``K`` offset ``A^T B`` with ``A = [x_k]`` and ``B = [-lr * delta_k]``. The adapted layer
computes ``x @ W + b + (x @ A^T + 1) @ B`` (the ``+ 1`` applies the bias offset; absent without a
bias), so no per-episode copy of ``W`` is ever formed: ``K x (in + out)`` numbers per episode
instead of ``in x out``, and the shared ``x @ W`` stays one matmul over all episodes. Exact, not an
approximation; each inner step appends ``K`` rows to ``A`` and ``B``.

The inner loop gets ``delta_k`` by differentiating with respect to the layer's outputs: for a layer
with a bias, with respect to a per-sample expanded view of the bias (passed as a parameter through
``functional_call``: no extra pass); without a bias, with respect to a zero ``offset`` added to the
outputs. It gets ``x_k`` from the hook, which records every adapted layer's input.

    adaptation = LowRankAdaptation({"deep.over_arch.layers.1": layer, ...})
    with adaptation.active(factors, offsets) as inputs:   # hooks installed for the block only
        logits = functional_call(model.dense_half, params, (sparse, dense))
    inputs["deep.over_arch.layers.1"]                     # that layer's input in this forward

Batched over the episodes (no ``vmap``): inputs ``(T, n, in)``, outputs ``(T, n, out)``, factors
``(T, R, in)`` and ``(T, R, out)``; ``x @ W`` stays one matmul over all episodes and the low-rank
term is one ``baddbmm`` (added into the output by the matmul itself, no extra pass).

A per-episode update that is not low-rank (Meta-SGD's per-parameter step sizes scale every entry
of ``A^T B`` on its own) is a full weight offset ``dW`` ``(T, in, out)`` and bias offset ``db``
``(T, out)`` (:data:`Deltas`): the layer adds ``x @ dW + db``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

Factors = dict[str, tuple[Tensor, Tensor]]
"""Per adapted layer name: ``A`` ``(T, R, in)`` and ``B`` ``(T, R, out)`` (per episode)."""
Deltas = dict[str, tuple[Tensor, Tensor | None]]
"""Per adapted layer name: a weight offset ``(T, in, out)`` and a bias offset ``(T, out)`` or
None (per episode)."""


class LowRankAdaptation:
    """Low-rank offsets for the linear ``layers`` (name -> module with ``weight`` ``(in, out)``
    and an optional ``bias``), installed as forward hooks by :meth:`active`."""

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self.layers = dict(layers)

    @contextmanager
    def active(
        self,
        factors: Factors,
        offsets: Mapping[str, Tensor] | None = None,
        deltas: Deltas | None = None,
    ) -> Iterator[dict[str, Tensor]]:
        """Within the block, every adapted layer adds ``offsets[name]`` (``(T, n, out)``), its full
        offset ``x @ dW + db`` (``deltas[name]``) and its low-rank term ``(x @ A^T [+ 1]) @ B`` to
        its output; yields the layers' inputs ``x`` as the forward records them."""
        inputs: dict[str, Tensor] = {}
        offsets, deltas = offsets or {}, deltas or {}
        handles = [
            module.register_forward_hook(
                _hook(name, factors.get(name), offsets.get(name), deltas.get(name), inputs)
            )
            for name, module in self.layers.items()
        ]
        try:
            yield inputs
        finally:
            for h in handles:
                h.remove()


def _hook(
    name: str,
    factor: tuple[Tensor, Tensor] | None,
    offset: Tensor | None,
    delta: tuple[Tensor, Tensor | None] | None,
    inputs: dict[str, Tensor],
) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
    def hook(module: nn.Module, args: tuple[Tensor, ...], y: Tensor) -> Tensor:
        x = args[0]
        inputs[name] = x
        if offset is not None:
            y = y + offset
        if delta is not None:
            dw, db = delta
            y = torch.baddbmm(y, x, dw)
            if db is not None:
                y = y + db.unsqueeze(-2)
        if factor is not None:
            a, b = factor
            g = torch.bmm(x, a.transpose(-1, -2))  # (T, n, R)
            if module.bias is not None:
                g = g + 1.0
            y = torch.baddbmm(y, g, b)
        return y

    return hook
