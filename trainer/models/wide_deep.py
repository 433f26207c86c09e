"""Wide & Deep (Cheng et al. 2016): logit = wide (linear over sparse ids and dense features) + deep
MLP over the concatenated field embeddings and dense features."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from trainer.models.common import DeepTower, Linear


class WideDeepDense(nn.Module):
    """The dense half of Wide&Deep: ``forward(fields, linear, dense) -> logit``."""

    def __init__(self, num_fields: int, dim: int, dense_width: int, sizes: Sequence[int]) -> None:
        super().__init__()
        # Wide part: `linear` is the per-sample sum of the 1-wide rows (the LR DES operator); the
        # dense features get their own weights, and this layer holds the global bias.
        self.wide = Linear(dense_width, 1)
        self.deep = DeepTower(num_fields, dim, dense_width, sizes)

    def forward(self, fields: Tensor, linear: Tensor | None, dense: Tensor) -> Tensor:
        assert linear is not None, "Wide&Deep needs the 1-wide linear rows"
        return linear + self.wide(dense).squeeze(-1) + self.deep(fields, dense)

    def layer_names(self) -> list[list[str]]:
        return self.deep.layer_names("deep")
