"""Every overlay renders with kustomize (``kubectl kustomize``, always installed: the ``test`` extra
brings it), and per-run renders put every parameter where the operators read it."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import tomllib
from functools import cache
from typing import Any

import pytest

from components.launchers.checks import config_maps_referenced, require_valid
from components.launchers.render import (
    TrainRunParams,
    job_of,
    render_run,
    trainer_containers,
)
from components.launchers.render_etl import EtlRunParams, render_etl_run
from tests.manifests.conftest import MANIFESTS, OVERLAYS, TRAIN_OVERLAYS, rendered

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
CONFIG = (
    '[data]\nbatch_episodes = 4\n\n[train]\nsteps = 3  # "quotes" & <html> chars hash as Go does\n'
)


def _params(variant: str = "pytorchjob-gpu", **kw) -> TrainRunParams:
    base = dict(
        run_id="r20261101",
        variant=variant,
        namespace="ml-team",
        image="registry.example.com/ml/metarec-trainer:1.2.3",
        config_toml=CONFIG,
        overrides=("data.path=/data/episodes/interval=2026110100-2026110200", "train.steps=7"),
        nodes=3,
        nproc_per_node=1,
        gpus_per_node=1,
        labels={"metarec.io/pipeline": "daily"},
    )
    return TrainRunParams(**{**base, **kw})


@cache
def _four_node_render(variant: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_run(_params(variant, nodes=4)))


def four_node_run(variant: str) -> list[dict[str, Any]]:
    """``render_run`` of ``_params(variant, nodes=4)``, rendered once for the two tests that read
    it (a fresh copy per call)."""
    return copy.deepcopy(list(_four_node_render(variant)))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_with_kustomize(overlay: str):
    objs = rendered(overlay)
    assert objs, f"{overlay} renders nothing"
    for obj in objs:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == "metarec", (overlay, obj["metadata"]["name"])
    job_kinds = [o["kind"] for o in objs if o["kind"] in ("TrainingRuntime", "TrainJob")]
    assert job_kinds in ([], ["TrainingRuntime", "TrainJob"])  # the runtime is applied first


@pytest.mark.parametrize("variant", TRAIN_OVERLAYS)
def test_run_render_keeps_the_overlays_order(variant: str):
    kinds = [o["kind"] for o in four_node_run(variant)]
    expected = ["ConfigMap", "TrainingRuntime", "TrainJob"] if "trainjob" in variant else None
    assert kinds == (expected or ["ConfigMap", "PyTorchJob"])


def test_the_trainer_config_name_follows_its_content():
    """kustomize names the run's ConfigMap by a hash of its data: a retried run (same config)
    re-renders the same name, another config gets another one."""

    def config_map_name(config: str) -> str:
        objs = render_run(_params("pytorchjob-cpu", config_toml=config))
        (config_map,) = [o for o in objs if o["kind"] == "ConfigMap"]
        assert config_maps_referenced(job_of(objs)) == {config_map["metadata"]["name"]}
        return config_map["metadata"]["name"]

    first = config_map_name(CONFIG)
    assert re.fullmatch(r"metarec-trainer-config-[-a-z]*r20261101-[a-z0-9]{10}", first)
    assert config_map_name(CONFIG) == first
    assert config_map_name(CONFIG.replace("steps = 3", "steps = 4")) != first


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("reg.io/metarec-trainer:1.2.3", "reg.io/metarec-trainer:1.2.3"),
        ("reg.io:5000/ml/metarec-trainer", "reg.io:5000/ml/metarec-trainer:<overlay's tag>"),
        (
            "reg.io:5000/ml/trainer:2@sha256:" + "a" * 64,
            "reg.io:5000/ml/trainer@sha256:" + "a" * 64,
        ),
    ],
)
def test_the_image_parameter_reaches_every_trainer_container(image: str, expected: str):
    """A tag replaces the overlay's; no tag keeps it; a digest wins over a tag."""
    (_, _, overlay_container), *_ = trainer_containers(job_of(rendered("trainjob-gpu")))
    tag = overlay_container["image"].rpartition(":")[2]
    job = job_of(render_run(TrainRunParams(run_id="x1", variant="trainjob-gpu", image=image)))
    expected = expected.replace("<overlay's tag>", tag)
    assert [c["image"] for _, _, c in trainer_containers(job)] == [expected]


