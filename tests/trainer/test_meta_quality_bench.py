"""``bench/meta_quality.py --quick``: every method x every baseline row x every metric at both
levels, computed by ``metarec evaluate``'s path, which equals the trainer's own evaluation of the
same episodes; the issue's target is stated with its margins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import meta_quality


def test_quick_run_has_every_row_metric_and_the_target(tmp_path: Path) -> None:
    out = tmp_path / "mq.json"
    argv = ["--quick", "--datasets", "synthetic_k8", "--seeds", "0", "--methods",
            "plain,film,metaemb", "--levels", "episode,task", "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    assert meta_quality.main(argv) == 0
    entry = json.loads(out.read_text())["datasets"]["synthetic_k8"]
    assert entry["tune_split"] == "valid"  # the synthetic generator writes no valid_cold
    seed = entry["per_seed"][0]
    assert set(seed["rows"]) == {"plain", "film"}
    assert "skipped" in seed["runs"]["metaemb"]  # synthetic tasks are no feature
    for method, rows in entry["table"].items():
        grid_rows = ("tuned",) if method != "film" else ()
        want = {f"{r} @ {lv}" for lv in meta_quality.LEVELS
                for r in ("no adaptation", "calibration only", "training setting", *grid_rows)}  # fmt: skip
        assert set(rows) == want, method
        for cell in rows.values():
            assert {m for m in meta_quality.METRICS} <= set(cell)
    assert "grid does not apply" in seed["runs"]["film"]["grid_note"]
    # one evaluation path: the rows equal the trainer's evaluation of the same 48 episodes
    for method in ("plain", "film"):
        trainer = seed["runs"][method]["trainer_eval"]
        assert trainer["episodes"] == 48
        for row, when in (("no adaptation", "before"), ("training setting", "after")):
            got = seed["rows"][method][f"{row} @ episode"]
            for key in ("auc", "gauc", "episode_gauc", "logloss"):
                assert got[key] == pytest.approx(trainer[when][key], abs=1e-6), (method, row, key)
    for level in meta_quality.LEVELS:
        t = entry["target"][level]
        assert set(t["methods"]) == {"film"} and isinstance(t["met"], bool)
        m = t["methods"][t["best_by_auc"]]
        assert m["auc_minus_tuned_ft"] == pytest.approx(m["auc"] - t["tuned_ft_auc"])
        assert t["met"] == any(
            v["auc"] - max(t["tuned_ft_auc"], t["calibration_only_auc"]) >= 0.01
            and v["gauc"] - t["plain_no_adaptation_gauc"] >= 0.005
            for v in t["methods"].values()
        )
