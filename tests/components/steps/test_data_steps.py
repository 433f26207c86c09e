"""The data steps' own logic: the raw-partition check (the sensor's poke) and failing closed."""

from __future__ import annotations

import pytest

from components.steps.config import DeliveryConfig
from components.steps.data import ValidationFailed, check_raw, validate_raw_step
from components.steps.layout import Interval, RunLayout


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from components.generate import GeneratorConfig, generate

    root = tmp_path_factory.mktemp("raw-steps") / "raw"
    generate(GeneratorConfig(out=str(root), rows=1500, hours=2, num_users=300, num_campaigns=20))
    return root


def test_check_raw_waits_for_every_hour_of_the_interval(raw, tmp_path):
    cfg = DeliveryConfig(run_root=str(tmp_path), raw_root=str(raw))
    assert check_raw(cfg, Interval.parse("2026-11-01T00/2h")).ready
    partial = check_raw(cfg, Interval.parse("2026-11-01T01/2h"))
    assert not partial.ready and partial.missing == ["dt=2026-11-01/hr=02"] and partial.files == 1
    nothing = check_raw(cfg, Interval.parse("2026-11-02T00/1h"))
    assert not nothing.ready and nothing.files == 0
    absent = check_raw(
        DeliveryConfig(raw_root=str(tmp_path / "nope")), Interval.parse("2026-11-01T00/1h")
    )
    assert not absent.ready and "does not exist" in absent.reason


@pytest.mark.spark
def test_a_failed_raw_validation_stops_the_flow_and_records_nothing(raw, tmp_path, spark):
    # An impossible CTR band: the generated logs have ~3 % clicks.
    cfg = DeliveryConfig(run_root=str(tmp_path), raw_root=str(raw),
                         validation={"ctr_min": 0.5, "ctr_max": 0.9})  # fmt: skip
    interval = Interval.parse("2026-11-01T00/1h")
    with pytest.raises(ValidationFailed, match="label_rate:click"):
        validate_raw_step(cfg, interval, spark)
    layout = RunLayout.of(cfg.run_root)
    assert not layout.record_path(interval, "raw_validation").exists()
    assert (layout.records(interval) / "raw_validation" / "report.md").is_file()
