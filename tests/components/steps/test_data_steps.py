"""The data steps' own logic: the raw-partition check (the sensor's poke) and failing closed."""

from __future__ import annotations

import pytest

from components.steps.config import DeliveryConfig
from components.steps.data import ValidationFailed, check_raw, validate_raw_step
from components.steps.layout import Interval, RunLayout
from components.validation.suites import Thresholds


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
                         validation=Thresholds(ctr_min=0.5, ctr_max=0.9))  # fmt: skip
    interval = Interval.parse("2026-11-01T00/1h")
    with pytest.raises(ValidationFailed, match="label_rate:click"):
        validate_raw_step(cfg, interval, spark)
    layout = RunLayout.of(cfg.run_root)
    assert not layout.record_path(interval, "raw_validation").exists()
    assert (layout.records(interval) / "raw_validation" / "report.md").is_file()


def test_episode_validation_starts_no_spark(tmp_path, monkeypatch):
    """The episode suite reads with pyarrow: the step builds no Spark session (no JVM)."""
    import components.etl.session
    import components.steps.data
    from components.steps.data import validate_episodes_step
    from tests.components.validation.builders import END, START, write_episodes

    def refuse(*args, **kwargs):
        raise AssertionError("the episode validation started Spark")

    monkeypatch.setattr(components.steps.data, "shared_spark", refuse)
    monkeypatch.setattr(components.etl.session, "build_spark", refuse)
    cfg = DeliveryConfig(run_root=str(tmp_path))
    interval = Interval(START, END)
    write_episodes(RunLayout.of(cfg.run_root).episodes(interval), start=START, end=END)
    result = validate_episodes_step(cfg, interval)
    assert result.success and not result.reused and not result.failed_checks
    assert validate_episodes_step(cfg, interval).reused  # recorded in the manifest


def test_the_etl_settings_reach_the_kubernetes_job_as_its_own_options():
    import argparse

    from components.etl import command
    from components.steps.data import etl_arguments, etl_config

    settings = {"k_support": 4, "min_support": 2, "task_key": "advertiser_id",
                "max_lateness": "90m", "allow_missing": True, "row_group_bytes": 2 << 20,
                "features": [{"name": "user_id", "buckets": 101}], "extra": {"dag_run": "x"}}  # fmt: skip
    cfg = DeliveryConfig.from_dict(
        {"run_root": "/d", "raw_root": "/r", "backend": "kubernetes", "etl": settings}
    )
    config = etl_config(cfg, Interval.parse("2026-11-01T00/2h"))
    args = etl_arguments(config)
    assert args[:2] == ['task_key="advertiser_id"', "k_support=4"]
    assert "max_lateness=5400" in args and "allow_missing=true" in args
    assert 'features=[{"name" = "user_id", "buckets" = 101, "source" = "user_id", ' in " ".join(
        args
    )
    parser = argparse.ArgumentParser()
    command.configure_parser(parser)
    base = ["--input", "/r", "--output", "/d/episodes", "--start", "2026-11-01T00",
            "--end", "2026-11-01T02"]  # fmt: skip
    parsed = command.config_from_args(parser.parse_intermixed_args([*base, *args]))
    assert parsed == config and parsed.extra == {"dag_run": "x"}
    assert etl_arguments(etl_config(DeliveryConfig(), Interval.parse("2026-11-01T00/2h"))) == []
