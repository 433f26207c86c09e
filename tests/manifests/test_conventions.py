"""What every manifest promises beyond schemas: the trainer contract (``python -m trainer.supervise``,
i.e. torchrun with its exit code mapped, ``-m trainer`` with the mounted config), /dev/shm, GPUs =
ranks, security context and one uid/gid/fsGroup (10001) in every pod, no secrets, references that
resolve to the setup overlay, scenario headers that say how to apply/inspect/delete, the ETL's
arguments."""

from __future__ import annotations

import argparse
import re

import pytest

from components.launchers.checks import inline_secret_errors, pod_specs
from components.launchers.render import job_of, trainer_containers
from tests.manifests.conftest import MANIFESTS, OVERLAYS, TRAIN_OVERLAYS, all_objects, rendered

CONFIG_PATH = "/etc/metarec/trainer.toml"
SUPERVISED_TORCHRUN = ["python", "-m", "trainer.supervise"]
UID = 10001  # the user and group of both images (trainer/Dockerfile, components/Dockerfile)


def _containers(obj: dict) -> list[dict]:
    return [c for spec in pod_specs(obj) for c in spec["containers"]]


@pytest.mark.parametrize("overlay", TRAIN_OVERLAYS)
def test_trainer_contract(overlay: str):
    objs = rendered(overlay)
    job = job_of(objs)
    config_maps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    for _, _, container in trainer_containers(job):
        assert container["command"] == SUPERVISED_TORCHRUN  # restartable exit codes
        args = container["args"]
        assert args[:4] == ["-m", "trainer", "--config", CONFIG_PATH]
        assert any(a.startswith("data.path=/data/") for a in args)
        assert f"train.output_dir=/runs/{job['metadata']['name']}" in args
    for obj in objs:
        for spec in pod_specs(obj):
            volumes = {v["name"]: v for v in spec["volumes"]}
            (trainer,) = [c for c in spec["containers"] if c["name"] in ("pytorch", "node")]
            assert trainer["command"] == SUPERVISED_TORCHRUN
            mounts = {m["mountPath"]: volumes[m["name"]] for m in trainer["volumeMounts"]}
            assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
            assert "emptyDir" in mounts["/tmp"]  # the root filesystem is read-only
            config = config_maps[mounts["/etc/metarec"]["configMap"]["name"]]
            assert "trainer.toml" in config["data"]
            # writable: the delivery flow's run root lives there (its runs write <run_root>/train)
            assert not mounts["/data"]["persistentVolumeClaim"].get("readOnly", False)
            assert any(e["name"] == "NCCL_DEBUG" for e in trainer["env"])


@pytest.mark.parametrize("overlay", TRAIN_OVERLAYS)
def test_gpus_match_ranks_and_cpu_variants_have_none(overlay: str):
    job = job_of(rendered(overlay))
    if job["kind"] == "PyTorchJob":
        nproc = job["spec"]["nprocPerNode"]
        limits = [c["resources"]["limits"] for c in _containers(job)]
    else:
        nproc = str(job["spec"]["trainer"]["numProcPerNode"])
        limits = [job["spec"]["trainer"]["resourcesPerNode"]["limits"]]
    gpus = {lim.get("nvidia.com/gpu") for lim in limits}
    if "cpu" in overlay:
        assert gpus == {None} and nproc == "1"
        assert all("tolerations" not in s for o in rendered(overlay) for s in pod_specs(o))
    else:
        assert gpus == {nproc}, "one rank per GPU: nprocPerNode must equal the GPU limit"


@pytest.mark.parametrize("overlay", TRAIN_OVERLAYS)
def test_pods_run_locked_down(overlay: str):
    for obj in rendered(overlay):
        for spec in pod_specs(obj):
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
            assert pod["seccompProfile"]["type"] == "RuntimeDefault"
            assert spec["automountServiceAccountToken"] is False
            assert spec["serviceAccountName"] == "metarec-trainer"
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert "privileged" not in sc


def test_failure_policies():
    """Which exit code restarts what is tested by killing real ranks in
    tests/reliability/test_restart_policy.py; here: the fields it relies on, in every variant."""
    for overlay in TRAIN_OVERLAYS:
        for obj in rendered(overlay):
            if obj["kind"] == "PyTorchJob":
                run = obj["spec"]["runPolicy"]
                assert run["backoffLimit"] >= 1 and run["cleanPodPolicy"] in ("Running", "All")
                assert run["ttlSecondsAfterFinished"] > 0
                for spec in obj["spec"]["pytorchReplicaSpecs"].values():
                    assert spec["restartPolicy"] == "ExitCode"  # 128-255 restart, 2 fails
            if obj["kind"] == "TrainingRuntime":
                jobset = obj["spec"]["template"]["spec"]
                assert jobset["failurePolicy"]["maxRestarts"] >= 1
                (rule,) = jobset["failurePolicy"]["rules"]
                assert (rule["action"], rule["onJobFailureReasons"]) == (
                    "FailJobSet", ["PodFailurePolicy"])  # fmt: skip
                (node,) = jobset["replicatedJobs"]
                (fail_fast,) = node["template"]["spec"]["podFailurePolicy"]["rules"]
                assert fail_fast["action"] == "FailJob"
                assert fail_fast["onExitCodes"] == {
                    "containerName": "node", "operator": "In", "values": [2]}  # fmt: skip


def _pod_security(obj: dict) -> list[tuple[dict, list[dict]]]:
    """(pod securityContext, container securityContexts) of every pod template of ``obj``."""
    if obj["kind"] == "SparkApplication":
        roles = [obj["spec"][role] for role in ("driver", "executor")]
        return [(r["podSecurityContext"], [r.get("securityContext", {})]) for r in roles]
    return [(s["securityContext"], [c.get("securityContext", {}) for c in s["containers"]])
            for s in pod_specs(obj)]  # fmt: skip


