"""``dag.test()`` runs ``continuous_delivery`` end to end on the local backend: two consecutive
hourly intervals of generated ad logs (a backfill of past intervals, in order), then a rerun of
the first one, which must change nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.dags.conftest import DAGS, RAW, RUN

pytestmark = [pytest.mark.spark, pytest.mark.slow]
FIRST, SECOND = "interval=20261101T00-20261101T01", "interval=20261101T01-20261101T02"


def _run(dag, hour_end: int):
    """One DAG run whose data interval ends at ``hour_end``:00 (a manual run of a
    CronDataIntervalTimetable covers the last complete interval before its logical date)."""
    run = dag.test(logical_date=datetime(2026, 11, 1, hour_end, tzinfo=UTC))
    assert run.state == "success", run.state
    return run


def _records(interval: str) -> dict[str, dict]:
    folder = RUN / "intervals" / interval
    records = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    return {step: r for step, r in records.items() if r.get("format") == "metarec.step"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def own_bag(airflow_db):
    """A DagBag of this module's own: its DAGs get retries=0 (a failure fails the test now, not
    after two 5-minute retry delays) without touching the session bag the policy tests read."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    for dag in bag.dags.values():
        for t in dag.tasks:
            t.retries = 0
    return bag


@pytest.fixture(scope="module")
def raw_logs() -> Path:
    from components.generate import GeneratorConfig, generate

    generate(
        GeneratorConfig(out=str(RAW), rows=8000, hours=2, num_users=600, num_campaigns=60, seed=4)
    )
    return RAW


def test_two_intervals_warm_start_gate_promote_and_an_idempotent_rerun(
    own_bag, fresh_assets, spark, raw_logs
):
    from components.promotion import registry

    dag = own_bag.dags["continuous_delivery"]
    models = RUN / "models"

    _run(dag, 1)
    first = _records(FIRST)
    assert first["train"]["result"]["warm_start"]["checkpoint"] is None
    assert first["gate"]["result"]["verdict"] == "no_champion"
    assert registry.read_champion(models, "ctr-dlrm").version == "v1"
    assert (RUN / "episodes" / FIRST / "_manifest.json").is_file()
    manifest = json.loads((RUN / "episodes" / FIRST / "_manifest.json").read_text())
    assert manifest["validation"]["success"] is True

    _run(dag, 2)
    second = _records(SECOND)
    ws = second["train"]["result"]["warm_start"]
    assert ws["champion"] == "v1"
    assert ws["checkpoint"] == first["train"]["result"]["checkpoint"]
    gate = second["gate"]["result"]
    assert gate["challenger"] == "v2" and gate["champion"] == "v1"
    assert gate["verdict"] in ("better", "worse", "equal", "regressed")
    # Both models were scored on the second interval's episodes: the gate compared like with like.
    ev = second["evaluate"]["result"]
    assert set(ev["files"]) == {"v1", "v2"}
    hashes = {json.loads(Path(f).read_text())["data"]["content_hash"] for f in ev["files"].values()}
    assert hashes == {second["etl"]["result"]["content_hash"]}
    champion = registry.read_champion(models, "ctr-dlrm")
    assert champion.version == ("v2" if gate["promote"] else "v1")
    assert (RUN / "intervals" / SECOND / "report.md").read_text().startswith("# metarec delivery")

    history = registry.read_history(models, "ctr-dlrm")
    outputs = {name: _tree(RUN / name) for name in ("episodes", "train", "models")}
    _run(dag, 1)  # rerun the first interval: every step reuses its record
    assert registry.read_history(models, "ctr-dlrm") == history
    assert registry.read_champion(models, "ctr-dlrm").version == champion.version
    assert {name: _tree(RUN / name) for name in outputs} == outputs
    assert sorted(p.name for p in (models / "ctr-dlrm").glob("v*")) == ["v1", "v2"]
    again = _records(FIRST)
    assert {k: v["result"] for k, v in again.items()} == {k: v["result"] for k, v in first.items()}


def test_model_ops_exports_an_interval_again(own_bag):
    """Runs after the delivery test above (same run root): a manual export of the first interval
    returns the version that already holds its checkpoint, and the other branches are skipped."""
    from components.promotion import registry

    dag = own_bag.dags["model_ops"]
    conf = {"action": "export", "interval_start": "2026-11-01T00", "interval_end": "2026-11-01T01"}
    run = dag.test(run_conf=conf)
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["export_interval"] == "success"
    assert states["rollback"] == states["status"] == "skipped"
    assert sorted(p.name for p in (RUN / "models" / "ctr-dlrm").glob("v*")) == ["v1", "v2"]
    assert registry.read_champion(RUN / "models", "ctr-dlrm") is not None


def test_the_quality_audit_of_the_day_finds_both_intervals_validated():
    from components.steps import Interval, load_delivery_config
    from components.steps.quality import audit_episodes

    summary = audit_episodes(load_delivery_config(), Interval.parse("2026-11-01T00/1d"))
    assert sorted(summary["intervals"]) == [FIRST, SECOND]
    assert summary["validated_now"] == [] and summary["failed"] == []
