"""Every DAG imports cleanly and follows the project's policy (timeouts, pools, the failure
callback); parsing stays cheap; without an explicit, absolute delivery config the DAGs refuse to
load."""

from __future__ import annotations

import itertools
import json
import os
import runpy
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.dags.conftest import DAGS, DELIVERY, REPO

EXPECTED = {"continuous_delivery", "data_quality", "model_ops"}
HEAVY = ("torch", "pyspark", "great_expectations", "kfp", "pandas")


def test_every_dag_imports_without_errors(dag_bag):
    assert dag_bag.import_errors == {}
    assert set(dag_bag.dags) == EXPECTED


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_dag_policy(dag_bag, dag_id):
    dag = dag_bag.dags[dag_id]
    assert dag.tags and "metarec" in dag.tags
    assert dag.doc_md and dag.doc_md.strip().startswith("###")
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.dagrun_timeout == timedelta(days=1)
    for t in dag.tasks:
        assert t.owner == "ml-platform", t.task_id
        # Safe: every step is idempotent per interval, pointer changes are compare-and-swap.
        assert t.retries >= 2, t.task_id
        assert t.execution_timeout is not None, t.task_id
        assert [f.__name__ for f in t.on_failure_callback] == ["on_task_failure"], t.task_id


SPARK = {"validate_raw", "run_etl", "validate_raw_day"}
PYARROW = {"validate_episodes", "audit_episodes"}
"""The episode suite reads with pyarrow: plain tasks (default pool and timeout), no Spark slot."""


def test_spark_and_training_tasks_have_their_pools_and_timeouts(dag_bag):
    pools = {
        (dag_id, t.task_id): (t.pool, t.execution_timeout)
        for dag_id, dag in dag_bag.dags.items()
        for t in dag.tasks
    }
    for (_, task_id), (pool, timeout) in pools.items():
        if task_id in SPARK:
            assert (pool, timeout) == ("metarec_spark", timedelta(hours=3)), task_id
        elif task_id == "train":
            assert (pool, timeout) == ("metarec_training", timedelta(hours=12)), task_id
        else:
            assert (pool, timeout) == ("default_pool", timedelta(hours=1)), task_id
    assert {t for _, t in pools} >= SPARK | PYARROW | {"train"}
    sensor = dag_bag.dags["continuous_delivery"].task_dict["wait_for_raw_partitions"]
    assert sensor.timeout == DELIVERY["raw_wait_timeout_s"]  # the wait; each poke: an hour


def _config(tmp_path, **fields) -> str:
    path = tmp_path / "delivery.json"
    path.write_text(json.dumps({**DELIVERY, **fields}))
    return str(path)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (None, "$METAREC_DELIVERY_CONFIG is not set"),
        ("relative.toml", "must be an absolute path"),
        ({"run_root": "out/delivery"}, "run_root = 'out/delivery' must be absolute"),
        ({"raw_root": "out/raw"}, "raw_root = 'out/raw' must be absolute"),
    ],
)
def test_the_dags_refuse_to_load_without_an_explicit_absolute_config(
    airflow_db, tmp_path, monkeypatch, setting, message
):
    """What the UI shows as the import errors of all three DAG files."""
    from airflow.dag_processing.dagbag import DagBag

    if setting is None:
        monkeypatch.delenv("METAREC_DELIVERY_CONFIG")
    else:
        path = setting if isinstance(setting, str) else _config(tmp_path, **setting)
        monkeypatch.setenv("METAREC_DELIVERY_CONFIG", path)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.dags == {}
    assert sorted(os.path.basename(f) for f in bag.import_errors) == [
        "continuous_delivery.py",
        "data_quality.py",
        "model_ops.py",
    ]
    for error in bag.import_errors.values():
        assert message in error and "METAREC_DELIVERY_CONFIG" in error, error


def test_the_asset_uris_are_absolute_whatever_the_working_directory(tmp_path, monkeypatch):
    """Parsed from another working directory, the Asset URIs still name the configured root (the
    file is executed afresh: its configuration is read when it is parsed)."""
    monkeypatch.chdir(tmp_path)
    g = runpy.run_path(str(DAGS / "continuous_delivery.py"))
    run_root = DELIVERY["run_root"]
    assert [g["EPISODES"].uri, g["MODEL"].uri] == [
        f"file://{run_root}/episodes",
        f"file://{run_root}/models/ctr-dlrm",
    ]


def test_continuous_delivery_is_interval_scoped_and_wired_in_order(dag_bag):
    from airflow.sdk import CronDataIntervalTimetable

    dag = dag_bag.dags["continuous_delivery"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "0 * * * *"  # "hourly" in the test config
    chain = [
        "wait_for_raw_partitions",
        "validate_raw",
        "run_etl",
        "validate_episodes",
        "train",
        "export_model",
        "evaluate",
        "gate",
        "promote",
        "report",
    ]
    for a, b in itertools.pairwise(chain):
        assert b in dag.task_dict[a].downstream_task_ids, (a, b)
    sensor = dag.task_dict["wait_for_raw_partitions"]
    assert sensor.mode == "reschedule" and sensor.timeout == 60
    outlets = {
        t: [a.name for a in dag.task_dict[t].outlets] for t in ("validate_episodes", "promote")
    }
    assert outlets == {
        "validate_episodes": ["metarec_episodes"],
        "promote": ["metarec_model_ctr-dlrm"],
    }


def test_parsing_the_dag_files_imports_no_heavy_library():
    """Each file parsed in a fresh interpreter (one per file would cost an Airflow import each)."""
    code = (
        "import json, runpy, sys\n"
        "for path in sys.argv[1:]:\n"
        "    runpy.run_path(path)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    files = [str(DAGS / n) for n in ("continuous_delivery.py", "data_quality.py", "model_ops.py")]
    out = subprocess.run(
        [sys.executable, "-c", code, *files],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_schedule_comes_from_the_config(tmp_path, monkeypatch):
    """A daily config gives a daily timetable: the same DAG file, another configuration."""
    (tmp_path / "daily.toml").write_text(
        f'run_root = "{tmp_path}/run"\nraw_root = "{tmp_path}/raw"\n'
        'schedule = "daily"\nbackend = "kubernetes"\n'
    )
    monkeypatch.setenv("METAREC_DELIVERY_CONFIG", str(tmp_path / "daily.toml"))
    g = runpy.run_path(str(DAGS / "continuous_delivery.py"))
    assert (g["CFG"].backend, g["continuous_delivery"]().timetable.expression) == (
        "kubernetes",
        "0 0 * * *",
    )
