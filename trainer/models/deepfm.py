"""DeepFM (Guo et al. 2017): logit = LR term + FM second-order term + deep MLP, sharing embeddings.

Dense half::

    sparse.lr (…,)  [per-sample sum of 1-wide rows]  + w·dense + b                      (LR)
  + sparse.fm_term()  [sum_{i<j} <e_i, e_j>, no parameters]                             (FM)
  + DeepTower(concat(fields), dense)                                                  (deep)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from trainer.models.common import DeepTower, Linear
from trainer.sparse import SparseOut


class DeepFMDense(nn.Module):
    """The dense half of DeepFM: ``forward(sparse, dense) -> logit``."""

    def __init__(self, num_fields: int, dim: int, dense_width: int, sizes: Sequence[int]) -> None:
        super().__init__()
        # First-order part of the dense features plus the global bias (the sparse part is `lr`).
        self.linear_arch = Linear(dense_width, 1)
        self.deep = DeepTower(num_fields, dim, dense_width, sizes)

    def forward(self, sparse: SparseOut, dense: Tensor) -> Tensor:
        assert sparse.lr is not None, "DeepFM needs the 1-wide linear rows"
        first_order = sparse.lr + self.linear_arch(dense).squeeze(-1)
        return first_order + sparse.fm_term() + self.deep(sparse, dense)

    def layer_names(self) -> list[list[str]]:
        return self.deep.layer_names("deep")
