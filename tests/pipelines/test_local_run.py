"""The training pipeline runs end to end with ``kfp.local`` (SubprocessRunner in this virtualenv)
on one hourly interval of generated ad logs, and produces its artifacts. One run (slow: the default tier calls the same components in
process, test_components.py) that also checks that every kind of parameter reaches its step: the
typed ones, the model ones (trainer overrides) and the ``delivery_config`` file's settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipelines.flow_inputs import ETL, INTERVAL, pipeline_arguments, write_inputs

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_pipeline_runs_locally_and_promotes_the_first_model(tmp_path):
    from kfp import local

    from pipelines.local import scheduled_at
    from pipelines.training_pipeline import training_pipeline

    raw, delivery_config = write_inputs(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))

    # kfp.local cannot leave an Optional parameter unset: every one is given here. The explicit
    # interval (a backfill) wins over the scheduled time, which is weeks later.
    with scheduled_at("2026-12-24T10:00:00Z"):
        training_pipeline(**pipeline_arguments(raw, tmp_path / "run", delivery_config))

    run = tmp_path / "run"
    found = {
        p.stem: json.loads(p.read_text()) for p in (run / "intervals" / INTERVAL).glob("*.json")
    }
    records = {k: r["result"] for k, r in found.items() if r.get("format") == "metarec.step"}
    assert records["gate"]["verdict"] == "no_champion"
    assert records["promote"]["champion"] == "v1"
    # The parameters reached the steps: model ones and the file's overrides the trainer, the
    # gate metric the evaluation, the model name the registry, the file's [etl] the ETL.
    config = json.loads((run / "train" / INTERVAL / "config.json").read_text())
    assert config["meta"]["mode"] == "fomaml" and config["model"]["embedding_dim"] == 4
    assert (config["meta"]["inner_steps"], config["meta"]["inner_lr"]) == (2, 0.05)
    assert config["train"]["steps"] == records["train"]["steps"] == 4
    assert config["model"]["mlp"] == [16, 8]
    assert records["evaluate"]["metric"] == "test_cold.after.logloss"
    assert (run / "models" / "ctr-local" / "v1").is_dir()
    manifest = json.loads((run / "episodes" / INTERVAL / "_manifest.json").read_text())
    assert (manifest["k_support"], manifest["q_query"]) == (ETL["k_support"], ETL["q_query"])
    # Typed artifacts: the data ones are files naming the data; metrics live in the metadata.
    outputs = {
        p.parent.name: json.loads(p.read_text()).get("artifacts", {})
        for p in (tmp_path / "kfp").rglob("executor_output.json")
    }

    def meta(task: str, name: str) -> dict:
        return outputs[task][name]["artifacts"][0]["metadata"]

    etl = meta("run-etl", "metrics")
    assert (
        etl["rows_read"]
        == etl["rows_kept"] + etl["rows_quarantined"]
        == records["etl"]["rows_read"]
    )
    assert meta("run-etl", "episodes")["content_hash"] == records["etl"]["content_hash"]
    assert meta("train", "checkpoint")["checkpoint"] == records["train"]["checkpoint"]
    assert meta("export-model", "model")["version"] == "v1"
    gate_metric = meta("evaluate", "metrics")["challenger_test_cold.after.logloss"]
    assert gate_metric == records["evaluate"]["challenger_value"]
    roc = meta("evaluate", "roc")
    assert roc["confidenceMetrics"] and len(roc["confusionMatrix"]["rows"]) == 2
    model = json.loads(next((tmp_path / "kfp").rglob("export-model/model")).read_text())
    assert Path(model["model_dir"]).name == "v1"
    assert (Path(model["model_dir"]) / "CHECKSUMS").is_file()
    report = next(
        p for p in (tmp_path / "kfp").rglob("report") if p.parent.name.startswith("report")
    )
    assert "verdict **no_champion**" in report.read_text()
    raw_report = next((tmp_path / "kfp").rglob("validate-raw/report")).read_text()
    assert "validation: passed" in raw_report
