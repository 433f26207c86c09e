"""Every DAG imports cleanly and follows the project's policy; parsing stays cheap."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from tests.dags.conftest import DAGS, REPO

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
    for t in dag.tasks:
        assert t.owner == "ml-platform", t.task_id
        assert t.retries >= 2, t.task_id


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


def test_the_schedule_comes_from_the_config(tmp_path):
    """A daily config gives a daily timetable: the same DAG file, another configuration."""
    (tmp_path / "daily.toml").write_text('schedule = "daily"\nbackend = "kubernetes"\n')
    code = (
        "import runpy, sys; g = runpy.run_path(sys.argv[1]); "
        "print(g['CFG'].backend, g['continuous_delivery']().timetable.expression)"
    )
    env = {**__import__("os").environ, "METAREC_DELIVERY_CONFIG": str(tmp_path / "daily.toml")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(DAGS / "continuous_delivery.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "kubernetes 0 0 * * *"
