"""``dag.test()`` of ``model_ops`` on its own delivery config: a rollback whose first try dies
right after the pointer swap is retried and rolls back ONCE; a rollback expecting a champion that
no longer serves is refused, and the failure callback records why."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from components.promotion import registry
from tests.dags.conftest import DAGS, DELIVERY
from trainer.exported.artifact import write_checksums

NAME = "ctr-dlrm"


@pytest.fixture()
def run_root(tmp_path, monkeypatch) -> Path:
    """A config of this test's own (the tasks read ``$METAREC_DELIVERY_CONFIG`` when they run),
    with v1, v2 and v3 promoted in turn: champion v3, stack [v1, v2, v3]."""
    root = tmp_path / "run"
    config = tmp_path / "delivery.json"
    config.write_text(json.dumps({**DELIVERY, "run_root": str(root)}))
    monkeypatch.setenv("METAREC_DELIVERY_CONFIG", str(config))
    for v in ("v1", "v2", "v3"):
        d = root / "models" / NAME / v
        d.mkdir(parents=True)
        (d / "model.json").write_text("{}")
        write_checksums(d)
        registry.promote(root / "models", NAME, v)
    return root


@pytest.fixture()
def model_ops(airflow_db):
    """The DAG with one immediate retry per task (the production retry delay is a minute)."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS / "model_ops.py")).dags["model_ops"]
    for t in dag.tasks:
        t.retries, t.retry_delay = 1, timedelta(0)
    return dag


def _tries(run) -> dict[str, tuple[str, int]]:
    return {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}


def test_a_rollback_retried_after_its_swap_rolls_back_once(run_root, model_ops, monkeypatch):
    swaps = []

    def fsync_then_die_once(path):  # the first try dies right after os.replace
        swaps.append(path)
        if len(swaps) == 1:
            raise RuntimeError("injected: the worker died after the pointer swap")

    monkeypatch.setattr(registry, "fsync_dir", fsync_then_die_once)
    run = model_ops.test(run_conf={"action": "rollback", "reason": "CTR dropped after v3"})
    assert run.state == "success"
    assert _tries(run)["rollback"] == ("success", 2)
    pointer = registry.read_champion(run_root / "models", NAME)
    assert (pointer.version, pointer.stack) == ("v2", ["v1", "v2"])  # not v1: rolled back once
    rollbacks = [r for r in registry.read_history(run_root / "models", NAME)
                 if r["action"] == "rollback"]  # fmt: skip
    assert [(r["from"], r["to"], r["key"]) for r in rollbacks] == [
        ("v3", "v2", f"model_ops {run.run_id}")
    ]


def test_a_rollback_expecting_another_champion_is_refused_and_recorded(run_root, model_ops):
    run = model_ops.test(run_conf={"action": "rollback", "expect": "v2"})  # v3 serves
    assert run.state == "failed"
    assert _tries(run)["rollback"] == ("failed", 2)
    assert registry.read_champion(run_root / "models", NAME).version == "v3"
    records = sorted((run_root / "failures").rglob("*.json"))
    assert [p.name for p in records] == ["model_ops.rollback.try2.json"]
    record = json.loads(records[0].read_text())
    assert (record["dag_id"], record["task_id"], record["run_id"]) == (
        "model_ops",
        "rollback",
        run.run_id,
    )
    assert "ChampionChanged" in record["error"] and "champion is v3, expected v2" in record["error"]


def test_a_failed_interval_task_leaves_a_failure_record_under_the_interval(run_root, airflow_db):
    """``continuous_delivery`` with the data tasks marked successful (no data, no Spark): the
    training task finds no ETL result, fails, and its callback records it under the interval."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS / "continuous_delivery.py")).dags["continuous_delivery"]
    for t in dag.tasks:
        t.retries = 0
    run = dag.test(
        logical_date=datetime(2026, 11, 1, 1, tzinfo=UTC),
        mark_success_pattern="wait_for_raw_partitions|validate_raw|run_etl|validate_episodes",
    )
    assert run.state == "failed"
    assert _tries(run)["train"][0] == "failed"
    folder = run_root / "intervals" / "interval=20261101T00-20261101T01" / "failures"
    assert [p.name for p in folder.iterdir()] == ["continuous_delivery.train.try1.json"]
    record = json.loads((folder / "continuous_delivery.train.try1.json").read_text())
    assert record["interval"] == "interval=20261101T00-20261101T01"
    assert record["format"] == "metarec.failure" and record["error"]
