"""Interval ids, step records (the idempotence mechanism) and the delivery config."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from components.etl.config import EtlSettings
from components.steps.config import (
    DeliveryConfig,
    KubernetesSettings,
    load_delivery_config,
)
from components.steps.layout import Interval, RunLayout, read_record, write_record


class _OddDatetime(datetime):
    """A datetime subclass with its own arithmetic, like Airflow's pendulum DateTime."""

    def __sub__(self, other):
        raise AssertionError("subclass arithmetic must not leak into the steps")


def test_interval_id_matches_the_etl_folder_and_normalises_times():
    i = Interval("2026-11-01T00", "2026-11-01T06")
    assert i.id == "interval=20261101T00-20261101T06"
    assert i.slug == "20261101t00-20261101t06"
    assert Interval.parse("2026-11-01T00/6h") == i == Interval.from_dict(i.to_dict())
    plus2 = timezone(timedelta(hours=2))
    odd = Interval(_OddDatetime(2026, 11, 1, 2, tzinfo=plus2), datetime(2026, 11, 1, 6, tzinfo=UTC))
    assert type(odd.start) is datetime and odd.start == datetime(2026, 11, 1, 0, tzinfo=UTC)
    assert odd.end - odd.start == timedelta(hours=6)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-11-01T01", "2026-11-01T00", "after its start"),
        ("2026-11-01T00:30", "2026-11-01T02", "whole UTC hour"),
    ],
)
def test_bad_intervals_are_refused(start, end, message):
    with pytest.raises(ValueError, match=message):
        Interval(start, end)


def test_a_record_is_returned_only_for_the_same_inputs(tmp_path):
    layout, i = RunLayout.of(tmp_path), Interval.parse("2026-11-01T00/1h")
    assert read_record(layout, i, "etl", {"a": 1}) is None
    write_record(layout, i, "etl", {"a": 1, "files": ("x", "y")}, {"out": 3})
    assert read_record(layout, i, "etl", {"files": ["x", "y"], "a": 1}) == {"out": 3}
    assert read_record(layout, i, "etl", {"a": 2, "files": ["x", "y"]}) is None
    assert read_record(layout, i, "etl") == {"out": 3}  # any inputs
    assert read_record(layout, Interval.parse("2026-11-01T01/1h"), "etl") is None
    assert not list(layout.records(i).glob(".*tmp*"))  # written through a temp file, renamed
    layout.record_path(i, "etl").write_text("{ torn")
    assert read_record(layout, i, "etl") is None  # unreadable = not done


def test_run_root_must_be_a_local_or_mounted_path():
    with pytest.raises(ValueError, match="local or mounted"):
        RunLayout.of("s3://bucket/run")


