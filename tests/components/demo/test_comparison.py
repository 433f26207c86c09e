"""The demo's comparison: both exports beside the baselines on ranking and calibration, through
``metarec evaluate``'s path (its adapted row equals each run's own evaluation), and which model
to ship by the gate's rule with its guards, in the summary, the printed table and the report."""

from __future__ import annotations

import pytest

from components.demo.evaluation import compare_models, recommend
from components.promotion.gate import GatePolicy
from tests.components.test_demo import recorded  # noqa: F401  (the recorded demo, a fixture)
from tests.trainer.run_helpers import tiny_config, write_episodes
from trainer.exported import export_checkpoint
from trainer.trainer import Trainer

KEYS = ("auc", "gauc", "episode_gauc", "logloss")


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[dict, dict]:
    """(comparison, each run's test_cold evaluation) of a maml and a plain tiny run."""
    tmp = tmp_path_factory.mktemp("demo-compare")
    episodes = write_episodes(tmp / "interval")
    versions, evals = {}, {}
    for mode, meta_mode in (("meta", "maml"), ("plain", "plain")):
        cfg = tiny_config(episodes, tmp / mode, **{"meta.mode": meta_mode, "eval.max_episodes": 0,
                                                   "eval.splits": ["test_cold"]})  # fmt: skip
        trainer = Trainer(cfg).build()
        try:
            evals[mode] = trainer.fit()["test_cold"]
        finally:
            trainer.close()
        versions[mode] = export_checkpoint(tmp / mode, tmp / "models" / mode, graph=False).path
    comparison = compare_models(versions, episodes, tmp / "comparison.json")
    assert (tmp / "comparison.json").is_file()
    return comparison, evals


def _row(comparison: dict, model: str, row: str) -> dict:
    return next(r for r in comparison["rows"] if (r["model"], r["row"]) == (model, row))


def test_rows_are_the_runs_own_evaluation_beside_the_baselines(compared) -> None:
    comparison, evals = compared
    for model in ("meta", "plain"):
        rows = [r["row"] for r in comparison["rows"] if r["model"] == model]
        assert rows == ["no adaptation", "calibration only", "training setting"]  # no valid_cold
        assert "no valid_cold split" in comparison["tuning"][model]["skipped"]
        for row, when in (("no adaptation", "before"), ("training setting", "after")):
            got = _row(comparison, model, row)
            for k in KEYS:
                assert got[k] == pytest.approx(evals[model][when][k], abs=1e-6), (model, row, k)
        assert 0 < _row(comparison, model, "calibration only")["calibration"] < 10


def test_the_recommendation_is_the_gate_rule_meta_against_plain(compared) -> None:
    comparison, _ = compared
    for policy in (GatePolicy(), GatePolicy(tolerance=1.0), GatePolicy(gauc_tolerance=0.0)):
        rec = recommend(comparison, policy)
        meta, plain = (_row(comparison, m, "training setting") for m in ("meta", "plain"))
        better = meta["auc"] - plain["auc"] > policy.tolerance
        gauc_ok = meta["gauc"] - plain["gauc"] >= -policy.gauc_tolerance
        cal_ok = abs(plain["calibration"] - 1) - abs(meta["calibration"] - 1) >= (
            -policy.calibration_tolerance
        )
        assert rec["ship"] == ("meta" if better and gauc_ok and cal_ok else "plain"), rec
        assert {g["name"] for g in rec["guards"]} == {"gauc", "calibration"}
        shipped = meta if rec["ship"] == "meta" else plain
        calib = max(_row(comparison, m, "calibration only")["auc"] for m in ("meta", "plain"))
        assert rec["auc_over_calibration_only"] == pytest.approx(shipped["auc"] - calib)


def test_summary_printout_and_report_show_the_comparison(compared, recorded) -> None:  # noqa: F811
    from components.demo.summary import build_summary, format_summary
    from components.report import render_report

    config, results, expected = recorded
    comparison, _ = compared
    s = build_summary(config, {**results, "comparison": comparison}, expected["seconds"],
                      expected["reused"])  # fmt: skip
    assert {k: v for k, v in s.items() if k not in ("comparison", "recommendation")} == expected
    rec = s["recommendation"]
    assert rec == recommend(comparison, GatePolicy(**config.delivery_config("meta")["gate"]))
    text = format_summary(s)
    assert f"ship       {rec['ship']}: the gate's rule" in text
    for r in comparison["rows"]:
        line = next(x for x in text.splitlines() if x.startswith(f"  {r['model']:<7}{r['row']}"))
        assert f"{r['auc']:.4f}" in line and f"{r['ece']:.4f}" in line
    html = render_report(s)
    assert "Which model to ship" in html and f"<b>Ship {rec['ship']}.</b>" in html
    assert f"{_row(comparison, 'plain', 'calibration only')['gauc']:.4f}" in html
