"""The KServe model server for real: ``python -m components.serve`` on loopback, OIP v2 requests
over HTTP, answers compared with the exported scorer's scores (:mod:`trainer.exported.scoring`).

- unadapted scores equal ``score_samples`` of the same candidates bit for bit; adapted ones equal
  ``score_tasks`` on the same support set (1e-6), and a cached task version scores the same;
- a promotion during concurrent requests swaps the served version with zero failed requests, each
  client seeing the old version then the new one, never back;
- a tampered export is never served: refused at start (exit 2, the file named), and a tampered
  promoted version is not swapped in (the current one goes on serving);
- a malformed request is a 400 naming the input.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from components.promotion import registry
from components.serve.loopback import LocalServer, request_body
from tests.components.serve.conftest import NAME
from trainer.exported import load_exported, score_samples
from trainer.exported.scoring import SupportSet, score_tasks


def candidates(model, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    layout = model.layout
    buckets = np.asarray([layout.feature_buckets[f] for f in layout.slot_feature.tolist()])
    sparse = (gen.random((n, layout.sparse_width)) * buckets).astype(np.int64)
    return sparse, gen.random((n, layout.dense_width)).astype(np.float32)


@pytest.fixture
def models(served_registry, tmp_path) -> Path:
    """A copy of the registry (v1 champion, v2 a delta on v1) this test may change."""
    copy = tmp_path / "models" / NAME
    shutil.copytree(served_registry, copy)
    return copy


def _wait_for(predicate, what: str, server: LocalServer, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; server log:\n{server.log()}")
        time.sleep(0.1)


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_scores_adaptation_hot_swap_and_tamper(models, tmp_path):
    v1, v2 = load_exported(models / "v1"), load_exported(models / "v2")
    sparse, dense = candidates(v1, 100, seed=0)
    K = v1.layout.k_support
    s_sparse, s_dense = candidates(v1, K, seed=1)
    support = SupportSet(s_sparse, s_dense, (np.arange(K) % 2).astype(np.float32),
                         np.full(K, -1, np.float32))  # fmt: skip
    wire = {"support_sparse": s_sparse, "support_dense": s_dense, "support_click": support.click}

    with LocalServer(models, tmp_path / "server.log") as server, httpx.Client() as client:
        # unadapted: the candidates of one request as one batch, as score_samples scores them
        got = server.infer(sparse, dense, client)
        assert (got["version"], got["adapted"]) == ("v1", False)
        np.testing.assert_array_equal(got["logit"], score_samples(v1, sparse, dense))
        np.testing.assert_allclose(got["score"], 1 / (1 + np.exp(-got["logit"])), rtol=1e-6)

        # adapted on the task's support events, then from the cache (no events sent)
        want, _ = score_tasks(v1, sparse, dense, np.full(100, "c-7"), {"c-7": support})
        first = server.infer(sparse, dense, client, task="c-7", task_version="1", support=wire)
        cached = server.infer(sparse, dense, client, task="c-7", task_version="1")
        assert first["adapted"] and cached["adapted"]
        np.testing.assert_allclose(first["logit"], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(cached["logit"], first["logit"])
        unknown = server.infer(sparse, dense, client, task="c-7", task_version="2")
        assert not unknown["adapted"]  # a version never sent: unadapted, and the answer says so

        # a malformed request: 400 naming the input
        bad = request_body(sparse[:, :-1], dense)
        r = client.post(f"{server.url}/v2/models/{server.name}/infer", json=bad)
        assert r.status_code == 400 and "expected sparse" in r.text, r.text
        r = client.post(f"{server.url}/v2/models/{server.name}/infer",
                        json={"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1],
                                          "data": [1]}]})  # fmt: skip
        assert r.status_code == 400 and "unknown input 'ids'" in r.text, r.text

        # hot swap under concurrent requests, unadapted and adapted (each new model adapts anew):
        # zero failures, each client v1 ... then v2 ...
        stop, failures = threading.Event(), []
        seen: list[list[str]] = [[] for _ in range(3)]

        def hammer(i: int) -> None:
            with httpx.Client() as own:
                n = 0
                while not stop.is_set():
                    n += 1
                    task = {"task": f"c-{n % 2}", "task_version": "1", "support": wire}
                    try:
                        got = server.infer(sparse, dense, own, **(task if n % 2 else {}))
                        seen[i].append(got["version"])
                    except Exception as e:  # any failed request fails the test
                        failures.append(repr(e))

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        _wait_for(lambda: all(len(s) >= 3 for s in seen), "requests on v1", server)
        registry.promote(models.parent, NAME, "v2", reason="test")
        _wait_for(lambda: all(s and s[-1] == "v2" for s in seen), "the swap to v2", server)
        _wait_for(lambda: all(s.count("v2") >= 3 for s in seen), "requests on v2", server)
        stop.set()
        for t in threads:
            t.join(60)
        assert failures == []
        for s in seen:
            assert s == sorted(s) and s[0] == "v1" and s[-1] == "v2", s
        got = server.infer(sparse, dense, client)
        np.testing.assert_array_equal(got["logit"], score_samples(v2, sparse, dense))

        # a tampered promoted version is not swapped in: v1's table changed on disk
        emb = models / "v1" / "tables" / "emb.npy"
        data = bytearray(emb.read_bytes())
        data[-1] ^= 0x01
        emb.write_bytes(bytes(data))
        registry.rollback(models.parent, NAME, reason="test")  # the champion is v1 again
        _wait_for(lambda: "v1: tables/emb.npy does not match its checksum" in server.log(),
                  "the refusal of the tampered v1", server)  # fmt: skip
        assert server.infer(sparse, dense, client)["version"] == "v2"


def test_refuses_to_start_on_a_tampered_export(models, capsys):
    from components.serve.server import main

    emb = models / "v1" / "tables" / "emb.npy"
    emb.write_bytes(emb.read_bytes()[:-1] + b"\x07")
    assert main(["--model_dir", str(models), "--enable_grpc", "false"]) == 2
    err = capsys.readouterr().err
    assert "cannot serve" in err and "tables/emb.npy does not match its checksum" in err


def test_a_registry_without_champion_is_refused_with_what_to_do(models, capsys):
    from components.serve.server import main

    (models / "CHAMPION").unlink()
    assert main(["--model_dir", str(models), "--enable_grpc", "false"]) == 2
    assert "holds versions but no CHAMPION: promote one" in capsys.readouterr().err
