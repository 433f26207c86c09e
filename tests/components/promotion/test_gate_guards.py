"""The gate's guards: a challenger better on the primary metric is refused when it regresses
ranking (GAUC) or calibration beyond the tolerances, with the reason recorded."""

from __future__ import annotations

import json
import math

import pytest

from components.promotion.gate import Candidate, GatePolicy, Verdict, decide
from components.steps.config import DeliveryConfig, GateSettings

POLICY = GatePolicy("test_cold.after.auc", tolerance=0.001)


def cand(version: str, auc: float, gauc: float | None, calibration: float | None) -> Candidate:
    after = {"auc": auc, "gauc": gauc, "calibration": calibration}
    return Candidate(version, {"splits": {"test_cold": {"after": after}}}, "h1")


def test_better_auc_but_worse_gauc_is_refused_with_the_reason() -> None:
    d = decide(cand("v2", 0.72, 0.600, 1.0), cand("v1", 0.70, 0.610, 1.0), POLICY)
    assert (d.verdict, d.promote) == (Verdict.REGRESSED, False)
    assert "test_cold.after.gauc fell from 0.610000 to 0.600000" in d.reason
    gauc = {g["name"]: g for g in d.guards}["gauc"]
    assert gauc["passed"] is False and gauc["delta"] == pytest.approx(-0.01)
    assert json.loads(json.dumps(d.to_dict()))["verdict"] == "regressed"


def test_gauc_drop_within_tolerance_passes() -> None:
    d = decide(cand("v2", 0.72, 0.6085, 1.0), cand("v1", 0.70, 0.610, 1.0), POLICY)
    assert (d.verdict, d.promote) == (Verdict.BETTER, True)
    assert all(g["passed"] for g in d.guards)


def test_calibration_error_growing_beyond_tolerance_is_refused() -> None:
    # champion over-predicts by 2 %, challenger under-predicts by 10 %: the error grew by 0.08
    d = decide(cand("v2", 0.72, 0.62, 0.90), cand("v1", 0.70, 0.61, 1.02), POLICY)
    assert (d.verdict, d.promote) == (Verdict.REGRESSED, False)
    assert "calibration error" in d.reason and "0.0200 to 0.1000" in d.reason
    # an error on the other side of 1 that is not larger passes
    d = decide(cand("v2", 0.72, 0.62, 0.98), cand("v1", 0.70, 0.61, 1.02), POLICY)
    assert d.promote


def test_guards_are_configurable_and_can_be_turned_off() -> None:
    loose = GatePolicy("test_cold.after.auc", gauc_tolerance=0.05, calibration_tolerance=math.inf)
    d = decide(cand("v2", 0.72, 0.60, 0.5), cand("v1", 0.70, 0.61, 1.0), loose)
    assert (d.verdict, d.promote) == (Verdict.BETTER, True)
    with pytest.raises(ValueError, match="gauc_tolerance"):
        GatePolicy(gauc_tolerance=-0.1)
    with pytest.raises(ValueError, match="calibration_tolerance"):
        GatePolicy(calibration_tolerance=math.nan)


def test_worse_stays_worse_and_unchecked_guards_do_not_block() -> None:
    d = decide(cand("v2", 0.69, 0.50, 2.0), cand("v1", 0.70, 0.61, 1.0), POLICY)
    assert d.verdict == Verdict.WORSE  # the primary verdict; the guards are recorded anyway
    assert [g["passed"] for g in d.guards] == [False, False]
    d = decide(cand("v2", 0.72, 0.62, 1.0), cand("v1", 0.70, None, None), POLICY)
    assert d.promote and [g["passed"] for g in d.guards] == [None, None]
    assert "champion's evaluation has no finite value" in d.guards[0]["note"]


def test_lift_metric_guards_read_the_adapted_metrics() -> None:
    policy = GatePolicy("valid.auc_lift")
    assert policy.guard_metrics() == {
        "gauc": ("valid.after.gauc", 0.002),
        "calibration": ("valid.after.calibration", 0.05),
    }


def test_delivery_config_gate_section_sets_the_guards() -> None:
    cfg = DeliveryConfig.from_dict(
        {
            "run_root": "/r",
            "raw_root": "/w",
            "gate": {"gauc_tolerance": 0.01, "calibration_tolerance": 0.2},
        }
    )
    policy = cfg.gate.policy()
    assert (policy.gauc_tolerance, policy.calibration_tolerance) == (0.01, 0.2)
    assert type(policy) is GatePolicy and GateSettings().policy() == GatePolicy()
