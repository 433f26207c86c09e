"""Every overlay renders with kubectl, and the built-in renderer gives exactly the same objects, for
the overlays as they are and for per-run renders with every parameter set."""

from __future__ import annotations

import os
import tomllib

import pytest

from components.launchers.checks import config_maps_referenced
from components.launchers.render import (
    TrainRunParams,
    job_of,
    kubectl_kustomize,
    render_overlay,
    render_run,
    trainer_containers,
)
from components.launchers.render_etl import EtlRunParams, render_etl_run
from tests.manifests.conftest import MANIFESTS, OVERLAYS, TRAIN_OVERLAYS

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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_kubectl_and_builtin_renderer_agrees(kubectl: str, overlay: str):
    path = MANIFESTS / "overlays" / overlay
    by_kubectl = kubectl_kustomize(path)
    assert by_kubectl, f"{overlay} renders nothing"
    assert render_overlay(overlay, engine="python") == by_kubectl  # same objects, same order


@pytest.mark.parametrize("variant", TRAIN_OVERLAYS)
def test_run_render_engines_agree(kubectl: str, variant: str):
    params = _params(variant, nodes=4 if "elastic" not in variant else 3)
    assert render_run(params, engine="python") == render_run(params, engine="kubectl")


def test_run_render_with_digest_and_defaults_agree(kubectl: str):
    params = TrainRunParams(
        run_id="x1", variant="trainjob-gpu", image="reg.io/metarec-trainer@sha256:" + "a" * 64
    )
    objs = render_run(params, engine="python")
    assert objs == render_run(params, engine="kubectl")
    assert job_of(objs)["spec"]["trainer"]["image"] == "reg.io/metarec-trainer@sha256:" + "a" * 64


@pytest.mark.parametrize("variant", TRAIN_OVERLAYS)
def test_run_parameters_land_where_the_operator_reads_them(variant: str):
    params = _params(variant, nodes=4)
    objs = render_run(params, engine="python")
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
    before = render_run(params, engine="python")
    for key in list(os.environ):
        if key != "PATH":
            monkeypatch.delenv(key)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.chdir(MANIFESTS.parent.parent)
    assert render_run(params, engine="python") == before


def test_config_file_data_path_is_kept_when_no_override():
    params = TrainRunParams(
        run_id="a", variant="pytorchjob-cpu", config_toml='[data]\npath = "s3://b/episodes/i1"\n'
    )
    (_, _, container), *_ = trainer_containers(job_of(render_run(params, engine="python")))
    assert "data.path=s3://b/episodes/i1" in container["args"]


def test_a_quoted_absolute_data_path_is_accepted():
    """Overrides are TOML literals: ``data.path="/abs"`` is as absolute as ``data.path=/abs``."""
    params = _params("pytorchjob-cpu", overrides=('data.path="/data/episodes/i1"',))
    (_, _, container), *_ = trainer_containers(job_of(render_run(params, engine="python")))
    assert 'data.path="/data/episodes/i1"' in container["args"]


def test_without_gpus_the_limit_goes():
    job = job_of(render_run(_params("trainjob-gpu", gpus_per_node=0), engine="python"))
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
        render_run(_params(**{"variant": "pytorchjob-gpu", **kw}), engine="python")


def test_etl_run_render(kubectl: str):
    params = EtlRunParams(
        run_id="i2026110100",
        input="/data/raw",
        output="/data/episodes",
        start="2026-11-01T00",
        end="2026-11-02T00",
        extra_args=("--task-key", "advertiser_id"),
        image="reg.io/metarec-components:1.2.3",
        executors=6,
        executor_memory="8g",
    )
    objs = render_etl_run(params, engine="python")
    assert objs == render_etl_run(params, engine="kubectl")
    (app,) = objs
    assert app["metadata"]["name"] == "metarec-etl-i2026110100"
    assert app["spec"]["image"] == "reg.io/metarec-components:1.2.3"
    assert app["spec"]["arguments"][-2:] == ["--task-key", "advertiser_id"]
    assert (app["spec"]["executor"]["instances"], app["spec"]["executor"]["memory"]) == (6, "8g")
    with pytest.raises(ValueError, match="absolute path"):
        EtlRunParams(run_id="a", input="raw", output="/o", start="s", end="e")


def test_overlay_configs_are_valid_trainer_configs():
    from trainer.config import load_trainer_config

    for toml_file in MANIFESTS.rglob("*.toml"):
        tomllib.loads(toml_file.read_text())
        load_trainer_config(toml_file, ["data.path=/data/episodes"])  # unknown keys raise
