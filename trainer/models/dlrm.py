"""DLRM (Naumov et al. 2019): bottom MLP on dense features, pairwise dot interaction between the
field embeddings and the bottom output, top MLP.

Dense half only (the sparse half is the shared :class:`~trainer.models.common.SparseArch`)::

    dense (…, Dn) --DenseArch--> d (…, D)            # omitted when there are no dense features
    [d, e_1 … e_F] --InteractionArch--> [d, <x_i, x_j> for i < j]
                   --OverArch--> logit (…,)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trainer.models.common import MLP
from trainer.sparse import SparseOut


class DotInteraction(nn.Module):
    """InteractionArch: all pairwise dot products ``<x_i, x_j>``, ``i < j``, of ``n`` vectors."""

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        i, j = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("flat_index", i * num_vectors + j, persistent=False)
        self.num_outputs = int(i.numel())

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(..., n, D)`` -> ``(..., n*(n-1)/2)``."""
        gram = torch.matmul(x, x.transpose(-1, -2))
        return gram.flatten(-2)[..., self.flat_index]


class DLRMDense(nn.Module):
    """The dense half of DLRM: ``forward(sparse, dense) -> logit`` (reads the pooled fields)."""

    def __init__(
        self, num_fields: int, dim: int, dense_width: int, bottom: Sequence[int], top: Sequence[int]
    ) -> None:
        super().__init__()
        self.dense_arch = MLP(dense_width, [*bottom, dim], final_relu=True) if dense_width else None
        n = num_fields + (1 if dense_width else 0)
        self.interaction_arch = DotInteraction(n)
        over_in = self.interaction_arch.num_outputs + (dim if dense_width else 0)
        self.over_arch = MLP(over_in, [*top, 1])

    def forward(self, sparse: SparseOut, dense: Tensor) -> Tensor:
        fields = sparse.pooled()
        if self.dense_arch is None:
            return self.over_arch(self.interaction_arch(fields)).squeeze(-1)
        d = self.dense_arch(dense)
        inter = self.interaction_arch(torch.cat([d.unsqueeze(-2), fields], dim=-2))
        return self.over_arch(torch.cat([d, inter], dim=-1)).squeeze(-1)

    def layer_names(self) -> list[list[str]]:
        """Main-path layers, input to output: the OverArch (the head is its last layers)."""
        return self.over_arch.layer_names("over_arch")
