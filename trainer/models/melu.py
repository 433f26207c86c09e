"""MeLU-style model (Lee et al. 2019): concatenated field embeddings (+ dense features) through a
stack of "decision layers". In MeLU only the decision layers adapt per user, the embeddings are
learned by the outer loop alone: ``adapt = "head"`` with ``head_layers`` = all of them reproduces it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from trainer.models.common import DeepTower
from trainer.sparse import SparseOut


class MeLUDense(nn.Module):
    """The dense half of MeLU: ``forward(sparse, dense) -> logit``."""

    def __init__(self, num_fields: int, dim: int, dense_width: int, sizes: Sequence[int]) -> None:
        super().__init__()
        self.decision = DeepTower(num_fields, dim, dense_width, sizes)

    def forward(self, sparse: SparseOut, dense: Tensor) -> Tensor:
        return self.decision(sparse, dense)

    def layer_names(self) -> list[list[str]]:
        return self.decision.layer_names("decision")
