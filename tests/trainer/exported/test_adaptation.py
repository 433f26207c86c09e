"""A task adapted once (what the server caches) scores any candidates as the scorer does when it
adapts on the same support set for those candidates (``score_tasks``): dense adaptation (MAML)
and dense + task-local embedding rows (FOMAML, DeepFM with its linear table)."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.exported import SupportSet, export_checkpoint, load_exported, score_samples
from trainer.exported.adaptation import adapt_task
from trainer.exported.model import ExportedModel
from trainer.exported.scoring import score_tasks


def samples(model: ExportedModel, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    layout = model.layout
    buckets = np.asarray([layout.feature_buckets[f] for f in layout.slot_feature.tolist()])
    sparse = (gen.random((n, layout.sparse_width)) * buckets).astype(np.int64)
    return sparse, gen.random((n, layout.dense_width)).astype(np.float32)


@pytest.mark.parametrize("fixture", ["single_run", "deepfm_run"])
def test_a_cached_adaptation_scores_as_the_scorer(fixture, request, tmp_path):
    model = load_exported(export_checkpoint(request.getfixturevalue(fixture), tmp_path).path)
    K = model.layout.k_support
    s_sparse, s_dense = samples(model, K, seed=1)
    support = SupportSet(s_sparse, s_dense, (np.arange(K) % 2).astype(np.float32),
                         np.full(K, -1, np.float32))  # fmt: skip
    adapted = adapt_task(model, support, "c-7")
    if model.adaptation.adapt == "dense+emb":
        assert len(adapted.row_ids) > 0 and set(adapted.row_offsets) == {"emb", "linear"}
    for seed, n in ((2, 100), (3, 7)):
        sparse, dense = samples(model, n, seed)
        sparse[:K] = s_sparse  # candidates sharing the support's rows (their offsets count)
        want, flags = score_tasks(model, sparse, dense, np.full(n, "c-7"), {"c-7": support})
        assert flags.all()
        got = adapted.logits(sparse, dense)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert not np.allclose(got, score_samples(model, sparse, dense), atol=1e-6)
    with pytest.raises(ValueError, match=rf"0 support samples, expected 1 to K={K}"):
        adapt_task(model, SupportSet(s_sparse[:0], s_dense[:0], np.zeros(0), np.zeros(0)), "x")