@pytest.mark.parametrize("variant", TRAIN_OVERLAYS)
def test_run_parameters_land_where_the_operator_reads_them(variant: str):
    objs = four_node_run(variant)
    job = job_of(objs)
    name = job["metadata"]["name"]
    assert name.endswith("-r20261101")
    for obj in objs:
        assert obj["metadata"]["namespace"] == "ml-team"
        assert obj["metadata"]["labels"]["metarec.io/run-id"] == "r20261101"
        assert obj["metadata"]["labels"]["metarec.io/pipeline"] == "daily"
    (config_map,) = [o for o in objs if o["kind"] == "ConfigMap"]
    assert config_map["data"] == {"trainer.toml": CONFIG}
    refs = set().union(*(config_maps_referenced(o) for o in objs))
    assert refs == {config_map["metadata"]["name"]}  # the hash-suffixed name reached the pods
    for _, _, container in trainer_containers(job):
        assert container["image"] == "registry.example.com/ml/metarec-trainer:1.2.3"
        args = container["args"]
        assert args[:4] == ["-m", "trainer", "--config", "/etc/metarec/trainer.toml"]
        assert "data.path=/data/episodes/interval=2026110100-2026110200" in args
        assert f"train.output_dir=/runs/{name}" in args
        assert args[-1] == "train.steps=7"
        assert len([a for a in args if a.startswith("data.path=")]) == 1
    if job["kind"] == "PyTorchJob":
        replicas = job["spec"]["pytorchReplicaSpecs"]
        workers = 4 - (1 if "Master" in replicas else 0)
        assert replicas["Worker"]["replicas"] == workers
        assert job["spec"]["nprocPerNode"] == "1"
        for spec in replicas.values():
            limits = spec["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == "1"
        if "elasticPolicy" in job["spec"]:
            assert job["spec"]["elasticPolicy"]["maxReplicas"] >= workers
            assert "checkpoint.reshard=true" in args  # the overlay's own arg survives
    else:
        trainer = job["spec"]["trainer"]
        assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 1)
        assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
        (runtime,) = [o for o in objs if o["kind"] == "TrainingRuntime"]
        assert job["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
        assert runtime["metadata"]["name"].endswith("-r20261101")


def test_run_render_reads_nothing_from_the_rendering_machine(monkeypatch: pytest.MonkeyPatch):
    params = _params("pytorchjob-gpu")
    before = render_run(params)
    for key in list(os.environ):
        if key != "PATH":
            monkeypatch.delenv(key)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.chdir(MANIFESTS.parent.parent)
    assert render_run(params) == before


def test_config_file_data_path_is_kept_when_no_override():
    params = TrainRunParams(
        run_id="a", variant="pytorchjob-cpu", config_toml='[data]\npath = "s3://b/episodes/i1"\n'
    )
    (_, _, container), *_ = trainer_containers(job_of(render_run(params)))
    assert "data.path=s3://b/episodes/i1" in container["args"]


def test_a_quoted_absolute_data_path_is_accepted():
    """Overrides are TOML literals: ``data.path="/abs"`` is as absolute as ``data.path=/abs``."""
    params = _params("pytorchjob-cpu", overrides=('data.path="/data/episodes/i1"',))
    (_, _, container), *_ = trainer_containers(job_of(render_run(params)))
    assert 'data.path="/data/episodes/i1"' in container["args"]


def test_without_gpus_the_limit_goes():
    job = job_of(
        render_run(
            _params("trainjob-gpu", gpus_per_node=0),
        )
    )
    assert "nvidia.com/gpu" not in job["spec"]["trainer"]["resourcesPerNode"]["limits"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"variant": "pytorchjob-tpu"}, "no overlay 'pytorchjob-tpu'"),
        ({"run_id": "R1"}, "lowercase"),
        ({"run_id": "a" * 40}, "at most 50"),
        ({"overrides": ("data.path=out/episodes",)}, "relative"),
        ({"overrides": ('data.path="out/episodes"',)}, "relative"),
        ({"overrides": ("steps=3",)}, "section.key=value"),
        ({"nodes": 1}, "nodes must be >= 2"),
        ({"nodes": 0}, "nodes must be >= 1"),
        ({"config_toml": "[data\n"}, "not valid TOML"),
    ],
)
def test_bad_parameters_are_refused_with_the_reason(kw: dict, message: str):
    with pytest.raises(ValueError, match=message):
        render_run(_params(**{"variant": "pytorchjob-gpu", **kw}))