def test_config_from_the_environment_file(tmp_path, monkeypatch):
    path = tmp_path / "delivery.toml"
    path.write_text(
        'run_root = "/data/run"\nschedule = "daily"\nbackend = "kubernetes"\n'
        'trainer_overrides = ["train.steps=200"]\n[etl]\nk_support = 16\n'
        '[gate]\nmetric = "valid.after.auc"\n[kubernetes]\nvariant = "trainjob-gpu"\n'
    )
    monkeypatch.setenv("METAREC_DELIVERY_CONFIG", str(path))
    cfg = load_delivery_config()
    assert (cfg.cron, cfg.backend, cfg.etl, cfg.trainer_overrides) == (
        "0 0 * * *",
        "kubernetes",
        EtlSettings(k_support=16),
        ("train.steps=200",),
    )
    assert cfg.gate.metric == "valid.after.auc" and cfg.kubernetes.variant == "trainjob-gpu"
    assert DeliveryConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    monkeypatch.delenv("METAREC_DELIVERY_CONFIG")
    assert load_delivery_config() == DeliveryConfig()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"schedule": "every hour"}, "5-field cron"),
        ({"backend": "slurm"}, "backend"),
        ({"etl": {"output": "/x"}}, r"unknown config key\(s\) output in \[etl\]"),
        ({"etl": {"k_support": "many"}}, "etl.k_support: expected int, got str 'many'"),
        ({"etl": {"k_support": 4}}, r"etl: --min-support \(8\) cannot exceed K"),
        ({"etl": {"max_lateness": "soon"}}, "etl.max_lateness: 'soon' is not a duration"),
        ({"gate": {"metric": "auc"}}, "metric"),
        ({"gate": {"metrik": "valid.after.auc"}}, r"unknown config key\(s\) metrik in \[gate\]"),
        ({"gate": {"batch_episodes": 1.5}}, "gate.batch_episodes: expected int"),
        ({"kubernetes": {"nodes": "two"}}, "kubernetes.nodes: 'two' matches none of"),
        ({"kubernetes": {"cleanup": "sometimes"}}, "kubernetes.cleanup: 'sometimes' is not one"),
        ({"kubernetes": {"gpus": 1}}, r"unknown config key\(s\) gpus in \[kubernetes\]"),
        ({"validation": {"ctr_min": 0.9, "ctr_max": 0.1}}, "ctr_min"),
        ({"trainer_overrides": ["steps"]}, "section.key=value"),
        ({"model_name": "bad name"}, "model_name"),
        ({"airflow": {"spark_pool": "a pool"}}, "spark_pool 'a pool' is no pool name"),
        ({"airflow": {"task_timeout_s": 0}}, "task_timeout_s must be a whole number"),
        ({"airflow": {"pool": "x"}}, r"unknown config key\(s\) pool in \[airflow\]"),
        ({"airflow": {"dagrun_timeout_s": 3600}}, "must exceed raw_wait_timeout_s"),
    ],
)
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        DeliveryConfig.from_dict(fields)


def test_unknown_config_keys_are_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"run_rot": "/x"}))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) run_rot in the top level"):
        load_delivery_config(path)


def test_the_packaged_demo_config_loads():
    from pathlib import Path

    import components.steps

    cfg = load_delivery_config(Path(components.steps.__file__).parent / "demo.toml")
    assert (cfg.backend, cfg.cron, cfg.trainer_config) == ("local", "0 * * * *", "debug")
    assert cfg.etl.k_support == 4


def test_a_toml_file_and_its_json_round_trip_give_the_same_typed_config(tmp_path):
    path = tmp_path / "delivery.toml"
    path.write_text(
        'run_root = "/data/run"\n[etl]\nmax_lateness = "90m"\nrow_group_bytes = "2MiB"\n'
        '[[etl.features]]\nname = "user_id"\nbuckets = 101\n'
        "[gate]\nmax_episodes = 10\n[kubernetes]\nnodes = 2\ntimeout_s = 60\n"
    )
    cfg = load_delivery_config(path)
    assert cfg.etl.max_lateness == timedelta(minutes=90) and cfg.etl.row_group_bytes == 2 << 20
    assert [f.name for f in cfg.etl.features] == ["user_id"] and cfg.etl.dense_features
    assert (cfg.gate.max_episodes, cfg.kubernetes.nodes, cfg.kubernetes.timeout_s) == (10, 2, 60.0)
    assert DeliveryConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_the_kubernetes_defaults_are_the_run_parameters_own():
    """An empty [kubernetes] section renders the jobs of TrainRunParams' and EtlRunParams'
    defaults: those are the one place of the job defaults."""
    from components.launchers.render import TrainRunParams
    from components.launchers.render_etl import EtlRunParams

    empty = DeliveryConfig.from_dict({"kubernetes": {}}).kubernetes
    assert empty == KubernetesSettings()
    assert empty.train_params(run_id="r1") == TrainRunParams(run_id="r1")
    run = {"run_id": "r1", "input": "/i", "output": "/o", "start": "2026-11-01T00",
           "end": "2026-11-01T01"}  # fmt: skip
    assert empty.etl_params(**run) == EtlRunParams(**run)
    k = KubernetesSettings(namespace="ml", nodes=3, etl_executors=5, data_mount="/mnt/d")
    train, etl = k.train_params(run_id="r1"), k.etl_params(**run)
    assert (train.namespace, train.nodes, train.data_mount) == ("ml", 3, "/mnt/d")
    assert (etl.namespace, etl.executors, etl.data_mount) == ("ml", 5, "/mnt/d")
