"""DeepFM (Guo et al. 2017): logit = LR term + FM second-order term + deep MLP, sharing embeddings.

Dense half::

    linear (…,)  [per-sample sum of 1-wide rows, from the sparse half]  + w·dense + b   (LR)
  + fm_from_sums(*fm_sums(fields))                                                    (FM, no params)
  + DeepTower(concat(fields), dense)                                                  (deep)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from trainer.models.common import (
    DeepTower,
    Linear,
    fm_from_partials,
    fm_from_sums,
    fm_sums,
    pooled_fields,
)


class FMInteraction(nn.Module):
    """InteractionArch: the FM second-order term ``sum_{i<j} <e_i, e_j>`` via the DES operator
    (from the owners' partial sums when DES substitutes it)."""

    def forward(self, fields: Tensor | dict[str, Tensor]) -> Tensor:
        if isinstance(fields, dict) and "fm_sum" in fields:
            return fm_from_partials(fields["fm_sum"], fields["fm_sq"])
        return fm_from_sums(*fm_sums(pooled_fields(fields)))


class DeepFMDense(nn.Module):
    """The dense half of DeepFM: ``forward(fields, linear, dense) -> logit``."""

    def __init__(self, num_fields: int, dim: int, dense_width: int, sizes: Sequence[int]) -> None:
        super().__init__()
        # First-order part of the dense features plus the global bias (the sparse part is `linear`).
        self.linear_arch = Linear(dense_width, 1)
        self.interaction_arch = FMInteraction()
        self.deep = DeepTower(num_fields, dim, dense_width, sizes)

    def forward(
        self, fields: Tensor | dict[str, Tensor], linear: Tensor | None, dense: Tensor
    ) -> Tensor:
        assert linear is not None, "DeepFM needs the 1-wide linear rows"
        first_order = linear + self.linear_arch(dense).squeeze(-1)
        return first_order + self.interaction_arch(fields) + self.deep(fields, dense)

    def layer_names(self) -> list[list[str]]:
        return self.deep.layer_names("deep")
