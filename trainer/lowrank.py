"""Meta learning's inner-loop trick: per-episode adaptation of linear layers as low-rank offsets,
applied through forward hooks so that the models stay plain (``trainer/meta.py`` uses it).

One SGD step on a support set of ``K`` samples with inputs ``x_k`` and output gradients ``delta_k``
moves a layer's weight by ``-lr * sum_k x_k^T delta_k`` and its bias by ``-lr * sum_k delta_k``: a
rank-``K`` offset ``s A^T B`` with ``A = [x_k]``, ``B = [-delta_k]`` and the step size ``s = lr``.
The adapted layer computes ``x @ W + b + (s (x @ A^T + 1)) @ B`` (the ``+ 1`` applies the bias
offset; absent without a bias; ``s`` scales the small ``(n, R)`` matrix, not ``B``), so no
per-episode copy of ``W`` is ever formed: ``K x (in + out)`` numbers per episode
instead of ``in x out``, and the shared ``x @ W`` stays one matmul over all episodes. Exact, not an
approximation; each inner step appends ``K`` rows to ``A`` and ``B``.

The hook records every adapted layer's input ``x`` and output ``y``; the inner loop gets ``x_k``
from it and ``delta_k`` by differentiating with respect to ``y`` (no extra pass, nothing added to
the forward).

    adaptation = LowRankAdaptation({"deep.over_arch.layers.1": layer, ...})
    with adaptation.active(factors) as seen:                # hooks installed for the block only
        logits = functional_call(model.dense_half, params, (sparse, dense))
    x, y = seen["deep.over_arch.layers.1"]                  # that layer's input and output

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
from typing import Any

import torch
from torch import Tensor, nn

Factors = dict[str, tuple[Tensor, Tensor, float | Tensor]]
"""Per adapted layer name: ``A`` ``(T, R, in)`` and ``B`` ``(T, R, out)`` (per episode) and the
step size ``s`` (a number, or a 0-d tensor when it is learned)."""
Sums = dict[str, tuple[Tensor, Tensor]]
"""Per adapted layer name: ``A`` and ``B`` before the step size (what the inner loop sums)."""
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
        self, factors: Factors, deltas: Deltas | None = None, leaf_outputs: bool = False
    ) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
        """Within the block, every adapted layer adds its full offset ``x @ dW + db``
        (``deltas[name]``) and its low-rank term ``(s (x @ A^T [+ 1])) @ B`` to its output; yields
        each layer's input ``x`` and output ``y`` as the forward records them. ``leaf_outputs``: an
        output that does not require grad (a forward on detached tensors) continues as a leaf that
        does, so that the caller can differentiate with respect to it."""
        seen: dict[str, tuple[Tensor, Tensor]] = {}
        deltas = deltas or {}
        handles = [
            module.register_forward_hook(
                _hook(name, factors.get(name), deltas.get(name), leaf_outputs, seen)
            )
            for name, module in self.layers.items()
        ]
        try:
            yield seen
        finally:
            for h in handles:
                h.remove()


def _hook(
    name: str,
    factor: tuple[Tensor, Tensor, float | Tensor] | None,
    delta: tuple[Tensor, Tensor | None] | None,
    leaf_outputs: bool,
    seen: dict[str, tuple[Tensor, Tensor]],
) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
    def hook(module: nn.Module, args: tuple[Tensor, ...], y: Tensor) -> Tensor:
        x = args[0]
        if delta is not None:
            dw, db = delta
            y = torch.baddbmm(y, x, dw)
            if db is not None:
                y = y + db.unsqueeze(-2)
        if factor is not None:
            a, b, step = factor
            y = low_rank_term(y, x, a, b, step, module.bias is not None)
        if leaf_outputs and not y.requires_grad:
            y = y.detach().requires_grad_()
        seen[name] = (x, y)
        return y

    return hook


def low_rank_term(
    y: Tensor, x: Tensor, a: Tensor, b: Tensor, step: float | Tensor, bias: bool
) -> Tensor:
    """``y + (s (x @ a^T [+ 1])) @ b`` (``[+ 1]`` when ``bias``): the low-rank term added to a
    layer's output ``y`` ``(T, n, out)`` for its input ``x`` ``(T, n, in)``, factors ``a``
    ``(T, R, in)``, ``b`` ``(T, R, out)`` and step size ``s``, differentiable to any order."""
    return _LowRankTerm.apply(y, x, a, b, step, bias)


class _LowRankTerm(torch.autograd.Function):
    """:func:`low_rank_term` with its backward written out. What autograd would record for the same
    expression (bmm, add, mul, baddbmm) computes the factor ``a``'s gradient as the transpose of a
    ``(T, in, R)`` product; adding that strided tensor into the gradient of the layer input it
    came from (``a`` is the support side's ``x``) is several times slower than a contiguous add.
    Here every gradient is one contiguous batched matmul, and the small ``(T, n, R)`` matrix is
    formed once. Differentiable again (the inner loop's later steps differentiate it with
    ``create_graph``): the backward is made of differentiable operations and, when it is being
    recorded, recomputes the small matrix from ``x`` and ``a`` so that it carries their history.
    """

    @staticmethod
    def forward(
        ctx: Any, y: Tensor, x: Tensor, a: Tensor, b: Tensor, step: float | Tensor, bias: bool
    ) -> Tensor:
        g = torch.bmm(x, a.transpose(-1, -2))  # (T, n, R)
        if bias:
            g.add_(1.0)
        gs = g * step
        ctx.bias = bias
        ctx.step_is_tensor = isinstance(step, Tensor)
        ctx.step = None if ctx.step_is_tensor else step
        saved = (x, a, b, g, gs, step) if ctx.step_is_tensor else (x, a, b, g, gs)
        ctx.save_for_backward(*saved)
        return torch.baddbmm(y, gs, b)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, a, b, g, gs, *rest = ctx.saved_tensors
        step = rest[0] if ctx.step_is_tensor else ctx.step
        if torch.is_grad_enabled():  # recorded (create_graph): g with the history of x and a
            g = torch.bmm(x, a.transpose(-1, -2))
            g = g + 1.0 if ctx.bias else g
            gs = g * step
        need = ctx.needs_input_grad
        dgs = torch.bmm(grad, b.transpose(-1, -2))  # (T, n, R)
        dg = dgs * step if need[1] or need[2] else None
        dx = torch.bmm(dg, a) if need[1] else None
        da = torch.bmm(dg.transpose(-1, -2), x) if need[2] else None
        db = torch.bmm(gs.transpose(-1, -2), grad) if need[3] else None
        dstep = (dgs * g).sum() if ctx.step_is_tensor and need[4] else None
        return grad, dx, da, db, dstep, None
