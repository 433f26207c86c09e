"""``dag.test()`` of ``continuous_delivery`` with ``backend = "kubernetes"``: the ETL and training
tasks only orchestrate. They submit the rendered SparkApplication and PyTorchJob to a cluster
double that runs them (tests/cluster_double.py: spark-submit of the rendered driver command, one
process per rendered pod); this process, the worker, never runs the ETL or a training step (the
local backend's entry points raise here). The validations stay in the worker (Spark local), as
components/steps/data.py says."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.cluster_double import RunningCluster, shared_dir
from tests.dags.conftest import DAGS, DELIVERY

pytestmark = [pytest.mark.spark, pytest.mark.multiprocess, pytest.mark.slow]
INTERVAL = "interval=20261101T00-20261101T01"


@pytest.fixture
def volume():
    root = shared_dir("metarec-k8s-dag-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kubernetes_config(volume, monkeypatch):
    """The DAG's config with backend kubernetes and a run root outside /tmp (see the double)."""
    from components.generate import GeneratorConfig, generate

    raw = volume / "raw"
    generate(GeneratorConfig(out=str(raw), rows=4000, hours=1, num_users=400, num_campaigns=40))
    config = {
        **DELIVERY,
        "run_root": str(volume / "run"),
        "raw_root": str(raw),
        "backend": "kubernetes",
        "kubernetes": {"variant": "pytorchjob-cpu", "etl_executors": 1, "data_mount": str(volume)},
    }
    path = volume / "delivery.json"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("METAREC_DELIVERY_CONFIG", str(path))
    return config


@pytest.fixture
def cluster(volume, monkeypatch):
    from components.launchers import backend

    # The data volume is mounted where the worker sees it (data_mount): the same paths in both.
    pvcs = {"metarec-data": volume, "metarec-runs": volume / "metarec-runs"}
    pvcs["metarec-runs"].mkdir()
    double = RunningCluster({name: str(path) for name, path in pvcs.items()})
    monkeypatch.setattr(backend, "kubernetes_apis", lambda: (double, double))
    return double


def test_the_worker_submits_and_watches_the_etl_and_training(
    fresh_assets, kubernetes_config, cluster, spark, monkeypatch
):
    from airflow.dag_processing.dagbag import DagBag

    import components.etl
    import components.launchers.local
    from components.promotion import registry

    def refuse(*args, **kwargs):
        raise AssertionError("heavy work ran in the Airflow worker")

    monkeypatch.setattr(components.etl, "run_etl", refuse)
    monkeypatch.setattr(components.launchers.local, "train_locally", refuse)
    dag = DagBag(dag_folder=str(DAGS)).dags["continuous_delivery"]
    for t in dag.tasks:
        t.retries = 0
    run = dag.test(logical_date=datetime(2026, 11, 1, 1, tzinfo=UTC))
    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}

    assert [job["kind"] for job in cluster.ran] == ["SparkApplication", "PyTorchJob"]
    run_root = kubernetes_config["run_root"]
    records = f"{run_root}/intervals/{INTERVAL}"

    def result(step: str) -> dict:
        with open(f"{records}/{step}.json") as f:
            return json.load(f)["result"]

    etl = result("etl")
    with open(f"{etl['episodes_dir']}/_manifest.json") as f:
        assert json.load(f)["content_hash"] == etl["content_hash"]
    trained = result("train")
    assert trained["backend"] == "kubernetes" and trained["steps"] == 4
    assert trained["checkpoint"].startswith(f"{run_root}/train/")
    champion = registry.read_champion(Path(run_root) / "models", "ctr-dlrm")
    assert champion is not None and champion.version == "v1"
    for step in ("etl", "train"):  # what was submitted is kept beside the records
        with open(f"{records}/{step}.k8s.yaml") as f:
            assert f"metarec.io/interval: {INTERVAL.removeprefix('interval=').lower()}" in f.read()
