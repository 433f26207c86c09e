"""Optimizers of one training step: Adam on the dense parameters, row-wise Adagrad on the rows.

    opt = build_optimizers(OptimConfig(dense_lr=1e-3, sparse_lr=0.05), model)
    sparse = model.embeddings.lookup(batch)
    loss, _ = outer_loss(model, sparse, batch, meta_cfg)
    loss.backward()
    opt.step()        # clip + Adam + zero_grad; row-wise Adagrad on the rows of the last lookup

Gradient clipping (``grad_clip_norm``) applies to the dense gradients' global norm only: row-wise
Adagrad already normalises each row's step by its own gradient history, and clipping the sparse part
would need a cross-shard norm once the table is sharded. No ``torch.distributed`` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainer.models.build import RecModel


@dataclass
class OptimConfig:
    """Optimizer settings. Validated on construction."""

    dense_lr: float = 1e-3
    """Adam learning rate of the dense parameters."""
    sparse_lr: float = 0.05
    """Row-wise Adagrad learning rate of the embedding rows."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam eps (the row-wise Adagrad eps is the collection's ``adagrad_eps``)."""
    weight_decay: float = 0.0
    """Adam (L2) weight decay of the dense parameters."""
    grad_clip_norm: float = 0.0
    """Clip the dense gradients to this global L2 norm; 0 disables clipping."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if not (self.dense_lr > 0 and self.sparse_lr > 0):
            raise ValueError(
                f"optim.dense_lr and optim.sparse_lr must be > 0, got {self.dense_lr}, {self.sparse_lr}"
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.eps <= 0 or self.weight_decay < 0 or self.grad_clip_norm < 0:
            raise ValueError(
                "optim.eps must be > 0, optim.weight_decay and optim.grad_clip_norm >= 0"
            )


class Optimizers:
    """Dense Adam + the embedding collection's row-wise Adagrad, stepped together."""

    def __init__(self, cfg: OptimConfig, model: RecModel) -> None:
        self.cfg = cfg
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.embeddings = model.embeddings
        fused = bool(self.params) and self.params[0].is_cuda
        self.dense = torch.optim.Adam(
            self.params, lr=cfg.dense_lr, betas=cfg.betas, eps=cfg.eps,
            weight_decay=cfg.weight_decay, fused=fused or None,
        )  # fmt: skip

    def step(self) -> Tensor | None:
        """Apply the gradients of the last ``backward`` (dense: Adam; rows: the collection's
        row-wise Adagrad on its last lookup); returns the pre-clip dense norm if clipping."""
        norm = None
        if self.cfg.grad_clip_norm > 0:
            norm = nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip_norm)
        self.dense.step()
        self.dense.zero_grad(set_to_none=True)
        self.embeddings.apply_gradients(self.cfg.sparse_lr)
        return norm

    def state_dict(self) -> dict[str, Any]:
        """Dense optimizer state (the sparse state lives in ``embeddings.state_dict()``)."""
        return {"dense": self.dense.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])


def build_optimizers(cfg: OptimConfig, model: RecModel) -> Optimizers:
    """Adam over ``model.parameters()`` (the dense half) + row-wise Adagrad on ``model.embeddings``."""
    return Optimizers(cfg, model)
