"""The pipeline compiles, its committed YAML is current, and the IR carries what the cluster needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from pipelines import compile as compile_module

REPO = Path(__file__).resolve().parents[2]


def test_committed_yaml_matches_a_fresh_compile():
    """In a fresh interpreter: building the pipeline calls ``inspect.stack()`` (kfp, per task
    setting), whose first use walks every loaded module, thousands in a test worker (~10 s)."""
    check = [sys.executable, "-m", "pipelines.compile", "--check"]
    done = subprocess.run(check, capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr  # "<file> is stale: run `python -m pipelines.compile`"


def test_normalisation_ignores_only_version_noise():
    a = "sdkVersion: kfp-2.17.0\nroot: {x: 'pip install kfp==2.17.0'}\n"
    b = "sdkVersion: kfp-2.18.1\nroot: {x: 'pip install kfp==2.18.1'}\n"
    assert compile_module.normalized(a) == compile_module.normalized(b)
    assert compile_module.normalized(a) != compile_module.normalized(a.replace("root", "rot"))


def _compiled() -> tuple[dict, dict]:
    docs = list(
        yaml.safe_load_all((compile_module.COMPILED / "training_pipeline.yaml").read_text())
    )
    return docs[0], docs[1]


def test_ir_has_typed_artifacts_the_gate_condition_and_no_cache():
    spec, _ = _compiled()
    comps = spec["components"]
    artifacts = {
        a["artifactType"]["schemaTitle"]
        for c in comps.values()
        for a in c.get("outputDefinitions", {}).get("artifacts", {}).values()
    }
    assert {
        "system.Dataset",
        "system.Model",
        "system.Metrics",
        "system.ClassificationMetrics",
        "system.Markdown",
    } <= artifacts
    conditions = [t.get("triggerPolicy", {}).get("condition", "") for t in _tasks(spec).values()]
    assert any("gate-promote" in c and "== true" in c for c in conditions)
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in _tasks(spec).values())


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline, in any DAG (the root and the condition branches)."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return {name: t for d in dags for name, t in d["tasks"].items()}


def test_parameters_are_typed_described_and_optional_only_where_unset_means_the_config():
    spec, _ = _compiled()
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert all(p.get("description") for p in params.values()), "add it to the Args: docstring"
    assert "base_config" not in params
    types = {name: p["parameterType"] for name, p in params.items()}
    assert types["backend"] == types["gate_metric"] == types["delivery_config"] == "STRING"
    assert types["nproc"] == types["interval_hours"] == types["train_steps"] == "NUMBER_INTEGER"
    assert types["gate_tolerance"] == types["inner_lr"] == "NUMBER_DOUBLE"
    unset = {name for name, p in params.items() if "defaultValue" not in p}
    assert unset == {
        "interval_start",
        "interval_end",
        "model_arch",
        "embedding_dim",
        "meta_mode",
        "inner_steps",
        "inner_lr",
        "train_steps",
        "delivery_config",
    }
    assert all(params[name]["isOptional"] for name in unset)
    defaults = {name: p["defaultValue"] for name, p in params.items() if name not in unset}
    assert defaults["backend"] == "local" and defaults["nproc"] == 1
    assert defaults["gate_metric"] == "test_cold.after.auc"


def test_the_interval_comes_from_the_scheduled_time_placeholder():
    from kfp import dsl

    spec, _ = _compiled()
    resolve = spec["root"]["dag"]["tasks"]["resolve-run"]["inputs"]["parameters"]
    value = resolve["schedule_time"]["runtimeValue"]["constant"]
    assert value == dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER
    assert value == "{{$.pipeline_job_schedule_time_utc}}"
    assert resolve["interval_start"] == {"componentInputParameter": "interval_start"}


def _executors(spec: dict) -> dict[str, str]:
    """Container task name -> its executor label."""
    comps = spec["components"]
    return {
        name: comps[t["componentRef"]["name"]]["executorLabel"]
        for name, t in _tasks(spec).items()
        if "executorLabel" in comps[t["componentRef"]["name"]]
    }


def test_every_task_input_is_declared_by_the_dag_around_it():
    """A pipeline parameter read only by a resource field (the GPU count) must still be passed
    into the dsl.If groups around its task: kfp 2.17 compiles a dangling reference otherwise,
    which fails only at run time."""
    spec, _ = _compiled()
    dags = {"root": spec["root"]} | {n: c for n, c in spec["components"].items() if "dag" in c}
    for name, component in dags.items():
        declared = set(component.get("inputDefinitions", {}).get("parameters", {}))
        for task, t in component["dag"]["tasks"].items():
            for p in t.get("inputs", {}).get("parameters", {}).values():
                if "componentInputParameter" in p:
                    assert p["componentInputParameter"] in declared, (name, task, p)


def test_only_the_task_that_trains_in_its_pod_asks_for_gpus():
    spec, platform = _compiled()
    containers = {n: e["container"] for n, e in spec["deploymentSpec"]["executors"].items()}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    executor = _executors(spec)
    assert [t for t, e in executor.items() if "accelerator" in containers[e]["resources"]] == [
        "train"
    ]
    gpus = containers[executor["train"]]["resources"]["accelerator"]["resourceCount"]
    assert gpus == "{{$.inputs.parameters['pipelinechannel--nproc']}}"
    assert k8s[executor["train"]]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert k8s[executor["train"]]["tolerations"][0]["key"] == "nvidia.com/gpu"
    # The launcher: the same component (and image), on the CPU pool.
    launcher = executor["train-2"]
    assert containers[launcher]["image"] == containers[executor["train"]]["image"]
    assert k8s[launcher]["nodeSelector"]["labels"] == {"metarec.io/pool": "cpu"}
    # The GPU task runs when backend is "local", the launcher otherwise.
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conditions = {
        next(iter(spec["components"][t["componentRef"]["name"]]["dag"]["tasks"])): t[
            "triggerPolicy"
        ]["condition"]
        for t in branches.values()
    }
    assert conditions["train"] == "inputs.parameter_values['pipelinechannel--backend'] == 'local'"
    assert conditions["train-2"].startswith("!(") and "== 'local'" in conditions["train-2"]


def test_every_task_has_resources_a_deadline_the_images_user_and_the_data_volume():
    spec, platform = _compiled()
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, ex in spec["deploymentSpec"]["executors"].items():
        r = ex["container"]["resources"]
        for key in ("CpuRequest", "CpuLimit", "MemoryRequest", "MemoryLimit"):
            assert r[f"resource{key}"], (name, key)
        assert int(k8s[name]["activeDeadlineSeconds"]) > 0, name
        assert k8s[name]["securityContext"] == {
            "runAsUser": "10001",
            "runAsGroup": "10001",
            "runAsNonRoot": True,
        }, name
        assert k8s[name]["pvcMount"][0]["constant"] == "metarec-data", name


def test_retries_on_every_task_but_parameter_resolution():
    spec, _ = _compiled()
    tasks = _tasks(spec)
    not_retried = {name for name in _executors(spec) if "retryPolicy" not in tasks[name]}
    assert not_retried == {"resolve-run"}


def test_each_component_runs_on_the_image_that_holds_what_it_imports():
    from pipelines.ops import COMPONENTS_IMAGE, TRAINER_IMAGE

    spec, _ = _compiled()
    images = {
        name.removeprefix("exec-"): ex["container"]["image"]
        for name, ex in spec["deploymentSpec"]["executors"].items()
    }
    torch = {"train", "train-2", "export-model", "evaluate"}
    assert {n for n, image in images.items() if image == TRAINER_IMAGE} == torch
    assert all(images[n] == COMPONENTS_IMAGE for n in set(images) - torch)
    for name, ex in spec["deploymentSpec"]["executors"].items():
        command = " ".join(ex["container"]["command"])
        assert "pip install" not in command, name
