"""The model server on an export with dynamic embedding tables (``parallel.dynamic``): it scores
with the export's id maps as the exported scorer does (bit for bit unadapted, 1e-6 adapted), and
hot-swaps to a delta export whose maps changed (ids admitted and evicted). In process (the served
model, :class:`~components.serve.host.ModelHost`), and over HTTP on loopback (``slow``: the
protocol layer does not depend on the tables, tests/components/serve/test_server.py)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from components.promotion import registry
from components.serve.host import ModelHost, ScoreRequest
from components.serve.loopback import LocalServer
from tests.components.serve.test_server import candidates
from tests.trainer.exported.runs import DYNAMIC, train
from tests.trainer.run_helpers import write_episodes
from trainer.exported import export_checkpoint, load_exported, score_samples
from trainer.exported.scoring import SupportSet, score_tasks

NAME = "click-dynamic"


@pytest.fixture(scope="module")
def dynamic_registry(tmp_path_factory) -> Path:
    """``<root>/click-dynamic``: v1 (step 2, full, champion) and v2 (step 4, a delta on v1)."""
    base = tmp_path_factory.mktemp("serve-dynamic")
    # no evaluation at the end of the run: the scores are compared with the exported scorer's
    run = train(write_episodes(base / "episodes"), base / "run", **DYNAMIC, **{"eval.splits": []})
    root = base / "models"
    for step in ("step-00000002", "step-00000004"):
        export_checkpoint(run / "checkpoints" / step, root, name=NAME, delta=True)
    registry.promote(root, NAME, "v1", reason="test")
    return root / NAME


def _every_id(model) -> tuple[np.ndarray, np.ndarray]:
    """Random candidates holding every local id of ``user`` and ``ad`` (the dynamic features):
    admitted ids, ids never admitted (fallback rows), ids admitted in v1 and evicted by v2."""
    sparse, dense = candidates(model, 101, seed=0)
    sparse[:, 0] = np.arange(101)
    sparse[:, 1] = np.arange(101) % 53
    return sparse, dense


def test_the_served_model_scores_a_dynamic_export_and_swaps_to_its_delta(dynamic_registry):
    v1, v2 = load_exported(dynamic_registry / "v1"), load_exported(dynamic_registry / "v2")
    assert v2.descriptor["delta"]["base"] == "v1" and v2.embeddings.id_maps is not None
    sparse, dense = _every_id(v1)
    K = v1.layout.k_support
    s_sparse, s_dense = candidates(v1, K, seed=1)
    support = SupportSet(s_sparse, s_dense, (np.arange(K) % 2).astype(np.float32),
                         np.full(K, -1, np.float32))  # fmt: skip
    host = ModelHost(dynamic_registry)
    assert host.start().version == "v1"
    for want_model in (v1, v2):
        got = host.score(ScoreRequest(sparse, dense))
        assert got.version == want_model.version
        np.testing.assert_array_equal(got.logits, score_samples(want_model, sparse, dense))
        adapted = host.score(ScoreRequest(sparse, dense, "c-7", "1", support))
        want, _ = score_tasks(want_model, sparse, dense, np.full(101, "c-7"), {"c-7": support})
        np.testing.assert_allclose(adapted.logits, want, rtol=1e-6, atol=1e-6)
        registry.promote(dynamic_registry.parent, NAME, "v2", reason="test")
        assert host.poll() == (want_model is v1)
    registry.promote(dynamic_registry.parent, NAME, "v1", reason="test")  # as the fixture left it


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_serves_a_dynamic_export_over_http_and_swaps_to_its_delta(dynamic_registry, tmp_path):
    v1, v2 = load_exported(dynamic_registry / "v1"), load_exported(dynamic_registry / "v2")
    sparse, dense = _every_id(v1)
    want1, want2 = score_samples(v1, sparse, dense), score_samples(v2, sparse, dense)
    assert not np.array_equal(want1, want2)
    with LocalServer(dynamic_registry, tmp_path / "server.log") as server, httpx.Client() as client:
        got = server.infer(sparse, dense, client)
        assert got["version"] == "v1"
        np.testing.assert_array_equal(got["logit"], want1)
        registry.promote(dynamic_registry.parent, NAME, "v2", reason="test")
        deadline = time.monotonic() + 120
        while (got := server.infer(sparse, dense, client))["version"] != "v2":
            assert time.monotonic() < deadline, f"no swap to v2; server log:\n{server.log()}"
            time.sleep(0.1)
        np.testing.assert_array_equal(got["logit"], want2)
