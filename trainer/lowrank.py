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
term is one ``baddbmm`` (added into the output by the matmul itself, no extra pass). An adapted
layer's gradients all come from :func:`adapted_linear`, whose backward is written out: a MAML step
is bound by memory traffic over ``(T, n, width)`` tensors, and autograd's recording of the same
expression spends several more passes over them (see :class:`_AdaptedLinear`).

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
        if factor is not None:  # y's value reused: the layer's gradients are adapted_linear's
            y = adapted_linear(y.detach(), x, module.weight, module.bias, *factor)
        if delta is not None:
            dw, db = delta
            y = torch.baddbmm(y, x, dw)
            if db is not None:
                y = y + db.unsqueeze(-2)
        if leaf_outputs and not y.requires_grad:
            y = y.detach().requires_grad_()
        seen[name] = (x, y)
        return y

    return hook


def adapted_linear(
    y: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    a: Tensor,
    b: Tensor,
    step: float | Tensor,
) -> Tensor:
    """The adapted layer ``x @ weight + bias + (s (x @ a^T [+ 1])) @ b`` (``[+ 1]`` with a bias)
    for inputs ``x`` ``(T, n, in)``, factors ``a`` ``(T, R, in)`` and ``b`` ``(T, R, out)`` and
    step size ``s``, given the shared part's value ``y = x @ weight + bias`` (detached: the layer's
    gradients, ``weight``'s and ``bias``'s included, are this function's; overwritten with the
    result). Differentiable to any order."""
    return _AdaptedLinear.apply(y, x, weight, bias, a, b, step)


class _AdaptedLinear(torch.autograd.Function):
    """:func:`adapted_linear` with its backward written out, for what autograd would record for
    the same expression spends several extra passes over ``(T, n, in)`` tensors, and this step is
    bound by memory traffic: the input's gradient ``grad @ weight^T`` takes the low-rank part in
    place (``baddbmm_``) instead of a second tensor and an add; the factor ``a``'s gradient is
    one contiguous product (autograd forms the transpose of a ``(T, in, R)`` product, and adding
    that strided tensor into the gradient of the support input it came from is several times
    slower than a contiguous add); the small ``(T, n, R)`` matrix is formed once. Differentiable
    again (the inner loop's later steps differentiate it with ``create_graph``): when the backward
    is recorded, it recomputes the small matrix from ``x`` and ``a`` (so that it carries their
    history) and works out of place."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, x: Tensor, weight: Tensor, *factors: Any) -> Tensor:
        bias, a, b, step = factors  # (types: adapted_linear's)
        g = torch.bmm(x, a.transpose(-1, -2))  # (T, n, R)
        if bias is not None:
            g.add_(1.0)
        gs = g * step
        ctx.has_bias = bias is not None
        ctx.step = None if isinstance(step, Tensor) else step
        saved = (x, weight, a, b, g, gs)
        ctx.save_for_backward(*saved, *([step] if ctx.step is None else []))
        ctx.mark_dirty(y)  # y (detached, saved by no one) takes the low-rank part in place
        device = x.device.type  # the backward runs under the forward's autocast, as autocast's own
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        return y.baddbmm_(gs.to(y.dtype), b.to(y.dtype))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        device, dtype, enabled = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _AdaptedLinear._backward(ctx, grad)

    @staticmethod
    def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, a, b, g, gs, *learned = ctx.saved_tensors
        step = learned[0] if learned else ctx.step
        recording = torch.is_grad_enabled()  # create_graph: every operation differentiable
        if recording:
            g = torch.bmm(x, a.transpose(-1, -2))
            g = g + 1.0 if ctx.has_bias else g
            gs = g * step
        _, need_x, need_w, need_bias, need_a, need_b, need_step = ctx.needs_input_grad
        dgs = torch.bmm(grad, b.transpose(-1, -2))  # (T, n, R)
        dg = dgs * step if need_x or need_a else None
        dx = dw = dbias = None
        if need_x:
            dx = (grad.flatten(0, -2) @ weight.t()).view(x.shape)
            dg_, a_ = dg.to(dx.dtype), a.to(dx.dtype)  # (no copies unless under autocast)
            dx = torch.baddbmm(dx, dg_, a_) if recording else dx.baddbmm_(dg_, a_)
        if need_w:
            dw = x.flatten(0, -2).t() @ grad.flatten(0, -2)
        if need_bias:
            dbias = grad.flatten(0, -2).sum(0)
        da = torch.bmm(dg.transpose(-1, -2), x) if need_a else None
        db = torch.bmm(gs.transpose(-1, -2), grad) if need_b else None
        dstep = (dgs * g).sum() if learned and need_step else None
        return None, dx, dw, dbias, da, db, dstep
