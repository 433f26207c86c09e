"""``bench/delivery.py --quick``: every stage of both paths runs through the DAG's step functions;
the retrain from scratch stops at the first chunk whose AUC on the incremental model's episodes
reaches the incremental model's, or at the cap; the JSON holds the per-hour breakdown, the
speed-ups and the AUCs (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from bench.delivery import STAGES, main

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_quick_delivery_bench_runs_every_stage_of_both_paths(tmp_path):
    out = tmp_path / "delivery.json"
    assert main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    assert report["settings"]["hours"] == len(report["hours"]) == 2
    runs = [report["base"]] + [
        h[arm] for h in report["hours"] for arm in ("incremental", "incremental_spawn", "scratch")
    ]
    for r in runs:
        assert set(r["stage_s"]) == set(STAGES) and all(s >= 0 for s in r["stage_s"].values())
        assert (
            r["validations_passed"] and r["rows_read"] > 0 and r["metric"] == "test_cold.after.auc"
        )
        assert r["auc"] is None or 0.0 <= r["auc"] <= 1.0
        assert r["total_s"] == pytest.approx(sum(r["stage_s"].values()), abs=0.01)
        assert r["gate_query_samples"] > 0
    assert not report["base"]["warm_start"] and report["base"]["steps"] == 8
    for h in report["hours"]:
        inc, spawn, scratch = h["incremental"], h["incremental_spawn"], h["scratch"]
        assert inc["warm_start"] and not scratch["warm_start"]  # warm from the champion; cold
        assert inc["steps"] == 4 and inc["promoted"] in (True, False)
        assert scratch["rows_read"] > inc["rows_read"]  # the retrain reads everything so far
        # the spawned delivery differs from the in-process one in its train stage only
        assert {k: v for k, v in spawn["stage_s"].items() if k != "train"} == {
            k: v for k, v in inc["stage_s"].items() if k != "train"
        }
        # the search: chunks of 4 steps, stopped at the first whose gate AUC reaches the
        # incremental model's on the same episodes, or at the cap (12)
        chunks, target = scratch["chunks"], scratch["incremental_auc"]
        assert [c["steps"] for c in chunks] == list(range(4, 4 * len(chunks) + 1, 4))
        assert scratch["steps"] == chunks[-1]["steps"] <= 12 and scratch["auc"] == chunks[-1]["auc"]
        for stage in ("train", "export", "evaluate"):
            assert sum(c[f"{stage}_s"] for c in chunks) <= scratch["stage_s"][stage] + 0.01
        overhead = sum(c["export_s"] + c["evaluate_s"] for c in chunks[:-1])
        assert scratch["search_overhead_s"] == pytest.approx(overhead, abs=0.01)
        values = [c["auc"] for c in chunks]
        if target is not None and None not in values:
            assert all(v < target for v in values[:-1])
            assert h["scratch_reached_incremental_auc"] == (values[-1] >= target)
            assert h["scratch_reached_incremental_auc"] or scratch["steps"] == 12
        assert h["speedup"] == pytest.approx(scratch["total_s"] / inc["total_s"], abs=0.01)
    hit = [h["hour"] for h in report["hours"] if h["scratch_reached_incremental_auc"] is False]
    assert report["scratch_cap_hit_hours"] == hit
    assert report["speedup"] > 0 and set(report["incremental_stage_s"]) == set(STAGES)
