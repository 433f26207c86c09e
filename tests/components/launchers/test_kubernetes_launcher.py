"""The Kubernetes launcher against a fake API that records requests and plays back the operators'
status transitions: succeeded, failed, timeout, deleted while running, re-attach, cleanup."""

from __future__ import annotations

import pytest

from components.launchers.kubernetes import (
    JobDeleted,
    JobError,
    JobFailed,
    JobOutcome,
    JobTimeout,
    KubernetesLauncher,
    job_state,
)
from tests.components.launchers.fake_cluster import (
    SCRIPTS,
    FakeCluster,
    objects_for,
    run_scenario,
)

KINDS = ("PyTorchJob", "TrainJob", "SparkApplication")


def _created(cluster: FakeCluster) -> list[tuple[str, str]]:
    out = []
    for method, args, _ in cluster.calls:
        if method == "create_namespaced_custom_object":
            out.append((args[3], args[4]))
        elif method == "create_namespaced_config_map":
            out.append(("configmaps", args[1]))
    return out


def _deleted(cluster: FakeCluster) -> list[str]:
    return [c[1][-1] for c in cluster.calls if c[0].startswith("delete_")]


@pytest.mark.parametrize("kind", KINDS)
def test_success_creates_in_order_streams_logs_and_cleans_up(kind: str):
    cluster = FakeCluster()
    objs = objects_for(kind)
    outcome, shown = run_scenario(cluster, kind, "succeeded", objs=objs)
    assert isinstance(outcome, JobOutcome) and outcome.state == "succeeded"
    assert outcome.kind == kind and outcome.name == objs[-1]["metadata"]["name"]
    # created exactly the rendered objects, in order (ConfigMap, runtime, job)
    plural = {"ConfigMap": "configmaps", "TrainingRuntime": "trainingruntimes",
              "PyTorchJob": "pytorchjobs", "TrainJob": "trainjobs",
              "SparkApplication": "sparkapplications"}  # fmt: skip
    assert _created(cluster) == [(plural[o["kind"]], o["metadata"]["name"]) for o in objs]
    # logs: every line of every pod once, in order, prefixed with its pod
    expected = [line.split(" ", 1)[1] for lines in cluster.log_lines.values() for line in lines]
    assert sorted(s.split("] ", 1)[1] for s in shown) == sorted(expected)
    assert len(shown) == len(set(shown)) and shown
    assert all(s.startswith(f"[{objs[-1]['metadata']['name']}-pod-") for s in shown)
    # cleaned up: the job first, then what it mounts; nothing left
    assert _deleted(cluster) == [o["metadata"]["name"] for o in reversed(objs)]
    assert cluster.objects == {}


@pytest.mark.parametrize("kind", KINDS)
def test_failure_reports_the_operators_reason_and_keeps_the_job(kind: str):
    cluster = FakeCluster()
    error, shown = run_scenario(cluster, kind, "failed")
    assert isinstance(error, JobFailed)
    message = str(error)
    assert "failed after" in message and "kubectl -n metarec describe" in message
    assert any(word in message for word in ("exited with code 2", "backoff"))
    assert _deleted(cluster) == []  # on-success: a failed job stays for inspection
    assert shown  # the logs up to the failure were shown


def test_failure_with_cleanup_always_deletes():
    cluster = FakeCluster()
    error, _ = run_scenario(cluster, "PyTorchJob", "failed", cleanup="always")
    assert isinstance(error, JobFailed)
    assert cluster.objects == {}


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_stops_the_job(kind: str):
    cluster = FakeCluster()
    error, _ = run_scenario(cluster, kind, "running", timeout_s=100.0)
    assert isinstance(error, JobTimeout)
    assert "did not finish within 100 s" in str(error)
    reads = [c for c in cluster.methods() if c == "get_namespaced_custom_object"]
    assert len(reads) == 5  # t = 0, 30, 60, 90, 120 s: polls every 30 s, then gives up
    assert cluster.objects == {}  # a timed-out job must not keep holding GPUs


def test_timeout_with_cleanup_never_leaves_everything():
    cluster = FakeCluster()
    error, _ = run_scenario(cluster, "TrainJob", "running", timeout_s=10.0, cleanup="never")
    assert isinstance(error, JobTimeout)
    assert _deleted(cluster) == [] and len(cluster.objects) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_deleted_while_running(kind: str):
    cluster = FakeCluster()
    objs = objects_for(kind)
    error, _ = run_scenario(cluster, kind, "deleted", objs=objs)
    assert isinstance(error, JobDeleted)
    assert "was deleted while running" in str(error)
    assert cluster.objects == {}  # the leftovers (config, runtime) are removed


