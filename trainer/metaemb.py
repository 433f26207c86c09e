"""Cold-ID embeddings (MetaEmb, Pan et al. 2019): the embedding of an id never seen in training is
generated from its attribute features, by a generator meta-trained on warm ids.

    gen = IdEmbeddingGenerator(id_field=1, attribute_fields=[2, 3], dim=16, hidden=32)
    e0 = gen(fields, mask)                    # (T, D): one embedding per episode's id
    sparse = with_id_embedding(sparse, 1, e0) # the id's field replaced by it

``meta.mode = "metaemb"`` (``trainer.meta``) trains, in the same step, the model as ``plain`` does
on its own rows, and the generator on the warm ids of the batch with the model held fixed (its
parameters and rows detached in this part): the cold phase scores the support samples with the
generated embedding ``e0`` (loss ``L_a``); the warm-up phase takes one SGD step of ``inner_lr`` on
``e0`` with that loss and scores the query samples with ``e1 = e0 - lr * dL_a/de0`` (loss ``L_b``);
the generator's loss is ``alpha * L_a + (1 - alpha) * L_b`` (``meta.metaemb_alpha``). The
generator reads the mean over the episode's samples of the concatenated attribute fields (an id's
attributes are the same on all its samples). Evaluation (``trainer.meta.adapt``/``predict``):
without adaptation the id's embedding is generated from the query samples' attributes (no label
is read), with adaptation from the support samples' and warmed up on their labels for
``inner_steps`` steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.sparse import SparseOut


class IdEmbeddingGenerator(nn.Module):
    """Attribute fields of an id's samples -> the id's embedding (see the module docstring).

    Args:
        id_field: the generated feature's field index (its position in the feature layout).
        attribute_fields: the field indices of its attribute features.
        dim: the embedding width.
        hidden: the generator's hidden width.
    """

    def __init__(self, id_field: int, attribute_fields: list[int], dim: int, hidden: int) -> None:
        super().__init__()
        self.id_field = id_field
        self.attribute_fields = list(attribute_fields)
        self.hidden = nn.Linear(len(self.attribute_fields) * dim, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, fields: Tensor, mask: Tensor) -> Tensor:
        """``fields`` ``(T, N, F, D)``, ``mask`` ``(T, N)`` (float) the samples to read ->
        ``(T, D)``."""
        x = fields[..., self.attribute_fields, :].flatten(-2)
        pooled = (x * mask.unsqueeze(-1)).sum(-2) / mask.sum(-1, keepdim=True).clamp_min(1.0)
        return self.out(torch.relu(self.hidden(pooled)))


def pooled_fields(sparse: SparseOut) -> Tensor:
    """The pooled field embeddings ``(..., F, D)``, which MetaEmb reads and replaces; an error
    when the collection substituted an operator that reads them (DES)."""
    if sparse.fields is None or sparse.h1 is not None or sparse.fm_sum is not None:
        raise ValueError(
            "meta.mode = 'metaemb' replaces the id's pooled field embedding, which this embedding "
            "collection substitutes (parallel.des): set parallel.des = 'off'"
        )
    return sparse.fields


def with_id_embedding(sparse: SparseOut, field: int, emb: Tensor) -> SparseOut:
    """``sparse`` ``(T, N, ...)`` with field ``field`` of every sample of episode ``t`` replaced by
    ``emb[t]`` (``(T, D)``); the first-order term (the id's 1-wide row) is kept."""
    fields = pooled_fields(sparse)
    is_id = torch.arange(fields.shape[-2], device=fields.device) == field
    new = torch.where(is_id[:, None], emb[:, None, None, :], fields)
    return SparseOut(fields=new, lr=sparse.lr)
