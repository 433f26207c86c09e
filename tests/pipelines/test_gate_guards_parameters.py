"""The gate's two guards are pipeline parameters: typed, described, defaulting to the gate's own
defaults, and resolved into the run spec's ``[gate]`` (a delivery_config file may not set them
to other values)."""

from __future__ import annotations

import pytest

from components.promotion.gate import GatePolicy
from tests.pipelines.test_parameters import resolve, ui_defaults, write_config

GUARDS = ("gauc_tolerance", "calibration_tolerance")


def test_the_guards_default_to_the_gate_policy_defaults() -> None:
    defaults, policy = ui_defaults(), GatePolicy()
    assert [defaults[g] for g in GUARDS] == [getattr(policy, g) for g in GUARDS]
    cfg, _ = resolve()
    assert [getattr(cfg.gate, g) for g in GUARDS] == [getattr(policy, g) for g in GUARDS]


def test_the_guards_reach_the_gate_and_refuse_a_conflicting_file(tmp_path) -> None:
    cfg, _ = resolve(gauc_tolerance=0.01, calibration_tolerance=1e9)
    assert (cfg.gate.gauc_tolerance, cfg.gate.calibration_tolerance) == (0.01, 1e9)
    path = write_config(tmp_path, {"gate": {"gauc_tolerance": 0.03}})
    with pytest.raises(ValueError, match=r"\[gate\] gauc_tolerance = 0.03 \(parameter gauc_tol"):
        resolve(delivery_config=path)
    with pytest.raises(ValueError, match="gauc_tolerance must be >= 0"):
        resolve(gauc_tolerance=-1.0)