def test_retry_reattaches_to_its_own_job():
    cluster = FakeCluster()
    objs = objects_for("PyTorchJob")
    first, _ = run_scenario(cluster, "PyTorchJob", "running", timeout_s=0.0, cleanup="never",
                            objs=objs)  # fmt: skip
    assert isinstance(first, JobTimeout)
    cluster.reads = 0
    again, _ = run_scenario(cluster, "PyTorchJob", "succeeded", objs=objs)
    assert isinstance(again, JobOutcome)
    creates = [c for c in cluster.methods() if c.startswith("create_")]
    assert len(creates) == 4  # two attempts (409 the second time), no third object
    assert cluster.objects == {}


@pytest.mark.parametrize("kind", KINDS)
def test_a_retry_after_a_failure_submits_the_job_again(kind: str):
    cluster = FakeCluster()
    objs = objects_for(kind)
    first, _ = run_scenario(cluster, kind, "failed", objs=objs)
    assert isinstance(first, JobFailed)  # kept for inspection (cleanup on-success)
    job = objs[-1]["metadata"]["name"]
    cluster.reads = 0
    failed_status = SCRIPTS[kind]["failed"][-1]  # what the retry finds first
    again, _ = run_scenario(cluster, kind, "", objs=objs,
                            script=[failed_status, *SCRIPTS[kind]["succeeded"]])  # fmt: skip
    assert isinstance(again, JobOutcome)
    calls = [(c[0], c[1][-1]) for c in cluster.calls]
    job_calls = [m for m, name in calls if name == job and not m.startswith("get_")]
    assert job_calls == ["create_namespaced_custom_object", "create_namespaced_custom_object",
                         "delete_namespaced_custom_object", "create_namespaced_custom_object",
                         "delete_namespaced_custom_object"]  # fmt: skip
    assert cluster.objects == {}


def test_a_foreign_job_of_the_same_name_is_not_adopted():
    cluster = FakeCluster()
    run_scenario(cluster, "PyTorchJob", "running", timeout_s=0.0, cleanup="never")
    other = objects_for("PyTorchJob")
    other[-1]["metadata"]["labels"]["metarec.io/run-id"] = "someone-else"
    error, _ = run_scenario(cluster, "PyTorchJob", "succeeded", objs=other)
    assert isinstance(error, JobError) and "belongs to run 'r1'" in str(error)


def test_invalid_objects_are_refused_before_any_request():
    cluster = FakeCluster()
    objs = objects_for("PyTorchJob")
    objs[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    error, _ = run_scenario(cluster, "PyTorchJob", "succeeded", objs=objs)
    assert isinstance(error, ValueError) and "Master.replicas must be 1" in str(error)
    assert cluster.calls == []


def test_api_errors_other_than_conflict_propagate():
    class Forbidden(FakeCluster):
        def create_namespaced_custom_object(self, *args, **kwargs):
            from kubernetes.client.exceptions import ApiException

            raise ApiException(status=403, reason="Forbidden")

    error, _ = run_scenario(Forbidden(), "TrainJob", "succeeded")
    assert getattr(error, "status", None) == 403


def test_cleanup_policy_is_checked():
    with pytest.raises(ValueError, match="cleanup must be one of"):
        KubernetesLauncher(FakeCluster(), FakeCluster(), cleanup="sometimes")


@pytest.mark.parametrize(
    ("status", "kind", "state"),
    [
        ({}, "PyTorchJob", "pending"),
        ({"conditions": [{"type": "Created", "status": "True"}]}, "PyTorchJob", "pending"),
        ({"conditions": [{"type": "Restarting", "status": "True"}]}, "PyTorchJob", "running"),
        ({"conditions": [{"type": "Running", "status": "False"},
                         {"type": "Succeeded", "status": "True"}]}, "PyTorchJob", "succeeded"),
        ({"conditions": [{"type": "Succeeded", "status": "False"},
                         {"type": "Failed", "status": "True"}]}, "PyTorchJob", "failed"),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, "TrainJob", "succeeded"),
        ({"applicationState": {"state": "SUBMISSION_FAILED"}}, "SparkApplication", "failed"),
        ({"applicationState": {"state": "PENDING_RERUN"}}, "SparkApplication", "running"),
    ],
)  # fmt: skip
def test_job_state(status: dict, kind: str, state: str):
    assert job_state({"kind": kind, "status": status})[0] == state
