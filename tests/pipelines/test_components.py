"""Every component of the training pipeline, called in this process through its ``.python_func``
in the pipeline's order on one hourly interval of generated ad logs: the default tier's run of the
whole flow (``kfp.local`` runs the same components in subprocesses: test_local_run.py, slow).

One run per module (``flow``), read by every test: each checks what one component returned and
wrote (its typed artifacts' files and metadata), and that the parameters reached their steps."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from kfp import dsl

from tests.pipelines.flow_inputs import ETL, INTERVAL, TRAINER, pipeline_arguments, write_inputs

pytestmark = pytest.mark.spark


def _artifact(kind: type[dsl.Artifact], root: Path, task: str, name: str) -> dsl.Artifact:
    """An output artifact as KFP's executor hands it to a component: a local file path."""
    (root / task).mkdir(parents=True, exist_ok=True)
    return kind(name=name, uri=str(root / task / name), metadata={})


@pytest.fixture(scope="module")
def flow(spark, tmp_path_factory) -> SimpleNamespace:
    """The pipeline's components in its order (the local backend, the gate promoting the first
    model), each given the previous ones' outputs as the pipeline wires them."""
    from pipelines.ops.evaluate import evaluate
    from pipelines.ops.export_model import export_model
    from pipelines.ops.gate import gate
    from pipelines.ops.promote import promote
    from pipelines.ops.report import report
    from pipelines.ops.resolve_run import resolve_run
    from pipelines.ops.run_etl import run_etl
    from pipelines.ops.train import train
    from pipelines.ops.validate_episodes import validate_episodes
    from pipelines.ops.validate_raw import validate_raw

    tmp = tmp_path_factory.mktemp("components")
    arts = tmp / "artifacts"
    # the trainer in this process (the subprocess launch: tests/pipelines/test_local_run.py, and
    # in-process = subprocess: tests/components/steps/test_in_process_training.py)
    raw, delivery_config = write_inputs(tmp, train_in_process=True)
    f = SimpleNamespace(run=tmp / "run", artifacts=arts)
    # The explicit interval (a backfill) wins over the scheduled time, which is weeks later.
    f.spec = resolve_run.python_func(
        schedule_time="2026-12-24T10:00:00Z",
        interval_hours=1,
        backend="local",
        nproc=1,
        gate_tolerance=0.001,
        gauc_tolerance=0.002,
        calibration_tolerance=0.05,
        **pipeline_arguments(raw, f.run, delivery_config),
    )
    f.raw_report = _artifact(dsl.Markdown, arts, "validate-raw", "report")
    f.raw_metrics = _artifact(dsl.Metrics, arts, "validate-raw", "metrics")
    f.raw_ok = validate_raw.python_func(f.spec, f.raw_report, f.raw_metrics)
    f.episodes = _artifact(dsl.Dataset, arts, "run-etl", "episodes")
    f.etl_metrics = _artifact(dsl.Metrics, arts, "run-etl", "metrics")
    run_etl.python_func(f.spec, f.episodes, f.etl_metrics)
    f.episodes_report = _artifact(dsl.Markdown, arts, "validate-episodes", "report")
    f.episodes_metrics = _artifact(dsl.Metrics, arts, "validate-episodes", "metrics")
    f.episodes_ok = validate_episodes.python_func(
        f.spec, f.episodes, f.episodes_report, f.episodes_metrics
    )
    f.checkpoint = _artifact(dsl.Model, arts, "train", "checkpoint")
    f.train_metrics = _artifact(dsl.Metrics, arts, "train", "metrics")
    f.trained = train.python_func(f.spec, f.episodes, f.checkpoint, f.train_metrics)
    f.model = _artifact(dsl.Model, arts, "export-model", "model")
    export_model.python_func(f.spec, f.episodes, f.trained, f.model)
    f.eval_metrics = _artifact(dsl.Metrics, arts, "evaluate", "metrics")
    f.roc = _artifact(dsl.ClassificationMetrics, arts, "evaluate", "roc")
    f.evaluation = evaluate.python_func(f.spec, f.episodes, f.model, f.eval_metrics, f.roc)
    f.gate = gate.python_func(f.spec, f.evaluation)
    f.promoted = promote.python_func(f.spec, f.gate.decision, f.model) if f.gate.promote else None
    f.report = _artifact(dsl.Markdown, arts, "report", "report")
    report.python_func(f.spec, f.report)
    return f


