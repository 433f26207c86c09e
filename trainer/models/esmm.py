"""ESMM (Ma et al. 2018): CTR and CVR in one model over the whole impression space.

Conversions are observed only after a click and are rare, so a CVR model trained on clicked
samples alone sees a biased, small sample. ESMM instead trains two towers on every impression::

    pCTR   = sigmoid(ctr_tower(sparse, dense))       loss: BCE(pCTR, click)
    pCVR   = sigmoid(cvr_tower(sparse, dense))       (no loss of its own)
    pCTCVR = pCTR * pCVR                             loss: BCE(pCTCVR, click * conversion)

Both towers are dense halves of the configured architecture reading the SAME pooled embeddings
(the collection is shared): tower ``k`` reads ``sparse.tower(k)``, the same input, with its own
first-layer partial where the collection computed one per tower. The dense half returns the two
logits stacked on a last axis of 2 (``[..., 0]`` CTR, ``[..., 1]`` CVR). The CTCVR loss is skipped
where the conversion is unknown (-1: advertisers without a conversion pixel); the CTR loss counts
on every impression.

This module is model code, like the rest of ``trainer/models``: the sparse half is given to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.sparse import SparseOut

TASKS = ("ctr", "esmm")
HEADS = ("ctr", "cvr")
"""The towers, in the order of the dense half's last axis."""


class ESMMDense(nn.Module):
    """Two dense halves over the same sparse input: ``forward(sparse, dense) -> (..., 2)`` logits
    ``[ctr, cvr]``."""

    def __init__(self, ctr: nn.Module, cvr: nn.Module) -> None:
        super().__init__()
        self.ctr = ctr
        self.cvr = cvr

    def forward(self, sparse: SparseOut, dense: Tensor) -> Tensor:
        ctr, cvr = (getattr(self, t)(sparse.tower(k), dense) for k, t in enumerate(HEADS))
        return torch.stack([ctr, cvr], dim=-1)

    def layer_names(self) -> list[list[str]]:
        """Main-path layers of the CTR tower, then of the CVR tower (each input to output)."""
        return [
            [f"{tower}.{name}" for name in layer]
            for tower in HEADS
            for layer in getattr(self, tower).layer_names()
        ]

    def head_layer_names(self, k: int) -> list[list[str]]:
        """The last ``k`` layers of each tower (``adapt = "head"``)."""
        return [
            [f"{tower}.{name}" for name in layer]
            for tower in HEADS
            for layer in getattr(self, tower).layer_names()[-k:]
        ]


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both ends (Maechler 2012)."""
    x = x.clamp(max=-1e-30)
    return torch.where(
        x > -math.log(2.0),
        torch.log(-torch.expm1(x.clamp(min=-math.log(2.0)))),
        torch.log1p(-torch.exp(x.clamp(max=-math.log(2.0)))),
    )


def ctcvr_logit(logits: Tensor) -> Tensor:
    """The logit of ``pCTCVR = pCTR * pCVR`` from the stacked ``(..., 2)`` logits."""
    log_p = F.logsigmoid(logits[..., 0]) + F.logsigmoid(logits[..., 1])
    return log_p - log1mexp(log_p)


def labels(click: Tensor, conversion: Tensor, dtype: torch.dtype) -> Tensor:
    """Stacked ``(..., 2)`` labels ``[click, ctcvr]``: ``ctcvr = click * conversion``, -1 where
    the conversion is unknown (``conversion = -1``)."""
    ctcvr = torch.where(conversion >= 0, click * conversion.clamp_min(0), -1.0)
    return torch.stack([click, ctcvr], dim=-1).to(dtype)


def sample_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample ESMM loss ``(...,)`` from logits and labels ``(..., 2)`` (:func:`labels`):
    ``BCE(pCTR, click) + BCE(pCTR * pCVR, ctcvr)``, the second term 0 where ``ctcvr`` is unknown."""
    ctr = F.binary_cross_entropy_with_logits(logits[..., 0], y[..., 0], reduction="none")
    log_p = F.logsigmoid(logits[..., 0]) + F.logsigmoid(logits[..., 1])
    t = y[..., 1]
    known = (t >= 0).to(logits.dtype)
    t = t.clamp_min(0)
    ctcvr = -(t * log_p + (1 - t) * log1mexp(log_p))
    return ctr + known * ctcvr