def test_every_pod_runs_as_10001_with_fs_group_10001():
    """Both images run as 10001:10001 and write the same run folders; fsGroup makes the PVCs
    group-writable to that group in every pod (PyTorchJob, TrainingRuntime, Spark driver and
    executors)."""
    kinds = set()
    for overlay, obj in all_objects():
        for pod, containers in _pod_security(obj):
            kinds.add(obj["kind"])
            where = (overlay, obj["kind"], obj["metadata"]["name"])
            assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (UID, UID, UID), where
            for sc in containers:
                assert sc.get("runAsUser", UID) == sc.get("runAsGroup", UID) == UID, where
    assert kinds == {"PyTorchJob", "TrainingRuntime", "SparkApplication"}


def test_scheduling_variants():
    elastic = job_of(rendered("pytorchjob-elastic"))
    assert set(elastic["spec"]["pytorchReplicaSpecs"]) == {"Worker"}
    policy = elastic["spec"]["elasticPolicy"]
    assert policy["rdzvBackend"] == "c10d" and policy["minReplicas"] <= policy["maxReplicas"]
    volcano = job_of(rendered("pytorchjob-volcano"))
    assert volcano["spec"]["runPolicy"]["schedulingPolicy"]["queue"] == "metarec"
    for overlay in ("pytorchjob-kueue", "trainjob-kueue"):
        assert job_of(rendered(overlay))["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    runtime = next(o for o in rendered("trainjob-volcano") if o["kind"] == "TrainingRuntime")
    assert runtime["spec"]["podGroupPolicy"] == {"volcano": {}}


def test_references_resolve_to_the_setup_overlay():
    setup = {(o["kind"], o["metadata"]["name"]) for o in rendered("setup")}
    for overlay, obj in all_objects():
        for spec in pod_specs(obj):
            assert ("ServiceAccount", spec["serviceAccountName"]) in setup
            for vol in spec["volumes"]:
                if "persistentVolumeClaim" in vol:
                    claim = vol["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in setup, (overlay, claim)
        if obj["kind"] == "SparkApplication":
            assert ("ServiceAccount", obj["spec"]["driver"]["serviceAccount"]) in setup
            claims = [v["persistentVolumeClaim"]["claimName"] for v in obj["spec"]["volumes"]
                      if "persistentVolumeClaim" in v]  # fmt: skip
            assert claims and all(("PersistentVolumeClaim", c) in setup for c in claims)


def test_no_secrets_in_manifests():
    for overlay, obj in all_objects():
        assert obj["kind"] != "Secret", overlay
        assert inline_secret_errors(obj) == [], overlay
    text = "\n".join(p.read_text() for p in MANIFESTS.rglob("*") if p.is_file())
    assert not re.search(r"(?i)(aws_secret_access_key|password|token)\s*[:=]\s*\S{8,}", text)
    refs = re.findall(r"secretRef:\s*\n\s*name: (\S+)\s*\n\s*optional: (\S+)", text)
    assert refs and all(r == ("metarec-object-store", "true") for r in refs)


def test_inline_secret_check_can_fail():
    pod = {"containers": [{"name": "a", "env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}]}
    assert inline_secret_errors({"kind": "Pod", "spec": pod})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_scenario_says_what_it_runs_and_how_to_apply_inspect_delete(overlay: str):
    header = (
        (MANIFESTS / "overlays" / overlay / "kustomization.yaml").read_text().split("apiVersion")[0]
    )
    assert header.startswith("# Scenario:")
    assert f"kubectl apply -k manifests/overlays/{overlay}" in header
    assert f"kubectl delete -k manifests/overlays/{overlay}" in header
    assert "Inspect:" in header
    if overlay != "setup":
        assert "Injects:" in header or "Injects:" in _base_header(overlay)


def _base_header(overlay: str) -> str:
    kind = "pytorchjob" if overlay.startswith("pytorchjob") else overlay.split("-")[0]
    base = {"pytorchjob": "pytorchjob/pytorchjob.yaml", "trainjob": "trainjob/trainjob.yaml",
            "spark": "spark/sparkapplication.yaml"}[kind]  # fmt: skip
    return (MANIFESTS / "base" / base).read_text()


def test_every_manifest_file_starts_with_a_comment():
    for path in MANIFESTS.rglob("*.yaml"):
        assert path.read_text().startswith("#"), f"{path} has no header comment"


def test_smoke_configs_are_the_same_run():
    a = MANIFESTS / "overlays" / "pytorchjob-cpu" / "trainer.toml"
    b = MANIFESTS / "overlays" / "trainjob-cpu" / "trainer.toml"
    assert a.read_text() == b.read_text()


def test_spark_application_runs_the_etl_job_with_valid_arguments():
    from components.etl import command

    (app,) = rendered("spark-etl")
    spec = app["spec"]
    assert spec["mainApplicationFile"] == "local:///opt/metarec/etl_job.py"
    parser = argparse.ArgumentParser()
    command.configure_parser(parser)
    args = parser.parse_args(spec["arguments"])  # the ETL's own parser accepts them
    assert (args.input, args.output) == ("/data/raw", "/data/episodes")
    pins = dict(
        line.split("==") for line in (MANIFESTS.parent / "constraints.txt").read_text().splitlines()
        if "==" in line
    )  # fmt: skip
    assert spec["sparkVersion"] == pins["pyspark"]  # the image's Spark is this pyspark's
    for role in ("driver", "executor"):
        sc = spec[role]["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["allowPrivilegeEscalation"] is False