def _records(flow: SimpleNamespace) -> dict[str, dict]:
    """The interval's step records, by step."""
    found = (json.loads(p.read_text()) for p in (flow.run / "intervals" / INTERVAL).glob("*.json"))
    return {r["step"]: r["result"] for r in found if r.get("format") == "metarec.step"}


def test_resolve_run_puts_every_kind_of_parameter_in_the_spec(flow) -> None:
    from components.steps import spec

    cfg, interval = spec.decode(flow.spec)
    assert interval.id == INTERVAL  # the explicit interval, not the scheduled time's
    settings = cfg.to_dict()
    assert (settings["model_name"], settings["backend"], settings["nproc"]) == (
        "ctr-local",
        "local",
        1,
    )
    assert settings["gate"]["metric"] == "test_cold.after.logloss"
    assert settings["gate"]["max_episodes"] == 64
    assert settings["etl"]["k_support"] == ETL["k_support"]
    overrides = settings["trainer_overrides"]
    assert overrides[: len(TRAINER)] == TRAINER  # the file's, then the parameters'
    assert 'meta.mode="fomaml"' in overrides


def test_validate_raw_passes_and_reports(flow) -> None:
    assert flow.raw_ok is True
    assert "validation: passed" in Path(flow.raw_report.path).read_text()
    assert flow.raw_metrics.metadata and all(
        k.startswith("checks_") for k in flow.raw_metrics.metadata
    )


def test_run_etl_names_its_output_and_accounts_for_every_row(flow) -> None:
    etl = flow.etl_metrics.metadata
    assert etl["rows_read"] == etl["rows_kept"] + etl["rows_quarantined"] > 0
    named = json.loads(Path(flow.episodes.path).read_text())
    assert flow.episodes.metadata["content_hash"] == named["content_hash"]
    assert flow.episodes.metadata["interval"] == INTERVAL
    manifest = json.loads((flow.run / "episodes" / INTERVAL / "_manifest.json").read_text())
    assert (manifest["k_support"], manifest["q_query"]) == (ETL["k_support"], ETL["q_query"])
    assert etl["episodes_train"] > 0


def test_validate_episodes_passes(flow) -> None:
    assert flow.episodes_ok is True
    assert Path(flow.episodes_report.path).read_text()
    assert flow.episodes_metrics.metadata


def test_train_gets_the_model_parameters_and_names_its_checkpoint(flow) -> None:
    trained = json.loads(flow.trained)
    config = json.loads((flow.run / "train" / INTERVAL / "config.json").read_text())
    assert config["meta"]["mode"] == "fomaml" and config["model"]["embedding_dim"] == 4
    assert (config["meta"]["inner_steps"], config["meta"]["inner_lr"]) == (2, 0.05)
    assert config["train"]["steps"] == trained["steps"] == 4
    assert config["model"]["mlp"] == [16, 8]
    assert flow.checkpoint.metadata["checkpoint"] == trained["checkpoint"]
    assert Path(trained["checkpoint"]).is_dir()
    assert flow.checkpoint.metadata["warm_start"] == ""  # no champion yet: a cold start
    aucs = flow.train_metrics.metadata
    assert {"valid_before_auc", "test_cold_after_auc"} <= set(aucs)
    assert all(0.0 <= v <= 1.0 for v in aucs.values())


def test_export_evaluate_gate_and_promote_the_first_model(flow) -> None:
    records = _records(flow)
    assert flow.model.metadata["version"] == "v1"
    model = json.loads(Path(flow.model.path).read_text())
    assert Path(model["model_dir"]) == flow.run / "models" / "ctr-local" / "v1"
    assert (Path(model["model_dir"]) / "CHECKSUMS").is_file()
    evaluation = json.loads(flow.evaluation)
    assert evaluation["metric"] == "test_cold.after.logloss"
    value = flow.eval_metrics.metadata["challenger_test_cold.after.logloss"]
    assert value == evaluation["challenger_value"] == records["evaluate"]["challenger_value"]
    roc = flow.roc.metadata
    assert roc["confidenceMetrics"] and len(roc["confusionMatrix"]["rows"]) == 2
    assert (flow.gate.promote, flow.gate.verdict) == (True, "no_champion")
    assert json.loads(flow.gate.decision)["verdict"] == records["gate"]["verdict"]
    assert json.loads(flow.promoted)["champion"] == records["promote"]["champion"] == "v1"


def test_report_tells_the_verdict(flow) -> None:
    text = Path(flow.report.path).read_text()
    assert "verdict **no_champion**" in text
    assert text == (flow.run / "intervals" / INTERVAL / "report.md").read_text()
