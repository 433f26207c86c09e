"""Small in-memory feature layouts and episode batches for the model / meta-learning tests.

Batches follow ``trainer.data.batch`` exactly (VSI ids + inverse, task-local rows, padding as the
reader writes it: id 0, dense 0.0, labels 0 at padded positions; padding episodes all masked).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from trainer.data.batch import EpisodeBatch, FeatureLayout
from trainer.data.vsi import task_local_rows


def make_layout(
    features: Sequence[tuple[str, int, int]], dense_width: int, k_support: int = 4, q_query: int = 3
) -> FeatureLayout:
    """A layout for ``features`` = [(name, buckets, slots), ...] (as ``FeatureLayout.from_manifest``)."""
    slot_feature = [i for i, (_, _, slots) in enumerate(features) for _ in range(slots)]
    offsets = np.cumsum([0] + [b for _, b, _ in features])[:-1].tolist()
    return FeatureLayout(
        feature_names=tuple(n for n, _, _ in features),
        feature_slots=tuple(s for _, _, s in features),
        feature_buckets=tuple(b for _, b, _ in features),
        table_offsets=tuple(offsets),
        total_rows=sum(b for _, b, _ in features),
        slot_feature=torch.tensor(slot_feature, dtype=torch.int64),
        slot_offsets=torch.tensor([offsets[i] for i in slot_feature], dtype=torch.int64),
        dense_names=tuple(f"d{i}" for i in range(dense_width)),
        k_support=k_support,
        q_query=q_query,
    )


def batch_from_local_ids(
    layout: FeatureLayout,
    local: torch.Tensor,
    dense: torch.Tensor,
    click: torch.Tensor,
    conversion: torch.Tensor,
    n_support: torch.Tensor,
    n_query: torch.Tensor,
    episode_mask: torch.Tensor,
    task_ids: torch.Tensor | None = None,
    task_local: bool = True,
) -> EpisodeBatch:
    """VSI over ``local`` ``(T, N, S)`` local ids -> an ``EpisodeBatch`` (padding zeroed here)."""
    T, N, _ = local.shape
    K = layout.k_support
    pos = torch.arange(N)
    real = torch.where(pos < K, pos[None] < n_support[:, None], (pos[None] - K) < n_query[:, None])
    real &= episode_mask[:, None]
    local = local * real[..., None]
    dense, click = dense * real[..., None], click * real
    conversion = conversion * real
    ids, inverse = torch.unique(local + layout.slot_offsets, return_inverse=True)
    batch = EpisodeBatch(
        ids=ids,
        inverse=inverse,
        dense=dense,
        click=click,
        conversion=conversion,
        n_support=n_support * episode_mask,
        n_query=n_query * episode_mask,
        task_ids=torch.arange(T) if task_ids is None else task_ids,
        episode_mask=episode_mask,
        k_support=K,
    )
    if task_local:
        tr, trm, tinv = task_local_rows(inverse.numpy(), int(ids.numel()))
        batch.task_rows = torch.from_numpy(tr)
        batch.task_rows_mask = torch.from_numpy(trm)
        batch.task_inverse = torch.from_numpy(tinv)
    return batch


def random_batch(
    layout: FeatureLayout,
    num_episodes: int,
    *,
    seed: int = 0,
    padded: bool = True,
    null_fraction: float = 0.2,
) -> EpisodeBatch:
    """Random episodes over ``layout``; with ``padded``: short episodes and a padding episode.

    Local ids are drawn in ``[1, buckets)`` and then set to 0 (null) with ``null_fraction``; the
    conversion label is unknown (-1) for about a quarter of the samples.
    """
    g = torch.Generator().manual_seed(seed)
    T, K, Q = num_episodes, layout.k_support, layout.q_query
    N, S = K + Q, layout.sparse_width
    buckets = torch.tensor(layout.feature_buckets)[layout.slot_feature]
    local = (torch.rand(T, N, S, generator=g) * (buckets - 1)).long() + 1
    local[torch.rand(T, N, S, generator=g) < null_fraction] = 0
    dense = torch.randn(T, N, layout.dense_width, generator=g)
    click = (torch.rand(T, N, generator=g) < 0.4).float()
    conversion = (torch.rand(T, N, generator=g) < 0.5).float()
    conversion[torch.rand(T, N, generator=g) < 0.25] = -1.0
    n_support = torch.full((T,), K)
    n_query = torch.full((T,), Q)
    mask = torch.ones(T, dtype=torch.bool)
    if padded:
        n_support[0] = max(1, K - 2)
        n_query[min(1, T - 1)] = max(1, Q - 1)
        mask[-1] = False
    return batch_from_local_ids(layout, local, dense, click, conversion, n_support, n_query, mask)
