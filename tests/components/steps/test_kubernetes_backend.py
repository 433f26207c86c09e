"""``backend = "kubernetes"`` at the step level: the ETL and training are submitted as the rendered
SparkApplication and PyTorchJob to a cluster double that really runs them (tests/cluster_double.py:
spark-submit of the rendered driver command, one process per rendered pod), and nothing heavy runs
in this process. The ETL's output equals the local backend's; a retry re-attaches to a job that
succeeded and runs a failed one again; a failed job fails the step with the job's message."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace

import pytest
import yaml

from components.steps.config import DeliveryConfig
from components.steps.data import EtlStepResult, etl_step
from components.steps.layout import Interval, RunLayout
from tests.cluster_double import RunningCluster, shared_dir
from tests.dags.conftest import ETL, TRAINER

# The cluster double runs each rendered job in its own processes (spark-submit: a second JVM).
pytestmark = [pytest.mark.spark, pytest.mark.multiprocess]
INTERVAL = Interval.parse("2026-11-01T00/1h")


@pytest.fixture(scope="module")
def volume():
    root = shared_dir("metarec-k8s-steps-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def raw(volume):
    from components.generate import GeneratorConfig, generate

    out = volume / "raw"
    generate(GeneratorConfig(out=str(out), rows=3000, hours=1, num_users=300, num_campaigns=30))
    return out


@pytest.fixture(scope="module")
def cluster(volume):
    """The double, standing in for the cluster for every test of this module."""
    from components.launchers import backend

    # The data volume is mounted where this process sees it (data_mount): the same paths in both.
    pvcs = {"metarec-data": volume, "metarec-runs": volume / "pvc-runs"}
    pvcs["metarec-runs"].mkdir()
    double = RunningCluster({name: str(path) for name, path in pvcs.items()})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "kubernetes_apis", lambda: (double, double))
        yield double


@pytest.fixture
def worker_only_orchestrates(monkeypatch):
    """Fail the test if this process starts Spark or trains (the local backend's entry points)."""
    import components.etl
    import components.launchers.local
    import components.steps.data

    monkeypatch.setattr(components.steps.data, "shared_spark", _refuse)
    monkeypatch.setattr(components.etl, "run_etl", _refuse)
    monkeypatch.setattr(components.launchers.local, "train_locally", _refuse)


def _refuse(*args, **kwargs):
    raise AssertionError("heavy work ran in the worker process")


def _assert_same_episodes(ours: str, theirs: str) -> None:
    """The same episode files holding the same rows. Not the manifests' content hash: it hashes
    the files' bytes, and parquet-mr orders a column chunk's encodings in the footer differently
    from one JVM to the next (the same local ETL run in two processes gives two hashes)."""
    import pyarrow.parquet as pq

    from trainer.data.contract import load_manifest

    def files(root: str) -> list[dict]:
        return [{k: v for k, v in f.items() if k != "sha256"} for f in load_manifest(root).files]

    assert files(ours) == files(theirs) and files(ours)
    for f in files(ours):
        assert pq.read_table(f"{ours}/{f['path']}").equals(pq.read_table(f"{theirs}/{f['path']}"))


def _k8s(volume, raw, **kubernetes) -> DeliveryConfig:
    return DeliveryConfig.from_dict(
        {
            "run_root": str(volume / "run"),
            "raw_root": str(raw),
            "backend": "kubernetes",
            "etl": ETL,
            "trainer_overrides": TRAINER,
            "kubernetes": {
                "etl_image": "reg/metarec-components:1",
                "etl_executors": 1,
                "data_mount": str(volume),
                **kubernetes,
            },
        }
    )


@pytest.fixture(scope="module")
def k8s_etl(volume, raw, cluster) -> tuple[DeliveryConfig, EtlStepResult]:
    cfg = _k8s(volume, raw, cleanup="never")  # the job stays: the retry below re-attaches to it
    with pytest.MonkeyPatch.context() as mp:
        for target in ("components.steps.data.shared_spark", "components.etl.run_etl"):
            mp.setattr(target, _refuse)
        return cfg, etl_step(cfg, INTERVAL)


def test_the_etl_runs_as_the_rendered_sparkapplication_and_equals_the_local_etl(
    k8s_etl, cluster, raw, tmp_path, spark
):
    cfg, result = k8s_etl
    local_cfg = DeliveryConfig.from_dict(
        {"run_root": str(tmp_path), "raw_root": str(raw), "etl": ETL}
    )
    local = etl_step(local_cfg, INTERVAL, spark)
    _assert_same_episodes(result.episodes_dir, local.episodes_dir)
    assert (result.rows_read, result.rows_kept, result.rows_quarantined, result.episodes) == (
        local.rows_read, local.rows_kept, local.rows_quarantined, local.episodes)  # fmt: skip
    assert result.rows_kept > 0 and result.reasons == local.reasons
    assert result.episodes_dir == str(RunLayout.of(cfg.run_root).episodes(INTERVAL))

    (app,) = cluster.ran
    kept = RunLayout.of(cfg.run_root).record_path(INTERVAL, "etl.k8s").with_suffix(".yaml")
    assert app == yaml.safe_load(kept.read_text())  # what was submitted is the rendered run
    assert app["kind"] == "SparkApplication" and app["metadata"]["name"].startswith(
        f"metarec-etl-{INTERVAL.slug}-"
    )
    assert app["spec"]["image"] == "reg/metarec-components:1"
    assert app["spec"]["executor"]["instances"] == 1
    args = app["spec"]["arguments"]
    assert args[:8] == ["--input", str(raw), "--output", str(RunLayout.of(cfg.run_root)
                        .episodes_root), "--start", "2026-11-01T00", "--end", "2026-11-01T01"]  # fmt: skip
    assert "k_support=4" in args[8:]  # the [etl] settings, as the job's key=value overrides


def test_a_retried_etl_task_re_attaches_to_its_application(k8s_etl, cluster, caplog):
    cfg, first = k8s_etl
    # The worker died after the job succeeded, before it recorded the result.
    RunLayout.of(cfg.run_root).record_path(INTERVAL, "etl").unlink()
    with caplog.at_level(logging.INFO, logger="components.launchers.kubernetes"):
        again = etl_step(cfg, INTERVAL)
    assert again == first
    assert len(cluster.ran) == 1  # not submitted twice
    assert "exists for this run: re-attaching" in caplog.text


def test_a_failed_job_fails_the_step_with_its_message_and_a_retry_runs_it_again(
    volume, raw, cluster, tmp_path, worker_only_orchestrates
):
    # The raw logs under /tmp: this process sees them, the pods do not (their /tmp is an emptyDir),
    # the mistake of a raw_root not mounted at the same path in the pods.
    unmounted = shutil.copytree(raw, tmp_path / "raw")
    cfg = replace(_k8s(volume, unmounted), run_root=str(volume / "failing"))
    with pytest.raises(RuntimeError) as failed:
        etl_step(cfg, INTERVAL)
    message = str(failed.value)
    assert f"ETL of {INTERVAL.id} on Kubernetes failed: SparkApplication metarec/" in message
    assert "driver container failed with ExitCode: 2" in message
    assert "kubectl -n metarec describe sparkapplication" in message
    assert "does not exist or is not a directory" in message  # the driver's error, from its log
    assert not RunLayout.of(cfg.run_root).record_path(INTERVAL, "etl").exists()
    # A retry deletes the failed application kept for inspection and runs it again (rather than
    # re-attaching to the failure).
    ran = len(cluster.ran)
    with pytest.raises(RuntimeError, match="driver container failed"):
        etl_step(cfg, INTERVAL)
    assert len(cluster.ran) == ran + 1 and cluster.ran[-1] == cluster.ran[-2]
    assert "delete_namespaced_custom_object" in cluster.methods()


def test_training_runs_as_the_rendered_pytorchjob(k8s_etl, cluster, worker_only_orchestrates):
    from components.steps.training import train_step

    etl_cfg, etl = k8s_etl
    cfg = replace(etl_cfg, kubernetes=replace(etl_cfg.kubernetes, variant="pytorchjob-cpu"))
    result = train_step(cfg, INTERVAL, etl)
    job = cluster.ran[-1]
    kept = RunLayout.of(cfg.run_root).record_path(INTERVAL, "train.k8s").with_suffix(".yaml")
    assert job == list(yaml.safe_load_all(kept.read_text()))[-1]
    assert job["kind"] == "PyTorchJob"
    assert f"data.path={etl.episodes_dir}" in job["spec"]["pytorchReplicaSpecs"]["Master"][
        "template"]["spec"]["containers"][0]["args"]  # fmt: skip
    assert result.backend == "kubernetes" and result.steps == 4
    assert result.checkpoint.startswith(result.run_dir) and result.evaluation
    assert (RunLayout.of(cfg.run_root).train(INTERVAL) / "eval.json").is_file()
