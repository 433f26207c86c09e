"""EpisodeBatch masks and the FeatureLayout, on the worked example of trainer/data/batch.py."""

from __future__ import annotations

import torch

from trainer.data.batch import EpisodeBatch, FeatureLayout
from trainer.data.contract import DenseSpec, FeatureSpec, Manifest


def _manifest() -> Manifest:
    return Manifest(
        schema_version=1,
        interval={},
        task_key="t",
        k_support=2,
        q_query=1,
        min_support=1,
        min_query=1,
        hash={},
        features=[
            FeatureSpec("user", "user", "categorical", 10, 1, 0),
            FeatureSpec("tags", "tags", "multi", 5, 2, 1),
        ],
        dense_features=[DenseSpec("price", "price", "log1p", 0)],
        splits={},
        files=[],
        content_hash="",
    )


def test_layout_worked_example():
    layout = FeatureLayout.from_manifest(_manifest())
    assert layout.slot_feature.tolist() == [0, 1, 1]
    assert layout.slot_offsets.tolist() == [0, 10, 10]
    assert layout.table_offsets == (0, 10) and layout.total_rows == 15
    assert layout.padding_rows.tolist() == [0, 10]
    assert (layout.sparse_width, layout.dense_width, layout.num_features) == (3, 1, 2)


def test_batch_worked_example():
    local = torch.tensor([[[4, 1, 0], [7, 2, 3], [4, 3, 0]], [[0, 0, 0]] * 3])
    layout = FeatureLayout.from_manifest(_manifest())
    gids = local + layout.slot_offsets
    ids, inverse = torch.unique(gids, return_inverse=True)
    assert ids.tolist() == [0, 4, 7, 10, 11, 12, 13]  # the docstring's ids plus user padding row 0
    assert inverse[0].tolist() == [[1, 4, 3], [2, 5, 6], [1, 6, 3]]
    b = EpisodeBatch(
        ids=ids,
        inverse=inverse,
        dense=torch.zeros(2, 3, 1),
        click=torch.tensor([[1.0, 0, 1], [0, 0, 0]]),
        conversion=torch.tensor([[0.0, -1, 1], [0, 0, 0]]),
        n_support=torch.tensor([2, 0]),
        n_query=torch.tensor([1, 0]),
        task_ids=torch.tensor([17, 0]),
        episode_mask=torch.tensor([True, False]),
        k_support=2,
    )
    assert torch.equal(b.ids[b.inverse], gids)
    assert b.support_mask.tolist() == [[True, True], [False, False]]
    assert b.query_mask.tolist() == [[True], [False]]
    assert b.sample_mask.tolist() == [[True, True, True], [False] * 3]
    assert (b.num_episodes, b.num_real_episodes, b.num_samples, b.q_query) == (2, 1, 3, 1)
    moved = b.to("cpu")
    assert (
        moved.k_support == 2 and torch.equal(moved.inverse, b.inverse) and moved.task_rows is None
    )
