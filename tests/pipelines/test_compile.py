"""The pipeline compiles, its committed YAML is current, and the IR carries what the cluster needs."""

from __future__ import annotations

import yaml

from pipelines import compile as compile_module


def test_committed_yaml_matches_a_fresh_compile():
    assert compile_module.stale() == [], "run `python -m pipelines.compile` and commit the YAML"


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


def test_ir_has_typed_artifacts_the_gate_condition_and_no_cache_on_side_effects():
    spec, platform = _compiled()
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
    conditions = [
        t.get("triggerPolicy", {}).get("condition", "")
        for c in comps.values()
        for t in c.get("dag", {}).get("tasks", {}).values()
    ]
    assert any("gate-promote" in c and "== true" in c for c in conditions)
    tasks = spec["root"]["dag"]["tasks"]
    cached = {n for n, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"resolve-run"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {
        "interval_start",
        "interval_end",
        "raw_root",
        "run_root",
        "base_config",
        "model_arch",
        "meta_mode",
        "inner_lr",
        "train_steps",
    } <= set(params)
    # kfp-kubernetes: every task mounts the data PVC; training runs on the GPU pool.
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["pvcMount"][0]["constant"] == "metarec-data" for e in executors.values())
    train = executors["exec-train"]
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_no_component_installs_packages_at_run_time():
    spec, _ = _compiled()
    for name, ex in spec["deploymentSpec"]["executors"].items():
        command = " ".join(ex["container"]["command"])
        assert "pip install" not in command, name
        assert ex["container"]["image"].startswith("metarec-"), name
