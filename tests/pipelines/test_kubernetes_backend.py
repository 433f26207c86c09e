"""The KFP components with ``backend = "kubernetes"``, run by ``kfp.local`` (each in its own
subprocess): ``run_etl`` and ``train`` only orchestrate. They submit the rendered SparkApplication
and PyTorchJob to the cluster double of tests/cluster_double.py (installed in the component
processes by a ``sitecustomize`` on PYTHONPATH; there the in-process ETL and local training
raise), which runs them, and pass the jobs' results on as their artifacts."""

import json  # no `from __future__ import annotations`: kfp reads the pipeline's annotations
import shutil
from pathlib import Path

import pytest

from tests.cluster_double import JOURNAL_ENV, shared_dir
from tests.dags.conftest import ETL, TRAINER

pytestmark = [pytest.mark.spark, pytest.mark.multiprocess, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def volume():
    root = shared_dir("metarec-k8s-kfp-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_etl_and_train_components_submit_their_jobs(volume, tmp_path, monkeypatch):
    from kfp import dsl, local

    from components.generate import GeneratorConfig, generate
    from components.steps import Interval, spec
    from components.steps.config import DeliveryConfig
    from pipelines.ops.run_etl import run_etl
    from pipelines.ops.train import train

    raw = volume / "raw"
    generate(GeneratorConfig(out=str(raw), rows=3000, hours=1, num_users=300, num_campaigns=30))
    cfg = DeliveryConfig.from_dict({
        "run_root": str(volume / "run"), "raw_root": str(raw), "backend": "kubernetes",
        "etl": ETL, "trainer_overrides": TRAINER,
        "kubernetes": {"variant": "pytorchjob-cpu", "etl_executors": 1, "data_mount": str(volume)},
    })  # fmt: skip
    run_spec = spec.encode(cfg, Interval.parse("2026-11-01T00/1h"))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "from tests.cluster_double import install_from_env\n\ninstall_from_env()\n"
    )
    journal = volume / "journal.jsonl"  # the double's data volume is the journal's folder
    monkeypatch.setenv("PYTHONPATH", f"{hook}:{REPO}")
    monkeypatch.setenv(JOURNAL_ENV, str(journal))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))

    @dsl.pipeline
    def etl_and_train(run_spec: str):  # the two tasks of training_pipeline, as it wires them
        etl = run_etl(run_spec=run_spec)
        train(run_spec=run_spec, episodes=etl.outputs["episodes"])

    etl_and_train(run_spec=run_spec)

    ran = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(r["job"]["kind"], r["status"]) for r in ran] == [
        ("SparkApplication", {"applicationState": {"state": "COMPLETED"}}),
        ("PyTorchJob", ran[1]["status"]),
    ]
    assert ran[1]["status"]["conditions"][-1]["type"] == "Succeeded"
    records = volume / "run" / "intervals" / "interval=20261101T00-20261101T01"
    episodes = json.loads((records / "etl.json").read_text())["result"]
    manifest = json.loads((Path(episodes["episodes_dir"]) / "_manifest.json").read_text())
    assert episodes["content_hash"] == manifest["content_hash"] and episodes["rows_kept"] > 0
    trained = json.loads((records / "train.json").read_text())["result"]
    assert trained["backend"] == "kubernetes" and trained["steps"] == 4
    assert Path(trained["checkpoint"], "meta.json").is_file()
