"""The served model in process, many threads at once (what the server's worker threads do):
concurrent adaptations and adapted scores equal the same requests one at a time."""

from __future__ import annotations

import threading

import numpy as np

from components.serve.host import ModelHost, ScoreRequest
from tests.components.serve.test_server import candidates
from trainer.exported.scoring import SupportSet


def test_concurrent_adapted_requests_equal_sequential_ones(served_registry):
    host = ModelHost(served_registry)
    served = host.start()
    K = served.model.layout.k_support
    requests = []
    for i in range(24):
        sparse, dense = candidates(served.model, 50, seed=i)
        s_sparse, s_dense = candidates(served.model, K, seed=100 + i)
        support = SupportSet(s_sparse, s_dense, (np.arange(K) % 2).astype(np.float32),
                             np.full(K, -1, np.float32))  # fmt: skip
        requests.append(ScoreRequest(sparse, dense, f"t-{i % 6}", str(i), support))
    results: dict[int, np.ndarray] = {}
    errors: list[str] = []

    def client(first: int) -> None:
        for i in range(first, len(requests), 4):
            try:
                results[i] = host.score(requests[i]).logits
            except Exception as e:  # any failure fails the test
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    fresh = ModelHost(served_registry)
    fresh.start()
    for i, req in enumerate(requests):
        np.testing.assert_array_equal(results[i], fresh.score(req).logits)