def test_etl_run_carries_what_the_dispatch_needs():
    params = EtlRunParams(
        run_id="20261101t00-20261102t00-5e1c",
        input="/data/raw",
        output="/data/episodes",
        start="2026-11-01T00",
        end="2026-11-02T00",
        extra_args=("--task-key", "advertiser_id"),
        namespace="ml-team",
        image="reg.io/metarec-components@sha256:" + "b" * 64,
        executors=6,
        executor_memory="8g",
        labels={"metarec.io/dag-run": "scheduled-2026-11-02"},
    )
    (app,) = render_etl_run(params)
    assert render_etl_run(params) == [app]  # a retried task renders the same application
    meta, spec = app["metadata"], app["spec"]
    assert meta["name"] == params.name == "metarec-etl-20261101t00-20261102t00-5e1c"
    assert meta["namespace"] == "ml-team"
    assert meta["labels"]["metarec.io/run-id"] == "20261101t00-20261102t00-5e1c"
    assert meta["labels"]["metarec.io/dag-run"] == "scheduled-2026-11-02"
    assert spec["image"] == "reg.io/metarec-components@sha256:" + "b" * 64
    assert spec["arguments"] == ["--input", "/data/raw", "--output", "/data/episodes",
                                 "--start", "2026-11-01T00", "--end", "2026-11-02T00",
                                 "--task-key", "advertiser_id"]  # fmt: skip
    assert (spec["executor"]["instances"], spec["executor"]["memory"]) == (6, "8g")
    assert spec["driver"]["memory"] == "2g"  # the overlay's, not set by this run


def test_spark_pods_run_as_the_shared_user_with_a_read_only_root():
    """Both images run as 10001:10001 and write the same run folders: the pods say so, and the
    volumes are group-owned by 10001 (fsGroup); Spark writes only to its emptyDirs."""
    (app,) = rendered("spark-etl")
    spec = app["spec"]
    for role in ("driver", "executor"):
        pod = spec[role]
        security = pod["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"]) == (10001, 10001), role
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"], role
        assert pod["podSecurityContext"]["fsGroup"] == 10001, role
        mounts = {m["mountPath"]: m["name"] for m in pod["volumeMounts"]}
        assert {"/data", "/tmp", "/opt/metarec/work"} <= set(mounts), role
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert all("emptyDir" in volumes[n] for n in ("spark-local-dir-1", "tmp", "work"))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"input": "raw"}, "absolute path"),
        ({"start": "2026-11-01"}, "YYYY-MM-DDTHH"),
        ({"executors": 0}, "executors must be >= 1"),
    ],
)
def test_bad_etl_parameters_are_refused_with_the_reason(kw: dict, message: str):
    base = {"input": "/data/raw", "output": "/o", "start": "2026-11-01T00", "end": "2026-11-01T01"}
    with pytest.raises(ValueError, match=message):
        EtlRunParams(run_id="r1", **{**base, **kw})


def test_an_etl_run_id_too_long_for_a_label_is_refused():
    with pytest.raises(ValueError, match="longer than 63"):
        EtlRunParams("r" * 60, "/i", "/o", "2026-11-01T00", "2026-11-01T01")


def test_overlay_configs_are_valid_trainer_configs():
    from trainer.config import load_trainer_config

    for toml_file in MANIFESTS.rglob("*.toml"):
        tomllib.loads(toml_file.read_text())
        load_trainer_config(toml_file, ["data.path=/data/episodes"])  # unknown keys raise


@pytest.mark.parametrize("variant", ["pytorchjob-gpu", "trainjob-gpu", "spark-etl"])
def test_data_mount_moves_every_mount_of_the_data_volume_and_nothing_else(variant: str):
    """The delivery flow mounts the data volume where its worker sees it (``data_mount``)."""
    if variant == "spark-etl":
        kw = dict(input="/mnt/ads/raw", output="/mnt/ads/episodes", start="2026-11-01T00",
                  end="2026-11-01T01")  # fmt: skip
        before = render_etl_run(EtlRunParams("r1", **kw))
        after = render_etl_run(EtlRunParams("r1", **kw, data_mount="/mnt/ads"))
    else:
        params = TrainRunParams("r1", variant, overrides=("data.path=/mnt/ads/e",))
        before = render_run(params)
        after = render_run(dataclasses.replace(params, data_mount="/mnt/ads"))

    def mounts(objs):
        found = []

        def walk(node):
            if isinstance(node, dict):
                found.extend(node.get("volumeMounts", []))
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(objs)
        return found

    moved = [m for m in mounts(after) if m["name"] == "data"]
    assert moved and all(m["mountPath"] == "/mnt/ads" for m in moved)
    assert [m for m in mounts(after) if m["name"] != "data"] == [
        m for m in mounts(before) if m["name"] != "data"
    ]
    with pytest.raises(ValueError, match="is not on a volume"):
        require_valid(before)  # /mnt/ads is no mount of the overlay's pods
    require_valid(after)


@pytest.mark.parametrize("mount", ["data", "/tmp", "/etc/metarec/"])
def test_a_data_mount_that_would_hide_the_images_paths_is_refused(mount: str):
    with pytest.raises(ValueError, match="data_mount"):
        TrainRunParams("r1", "pytorchjob-gpu", data_mount=mount)
