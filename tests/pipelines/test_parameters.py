"""The pipeline's parameters resolve into the run spec as documented: the interval from an explicit
start/end or from KFP's scheduled time, the typed settings, the delivery_config file's other
settings, and unset model parameters that keep the trainer config's (and the file's) values.

Runs ``resolve_run.python_func`` with the compiled pipeline's own defaults, i.e. what a KFP UI
launch submits (kfp.local cannot leave an ``Optional`` parameter unset; the backend passes None).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from components.steps import spec
from pipelines import compile as compile_module

SCHEDULED = "2026-11-01T05:00:00Z"


def ui_defaults() -> dict:
    """The compiled pipeline's parameter defaults; an Optional parameter without one is None."""
    doc = next(yaml.safe_load_all((compile_module.COMPILED / "training_pipeline.yaml").read_text()))
    out = {}
    for name, p in doc["root"]["inputDefinitions"]["parameters"].items():
        value = p.get("defaultValue")
        out[name] = int(value) if p["parameterType"] == "NUMBER_INTEGER" and value else value
    return out


def resolve_text(schedule_time: str = SCHEDULED, **params) -> str:
    from pipelines.ops.resolve_run import resolve_run

    return resolve_run.python_func(schedule_time=schedule_time, **{**ui_defaults(), **params})


def resolve(schedule_time: str = SCHEDULED, **params):
    return spec.decode(resolve_text(schedule_time, **params))


def write_config(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "delivery.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_a_scheduled_run_processes_the_hours_ending_at_its_scheduled_time():
    assert resolve()[1].id == "interval=20261101T04-20261101T05"
    # KFP fills in RFC 3339 times, possibly with fractions; the interval ends at the whole hour
    # at or before the scheduled time.
    _, interval = resolve("2026-11-01T05:17:31.25Z", interval_hours=3)
    assert interval.id == "interval=20261101T02-20261101T05"


def test_an_explicit_interval_wins_over_the_scheduled_time():
    _, interval = resolve(interval_start="2026-10-01T00", interval_end="2026-10-02T00")
    assert interval.id == "interval=20261001T00-20261002T00"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"interval_start": "2026-10-01T00"}, "give both"),
        ({"schedule_time": "{{$.pipeline_job_schedule_time_utc}}"}, "pass interval_start"),
        ({"interval_hours": 0}, "interval_hours must be >= 1"),
        ({"backend": "k8s"}, "backend: 'k8s' is not one of"),
        ({"nproc": 0}, "nproc"),
        ({"run_root": "out/delivery"}, "run_root = 'out/delivery': give absolute paths"),
        ({"gate_metric": "auc"}, "<split>.<before|after>.<metric>"),
    ],
)
def test_bad_parameters_fail_in_resolve_naming_them(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve(**params)


def test_typed_parameters_and_the_file_make_the_config(tmp_path):
    path = write_config(
        tmp_path,
        {
            "etl": {"k_support": 8},
            "gate": {"promote_on_equal": True},
            "kubernetes": {"variant": "trainjob"},
            "warm_start": False,
        },
    )
    cfg, _ = resolve(
        backend="kubernetes", nproc=2, gate_metric="test_cold.after.logloss", delivery_config=path
    )
    assert (cfg.backend, cfg.nproc, cfg.trainer_config) == ("kubernetes", 2, "default")
    assert (cfg.run_root, cfg.raw_root, cfg.spark_master) == (
        "/data/delivery",
        "/data/raw",
        "local[4]",
    )
    assert (cfg.gate.metric, cfg.gate.tolerance, cfg.gate.promote_on_equal) == (
        "test_cold.after.logloss",
        0.001,
        True,
    )
    assert cfg.etl.k_support == 8 and cfg.kubernetes.variant == "trainjob"
    assert cfg.warm_start is False


def test_unset_model_parameters_keep_the_users_architecture_and_mode(tmp_path):
    """The pipeline's defaults used to append model.arch="dlrm" and meta.mode="maml" after the
    user's own overrides, silently replacing any other choice."""
    from trainer.config import load_trainer_config

    path = write_config(
        tmp_path, {"trainer_overrides": ['model.arch="deepfm"', 'meta.mode="fomaml"']}
    )

    def trainer(cfg):
        return load_trainer_config(cfg.trainer_config, [*cfg.trainer_overrides, "data.path=x"])

    t = trainer(resolve(delivery_config=path)[0])
    assert (t.model.arch, t.meta.mode) == ("deepfm", "fomaml")
    # A KFP UI field left blank arrives as "": unset too.
    t = trainer(resolve(delivery_config=path, model_arch="", meta_mode="")[0])
    assert (t.model.arch, t.meta.mode) == ("deepfm", "fomaml")
    # A model parameter that is set comes after the file's overrides: the run's choice wins.
    t = trainer(resolve(delivery_config=path, meta_mode="maml", embedding_dim=8)[0])
    assert (t.model.arch, t.meta.mode, t.model.embedding_dim) == ("deepfm", "maml", 8)


def test_a_file_that_sets_a_parameters_setting_differently_is_refused(tmp_path):
    path = write_config(tmp_path, {"backend": "kubernetes", "gate": {"metric": "valid.after.auc"}})
    with pytest.raises(ValueError) as e:
        resolve(delivery_config=path)
    assert "backend = 'kubernetes' (parameter backend: 'local')" in str(e.value)
    assert "[gate] metric = 'valid.after.auc' (parameter gate_metric" in str(e.value)
    # The same values in both places are one setting, not a conflict (a file shared with the DAGs).
    cfg, _ = resolve(delivery_config=path, backend="kubernetes", gate_metric="valid.after.auc")
    assert cfg.backend == "kubernetes"


def test_a_missing_delivery_config_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"nothing\.toml"):
        resolve(delivery_config=str(tmp_path / "nothing.toml"))


def test_a_bad_key_or_type_in_the_file_is_named_with_its_dotted_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) k_suport in \[etl\]"):
        resolve(delivery_config=write_config(tmp_path, {"etl": {"k_suport": 8}}))
    with pytest.raises(ValueError, match=r"kubernetes\.nodes: 'x' matches none of"):
        resolve(delivery_config=write_config(tmp_path, {"kubernetes": {"nodes": "x"}}))


def test_every_component_reads_the_spec_with_the_loader_into_the_same_config(tmp_path):
    path = write_config(tmp_path, {"etl": {"max_lateness": "2h"}, "gate": {"max_episodes": 5}})
    text = resolve_text(delivery_config=path)
    cfg, interval = spec.decode(text)
    assert cfg.etl.max_lateness.total_seconds() == 7200 and cfg.gate.max_episodes == 5
    assert spec.encode(cfg, interval) == text
