"""Meta-SGD (Li et al. 2017): inner-loop learning rates that the outer loss learns.

``meta.learn_inner_lr = "layer"`` gives every adapted layer one step size (weight and bias
share it) and every adapted embedding table one; ``"parameter"`` gives every adapted parameter
entry its own (a weight ``(in, out)`` gets an ``(in, out)`` tensor of step sizes) and every adapted
table one per embedding dimension (rows are ids, unbounded: a step size per row would not transfer
to unseen ids). All start at ``meta.inner_lr`` and are trained by Adam with the dense layers; they
live in the model (``RecModel.inner_lrs``), so checkpoints, the dense all-reduce and resuming carry
them like any dense parameter. The step is ``theta' = theta - lr * g`` elementwise: ``lr`` may turn
negative, as in the paper.

The inner loop (``trainer.meta``) asks :meth:`InnerLearningRates.step_sizes` for a flat map
``parameter name -> step size`` (and ``"emb"``/``"linear"`` for the tables).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

GRANULARITIES = ("layer", "parameter")


def _key(name: str) -> str:
    """A parameter name as a ``ParameterDict`` key (which may not contain dots)."""
    return name.replace(".", "/")


class InnerLearningRates(nn.Module):
    """The learned step sizes of the inner loop (see the module docstring).

    Args:
        layers: the adapted layers, name -> module with ``weight`` ``(in, out)`` and optional
            ``bias`` (``RecModel.adapted_layers``).
        tables: the adapted embedding tables, ``"emb"``/``"linear"`` -> row width (``dense+emb``).
        granularity: ``"layer"`` or ``"parameter"``.
        init: the initial step size (``meta.inner_lr``).
    """

    def __init__(
        self,
        layers: Mapping[str, nn.Module],
        tables: Mapping[str, int],
        granularity: Literal["layer", "parameter"],
        init: float,
    ) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity {granularity!r} is not one of {GRANULARITIES}")
        self.granularity = granularity
        self.lrs = nn.ParameterDict()
        per_param = granularity == "parameter"
        for name, module in layers.items():
            if per_param:
                for pname, p in module.named_parameters(recurse=False):
                    self.lrs[_key(f"{name}.{pname}")] = nn.Parameter(torch.full_like(p, init))
            else:
                self.lrs[_key(name)] = nn.Parameter(torch.tensor(float(init)))
        for table, width in tables.items():
            shape = (width,) if per_param else ()
            self.lrs[_key(table)] = nn.Parameter(torch.full(shape, float(init)))
        self.layer_names = list(layers)
        self.param_names = {
            name: [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
            for name, module in layers.items()
        }
        self.tables = list(tables)

    def step_sizes(self) -> dict[str, Tensor]:
        """``parameter name -> step size`` for every adapted parameter (a 0-d tensor shared by a
        layer's weight and bias, or one of the parameter's shape), plus ``"emb"``/``"linear"``."""
        out: dict[str, Tensor] = {}
        for layer in self.layer_names:
            for name in self.param_names[layer]:
                key = name if self.granularity == "parameter" else layer
                out[name] = self.lrs[_key(key)]
        for table in self.tables:
            out[table] = self.lrs[_key(table)]
        return out

    def covers(self, layers: list[str], tables: list[str]) -> bool:
        """Whether these step sizes are those of exactly ``layers`` and ``tables``."""
        return sorted(self.layer_names) == sorted(layers) and sorted(self.tables) == sorted(tables)
