"""The per-episode profile (pyarrow + numpy) against a plain-Python reference, episode by episode.

The reference below reads each episode as the contract describes it (sample ``j`` at
``[j * width, (j + 1) * width)``, real when ``j < n_support`` or ``K <= j < K + n_query``) with
ordinary loops; the dataset carries every defect of the episode suite's tests plus null lists,
a list longer than ``(K + Q) * width`` and a null ``n_support``, so the irregular paths are
compared too. No Spark.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from components.validation import profile as P
from components.validation import sources as S
from trainer.data.hashing import signed_hash

from .builders import K, Q, write_episodes
from .test_episodes import DEFECTS, MORE_DEFECTS


def _irregular(eps: list[dict[str, Any]]) -> None:
    eps[7]["click"] = None
    eps[8]["event_time_ms"] = eps[8]["event_time_ms"] + [5]
    eps[9]["n_support"] = None
    eps[11]["dense"][3] = None
    eps[12]["sparse"] = None


def _all_defects(eps: list[dict[str, Any]]) -> None:
    for corrupt, _ in (*DEFECTS.values(), *MORE_DEFECTS.values()):
        corrupt(eps)
    _irregular(eps)


def _reference(e: dict[str, Any], manifest) -> dict[str, Any]:
    widths = P.list_widths(manifest)
    ns = min(max(e["n_support"] or 0, 0), K)
    nq = min(max(e["n_query"] or 0, 0), Q)

    def real(j: int) -> bool:
        return j < ns or K <= j < K + nq

    def at(col: str, where) -> list:
        """Non-null values at the sample positions ``p < (K+Q)*width`` where ``where(j, slot)``."""
        w, values = widths[col], e[col] or []
        n = min(len(values), (K + Q) * w)
        return [values[p] for p in range(n) if values[p] is not None and where(p // w, p % w)]

    def ext(values: list, op):
        return op(values) if values else None

    lists = {c: e[c] for c in P.LIST_COLUMNS}
    row: dict[str, Any] = {
        "split": e["split"],
        "task_key": e["task_key"],
        "task_id": e["task_id"],
        "episode": e["episode"],
        "n_support": e["n_support"],
        "n_query": e["n_query"],
        "n_samples": None
        if e["n_support"] is None or e["n_query"] is None
        else e["n_support"] + e["n_query"],
    }
    for c in P.LIST_COLUMNS:
        row[f"len_{c}"] = None if lists[c] is None else len(lists[c])
    any_null = any(v is None for v in lists.values())
    row["null_elements"] = None if any_null else sum(v.count(None) for v in lists.values())
    for f in manifest.features:
        ids = at("sparse", lambda j, s, f=f: f.offset <= s < f.offset + f.slots)
        row[f"min_id__{f.name}"], row[f"max_id__{f.name}"] = ext(ids, min), ext(ids, max)
    row["padding_nonzero"] = (
        None
        if any_null
        else sum(
            sum(1 for v in at(c, lambda j, s: not real(j)) if v != 0)
            for c in P.LIST_COLUMNS
            if widths[c] > 0
        )
    )
    for col, valid, name in (
        ("click", (0, 1), "click_invalid"),
        ("conversion", (-1, 0, 1), "conversion_invalid"),
    ):
        labels = at(col, lambda j, s: real(j))
        row[name] = None if e[col] is None else sum(1 for v in labels if v not in valid)
    for col, name in (("click", "n_clicks"), ("conversion", "n_conversions")):
        labels = at(col, lambda j, s: real(j))
        row[name] = None if e[col] is None else sum(1 for v in labels if v == 1)
    dense = [v for v in e["dense"] or [] if v is not None]
    row["dense_nonfinite"] = int(not all(map(math.isfinite, dense))) if dense else None
    times = "event_time_ms"
    row["support_max_time_ms"] = ext(at(times, lambda j, s: j < ns), max)
    row["query_min_time_ms"] = ext(at(times, lambda j, s: K <= j < K + nq), min)
    row["min_time_ms"] = ext(at(times, lambda j, s: real(j)), min)
    row["max_time_ms"] = ext(at(times, lambda j, s: real(j)), max)
    key = e["task_key"]
    row["expected_task_id"] = None if key is None else signed_hash("task", key)
    n = row["n_samples"]
    row["click_rate"] = row["n_clicks"] / n if n and row["n_clicks"] is not None else None
    return row


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


@pytest.mark.parametrize("batch", [S.BATCH_EPISODES, 3])
def test_profile_equals_the_python_reference(tmp_path, monkeypatch, batch):
    monkeypatch.setattr(S, "BATCH_EPISODES", batch)  # 3: files read in several batches
    captured: list[dict[str, Any]] = []

    def corrupt(eps):
        _all_defects(eps)
        captured.extend(eps)

    root = write_episodes(tmp_path / "interval=a", defect=corrupt)
    manifest, _ = S.load_episode_manifest(str(root))
    files = S.list_episode_files(str(root))

    profile = P.episode_profile(S.read_episode_files(files), manifest)

    expected = [_reference(e, manifest) for e in captured]
    cold = {"test_cold", "valid_cold"}
    for r in expected:
        splits = {x["split"] in cold for x in expected if x["task_key"] == r["task_key"]}
        r["cold_and_warm"] = len(splits) == 2
    ours = profile.to_pylist()
    assert profile.num_rows == len(captured) == 31
    assert [set(r) for r in ours[:1]] == [set(expected[0])]
    assert _sorted(ours) == _sorted(expected)
    # The irregular rows were profiled (not dropped), and they differ from clean ones.
    assert any(r["len_click"] is None for r in ours) and any(
        r["len_event_time_ms"] == 7 for r in ours
    )
    assert any(r["n_support"] is None for r in ours) and any(r["cold_and_warm"] for r in ours)


def test_split_summary_counts_real_samples_and_distinct_tasks(tmp_path):
    root = write_episodes(tmp_path / "interval=a")
    manifest, _ = S.load_episode_manifest(str(root))
    profile = P.episode_profile(S.read_episode_files(S.list_episode_files(str(root))), manifest)

    summary = P.split_summary(profile, ["train", "valid", "test_cold", "valid_cold"])

    for split, counts in manifest.splits.items():  # the builder counts them in plain Python
        for metric, value in counts.items():
            assert summary[f"{split}__{metric}"] == value, (split, metric)
    assert summary["valid_cold__episodes"] == 0 and summary["valid_cold__tasks"] == 0
    totals = {m: sum(c[m] for c in manifest.splits.values()) for m in ("clicks", "samples")}
    assert summary["click_rate"] == totals["clicks"] / totals["samples"]
