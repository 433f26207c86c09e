"""write_synthetic_episodes writes an ETL-shaped output that follows the contract."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.trainer.data.conftest import SMALL
from tests.trainer.data.episodes import decode_direct
from trainer.data.contract import EPISODE_COLUMNS, SPLITS, load_manifest
from trainer.data.schema import episode_schema
from trainer.data.synthetic import write_synthetic_episodes


def test_manifest_matches_the_files(small_root):
    m = load_manifest(str(small_root))
    assert m.schema_version == 1 and m.sparse_width == 4 and m.dense_width == 2
    assert [f.offset for f in m.features] == [0, 1, 3]
    lines = ""
    for f in sorted(m.files, key=lambda f: f["path"]):
        path = small_root / f["path"]
        data = path.read_bytes()
        md = pq.ParquetFile(path).metadata
        assert f["path"] == f"split={f['split']}/bucket={f['bucket']:05d}/part-00000.parquet"
        assert (f["rows"], f["row_groups"], f["bytes"]) == (
            md.num_rows,
            md.num_row_groups,
            len(data),
        )
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
        assert pq.read_schema(path).names == list(EPISODE_COLUMNS)
        assert pq.read_schema(path).equals(episode_schema(), check_metadata=False)
        lines += f"{f['path']}\t{f['data_sha256']}\n"
    assert m.content_hash == hashlib.sha256(lines.encode()).hexdigest()
    for split in SPLITS:
        eps = decode_direct(small_root, split)
        c = m.splits[split]
        assert c["episodes"] == len(eps) > 0
        assert c["samples"] == sum(e["n_support"] + e["n_query"] for e in eps)
        assert c["clicks"] == int(sum(e["click"].sum() for e in eps))
        assert c["tasks"] == len({e["task_id"] for e in eps})


def test_episode_invariants(small_root):
    m = load_manifest(str(small_root))
    K, Q, N = m.k_support, m.q_query, m.samples_per_episode
    buckets = np.repeat([f.buckets for f in m.features], [f.slots for f in m.features])
    tasks = {}
    for f in m.files:
        t = pq.read_table(small_root / f["path"]).to_pylist()
        keys = [(r["task_key"], r["episode"]) for r in t]
        assert keys == sorted(keys)  # rows ordered by (task_key, episode)
        for r in t:
            tasks.setdefault(r["task_key"], set()).add(f["split"])
            real = np.r_[np.arange(K) < r["n_support"], np.arange(Q) < r["n_query"]]
            assert m.min_support <= r["n_support"] <= K and m.min_query <= r["n_query"] <= Q
            local = np.array(r["sparse"]).reshape(N, -1)
            assert (local >= 0).all() and (local < buckets).all()
            assert (local[~real] == 0).all()
            assert (np.array(r["dense"]).reshape(N, -1)[~real] == 0).all()
            for col in ("click", "conversion", "event_time_ms"):
                assert (np.array(r[col])[~real] == 0).all()
            assert set(r["click"]) <= {0, 1} and set(r["conversion"]) <= {-1, 0, 1}
            times = np.array(r["event_time_ms"])
            assert times[:K][real[:K]].max() < times[K:][real[K:]].min()  # support older than query
    # cold tasks never appear in train or valid
    assert all(s == {"test_cold"} for s in tasks.values() if "test_cold" in s)


def test_deterministic_and_seed_dependent(tmp_path):
    kw = dict(SMALL, num_tasks=10)
    a = write_synthetic_episodes(tmp_path / "a", **kw)
    b = write_synthetic_episodes(tmp_path / "b", **kw)
    c = write_synthetic_episodes(tmp_path / "c", **dict(kw, seed=kw["seed"] + 1))
    assert a.content_hash == b.content_hash != c.content_hash
    assert a.to_json() == b.to_json()


def test_labels_carry_per_task_signal(tmp_path):
    m = write_synthetic_episodes(
        tmp_path, num_tasks=60, episodes_per_task=6, splits=("train",), seed=0
    )
    eps = decode_direct(tmp_path, "train")
    by_task = {}
    for e in eps:
        by_task.setdefault(e["task_id"], []).append(e["click"][: e["n_support"]].mean())
    rates = np.array([np.mean(v) for v in by_task.values()])
    n = 6 * m.k_support
    p = rates.mean()
    # task click rates spread far more than binomial noise around a common rate would allow
    assert rates.var() > 4 * p * (1 - p) / n
    assert m.splits["valid"]["episodes"] == m.splits["test_cold"]["episodes"] == 0


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="zipf_exponent"):
        write_synthetic_episodes(tmp_path, zipf_exponent=1.0)
    with pytest.raises(ValueError, match="unknown split"):
        write_synthetic_episodes(tmp_path, splits=("train", "test"))
    with pytest.raises(ValueError, match="buckets >= 2"):
        write_synthetic_episodes(tmp_path, features=[("a", 1, 1)])
