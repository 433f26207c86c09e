"""The operators' admission rules that a CRD schema cannot express: each one refuses the mutated
object it exists for, and accepts the rendered manifests (tests/manifests)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from components.launchers.checks import pod_specs, require_valid, webhook_errors
from tests.components.launchers.fake_cluster import objects_for


def _master(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]


def _containers(job: dict, rtype: str = "Master") -> list[dict]:
    return job["spec"]["pytorchReplicaSpecs"][rtype]["template"]["spec"]["containers"]


def _node_job(runtime: dict) -> dict:
    return runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]


def _node_pod(runtime: dict) -> dict:
    return _node_job(runtime)["template"]


def _exit_codes(runtime: dict) -> dict:
    return _node_job(runtime)["podFailurePolicy"]["rules"][0]["onExitCodes"]


def _jobset_rule(runtime: dict) -> dict:
    return runtime["spec"]["template"]["spec"]["failurePolicy"]["rules"][0]


PYTORCHJOB_CASES: list[tuple[str, Callable[[dict], None]]] = [
    ("DNS-1035", lambda j: j["metadata"].update(name="Metarec_Train")),
    ("DNS-1035", lambda j: j["metadata"].update(name="1train")),
    ("Master.replicas must be 1", lambda j: _master(j).update(replicas=2)),
    ("Worker.replicas must be >= 1",
     lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas=0)),
    ("no container named 'pytorch'", lambda j: _containers(j)[0].update(name="trainer")),
    ("needs an image", lambda j: _containers(j, "Worker")[0].pop("image")),
    ("Master or Worker", lambda j: j["spec"]["pytorchReplicaSpecs"].update(
        Chief=copy.deepcopy(_master(j)))),
    ("restartPolicy", lambda j: _master(j).update(restartPolicy="Sometimes")),
    ("torchrun exits 1 on every failure", lambda j: _containers(j)[0].update(command=["torchrun"])),
    ("nprocPerNode", lambda j: j["spec"].update(nprocPerNode="two")),
    ("needs a Worker", lambda j: (j["spec"].update(elasticPolicy={"rdzvBackend": "c10d"}),
                                  j["spec"]["pytorchReplicaSpecs"].pop("Worker"))),
    ("exclusive", lambda j: j["spec"].update(elasticPolicy={"nProcPerNode": 2})),
    ("rdzvBackend", lambda j: j["spec"].update(elasticPolicy={"rdzvBackend": "zookeeper"})),
    ("minReplicas 4 > maxReplicas 2",
     lambda j: j["spec"].update(elasticPolicy={"minReplicas": 4, "maxReplicas": 2})),
    ("cleanPodPolicy", lambda j: j["spec"]["runPolicy"].update(cleanPodPolicy="Some")),
]  # fmt: skip


@pytest.mark.parametrize(("message", "mutate"), PYTORCHJOB_CASES)
def test_pytorchjob_rules(message: str, mutate: Callable[[dict], None]):
    job = objects_for("PyTorchJob")[-1]
    assert webhook_errors(job) == []
    mutate(job)
    assert any(message in e for e in webhook_errors(job)), webhook_errors(job)


TRAINJOB_CASES: list[tuple[str, int, Callable[[dict], None]]] = [
    ("DNS-1035", 2, lambda j: j["metadata"].update(name="x" * 64)),
    ("runtimeRef.name is required", 2, lambda j: j["spec"]["runtimeRef"].pop("name")),
    ("runtimeRef.kind", 2, lambda j: j["spec"]["runtimeRef"].update(kind="Runtime")),
    ("numNodes must be >= 1", 2, lambda j: j["spec"]["trainer"].update(numNodes=0)),
    ("reserves", 2, lambda j: j["spec"]["trainer"].update(env=[{"name": "PET_NNODES", "value": "3"}])),
    ("must run torchrun", 2, lambda j: j["spec"]["trainer"].update(command=["python", "-m", "trainer"])),
    ("no container named 'node'", 1, lambda r: _node_pod(r)["spec"]["containers"][0].update(name="pytorch")),
    ("trainjob-ancestor-step", 1,
     lambda r: r["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["metadata"].pop("labels")),
    ("removed in Trainer v2.2", 1, lambda r: r["spec"]["mlPolicy"]["torch"].update(numProcPerNode=2)),
    ("restartPolicy must be Never or OnFailure", 1, lambda r: _node_pod(r)["spec"].update(restartPolicy="Always")),
    ("podFailurePolicy needs the pod's restartPolicy Never", 1,
     lambda r: _node_pod(r)["spec"].update(restartPolicy="OnFailure")),
    ("operator must be In or NotIn", 1, lambda r: _exit_codes(r).update(operator="Equals")),
    ("without 0 for In", 1, lambda r: _exit_codes(r).update(values=[0, 2])),
    ("containerName pytorch is no container", 1, lambda r: _exit_codes(r).update(containerName="pytorch")),
    ("exactly one of onExitCodes and onPodConditions", 1,
     lambda r: _node_job(r)["podFailurePolicy"]["rules"][0].pop("onExitCodes")),
    ("action must be one of", 1, lambda r: _jobset_rule(r).update(action="Retry")),
    ("not a Job failure reason", 1, lambda r: _jobset_rule(r).update(onJobFailureReasons=["Evicted"])),
    (r"name must match", 1, lambda r: _jobset_rule(r).update(name="fail-on-user-error")),
    ("are not replicatedJobs", 1, lambda r: _jobset_rule(r).update(targetReplicatedJobs=["worker"])),
]  # fmt: skip


@pytest.mark.parametrize(("message", "index", "mutate"), TRAINJOB_CASES)
def test_trainjob_and_runtime_rules(message: str, index: int, mutate: Callable[[dict], None]):
    objs = objects_for("TrainJob")
    require_valid(objs)
    mutate(objs[index])
    with pytest.raises(ValueError, match=message):
        require_valid(objs)


def test_plain_torchrun_is_still_a_valid_trainjob_command():
    objs = objects_for("TrainJob")
    assert objs[2]["kind"] == "TrainJob"
    objs[2]["spec"]["trainer"]["command"] = ["torchrun"]
    require_valid(objs)  # Trainer v2 restarts it (exit 1), it just cannot fail fast on exit 2


def test_cross_references_must_resolve():
    objs = objects_for("TrainJob")
    with pytest.raises(ValueError, match=r"runtime .* missing"):
        require_valid([o for o in objs if o["kind"] != "TrainingRuntime"])
    with pytest.raises(ValueError, match=r"ConfigMap .* missing"):
        require_valid([o for o in objects_for("PyTorchJob") if o["kind"] != "ConfigMap"])


@pytest.mark.parametrize("key", ["image", "mainApplicationFile", "sparkVersion"])
def test_sparkapplication_rules(key: str):
    app = objects_for("SparkApplication")[0]
    assert webhook_errors(app) == []
    app["spec"].pop(key)
    assert webhook_errors(app) == [f"spec.{key} is required"]
    app = objects_for("SparkApplication")[0]
    app["spec"]["driver"].pop("serviceAccount")
    assert "serviceAccount" in webhook_errors(app)[0]


@pytest.mark.parametrize("kind", ["PyTorchJob", "TrainJob"])
def test_the_run_must_read_and_write_on_mounted_volumes(kind: str):
    """The delivery flow writes ``<run_root>/train`` under /data: a read-only /data (as the
    manifests had it) would fail every delivery run in the pod; a path on no volume likewise."""
    from components.launchers.render import TrainRunParams, render_run

    variant = "pytorchjob-cpu" if kind == "PyTorchJob" else "trainjob-cpu"
    out = "train.output_dir=/data/delivery/train/interval=1"
    objs = render_run(TrainRunParams("r1", variant, overrides=("data.path=/data/e", out)))
    require_valid(objs)
    for obj in objs:  # make the data volume read-only again
        for spec in pod_specs(obj):
            for c in spec["containers"]:
                for m in c["volumeMounts"]:
                    if m["mountPath"] == "/data":
                        m["readOnly"] = True
    with pytest.raises(ValueError, match=r"train.output_dir /data/delivery.* writable volume"):
        require_valid(objs)
    objs = render_run(TrainRunParams("r1", variant, overrides=("data.path=/elsewhere/e", out)))
    with pytest.raises(ValueError, match=r"data.path /elsewhere/e is not on a volume"):
        require_valid(objs)
    s3 = render_run(TrainRunParams("r1", variant, overrides=("data.path=s3://b/e", out)))
    require_valid(s3)  # object stores are not volumes
