"""Wide & Deep (Cheng et al. 2016): logit = wide (linear over sparse ids and dense features) + deep
MLP over the concatenated field embeddings and dense features."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from trainer.models.common import DeepTower, Linear
from trainer.sparse import SparseOut


class WideDeepDense(nn.Module):
    """The dense half of Wide&Deep: ``forward(sparse, dense) -> logit``."""

    def __init__(self, num_fields: int, dim: int, dense_width: int, sizes: Sequence[int]) -> None:
        super().__init__()
        # Wide part: `sparse.lr` is the per-sample sum of the 1-wide rows; the dense features get
        # their own weights, and this layer holds the global bias.
        self.wide = Linear(dense_width, 1)
        self.deep = DeepTower(num_fields, dim, dense_width, sizes)

    def forward(self, sparse: SparseOut, dense: Tensor) -> Tensor:
        assert sparse.lr is not None, "Wide&Deep needs the 1-wide linear rows"
        return sparse.lr + self.wide(dense).squeeze(-1) + self.deep(sparse, dense)

    def layer_names(self) -> list[list[str]]:
        return self.deep.layer_names("deep")
