"""``bench/delivery.py --quick``: every stage of both paths runs through the DAG's step functions
and the JSON holds the per-hour breakdown, the speed-up and both AUCs (no timing asserted)."""

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
        h[arm] for h in report["hours"] for arm in ("incremental", "scratch")
    ]
    for r in runs:
        assert set(r["stage_s"]) == set(STAGES) and all(s >= 0 for s in r["stage_s"].values())
        assert (
            r["validations_passed"] and r["rows_read"] > 0 and r["metric"] == "test_cold.after.auc"
        )
        assert r["auc"] is None or 0.0 <= r["auc"] <= 1.0
    assert not report["base"]["warm_start"]
    for h in report["hours"]:
        inc, scratch = h["incremental"], h["scratch"]
        assert inc["warm_start"] and not scratch["warm_start"]  # warm from the champion; cold
        assert (inc["steps"], scratch["steps"]) == (4, 8)
        assert scratch["rows_read"] > inc["rows_read"]  # the retrain reads everything so far
        assert h["speedup"] == pytest.approx(scratch["total_s"] / inc["total_s"], abs=0.01)
    assert report["speedup"] > 0 and set(report["incremental_stage_s"]) == set(STAGES)
