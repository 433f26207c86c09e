"""Rendered objects against what a cluster would check: the CRD schemas (PyTorchJob v1 from
training-operator 1.9.0, TrainJob v2, the TrainingRuntime's podGroupPolicy in every Trainer
release an overlay claims), the operators' webhook rules, and Kubernetes' own schemas for the core
kinds and for every pod template embedded in a job (kubernetes-validate, strict)."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from components.launchers.checks import pod_specs, require_valid, webhook_errors
from components.launchers.render import TrainRunParams, render_run
from tests.manifests.conftest import (
    MANIFESTS,
    OVERLAYS,
    SCHEMAS,
    TRAIN_OVERLAYS,
    all_objects,
    rendered,
)

K8S_VERSION = "1.32.0"  # the kubectl client here; Trainer v2 needs Kubernetes >= 1.31
CORE_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PersistentVolumeClaim"}
CRD_FILES = {
    "PyTorchJob": "kubeflow.org_pytorchjobs.v1.9.0.yaml",
    "TrainJob": "trainer.kubeflow.org_trainjobs.master.yaml",
}


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server does with field validation
    Strict (the default of `kubectl apply`): an object with ``properties`` and no
    ``additionalProperties`` / ``x-kubernetes-preserve-unknown-fields`` gets
    ``additionalProperties: false``. Catches typos that pruning would silently drop."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def validator(kind: str) -> jsonschema.Draft4Validator:
    crd = yaml.safe_load((SCHEMAS / CRD_FILES[kind]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served", True)]
    schema = strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft4Validator(schema)


def crd_errors(obj: dict[str, Any]) -> list[str]:
    errors = validator(obj["kind"]).iter_errors(obj)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@cache
def _run_renders() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for variant in TRAIN_OVERLAYS:
        params = TrainRunParams(
            run_id="r1", variant=variant, nodes=3, nproc_per_node=2, gpus_per_node=2,
            overrides=("data.path=s3://bucket/episodes/interval=2026110100-2026110200",),
            image="reg.io/metarec-trainer:1.0",
        )  # fmt: skip
        out[variant] = render_run(params)
    return out


def overlay_jobs() -> list[dict[str, Any]]:
    """The PyTorchJobs and TrainJobs of every overlay (rendered when a test runs, not at
    collection: every pytest-xdist worker collects this file)."""
    return [o for _, o in all_objects() if o["kind"] in CRD_FILES]


def run_jobs() -> list[dict[str, Any]]:
    """The jobs of a run rendered from each training overlay."""
    return [o for objs in _run_renders().values() for o in objs if o["kind"] in CRD_FILES]


def test_jobs_validate_against_the_crd_schema(crd_schemas: Path):
    jobs = overlay_jobs() + run_jobs()
    assert {j["kind"] for j in jobs} == set(CRD_FILES)
    failed = [(f"{j['kind']}-{j['metadata']['name']}", crd_errors(j)) for j in jobs]
    assert [(name, errors) for name, errors in failed if errors] == []


def test_schema_validation_can_fail(crd_schemas: Path):
    jobs = overlay_jobs()
    job = copy.deepcopy(next(j for j in jobs if j["kind"] == "PyTorchJob"))
    job["spec"]["nprocPerNodes"] = "2"  # typo
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    errors = crd_errors(job)
    assert any("nprocPerNodes" in e for e in errors)
    assert any("replicas" in e and "integer" in e for e in errors)
    trainjob = copy.deepcopy(next(j for j in jobs if j["kind"] == "TrainJob"))
    trainjob["spec"]["trainer"]["numNodes"] = "2"
    assert crd_errors(trainjob)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_pass_the_webhook_rules(overlay: str):
    require_valid(rendered(overlay))


@pytest.mark.parametrize("variant", TRAIN_OVERLAYS)
def test_run_renders_pass_the_webhook_rules(variant: str):
    require_valid(_run_renders()[variant])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_validate_strictly(overlay: str):
    core = [o for o in rendered(overlay) if o["kind"] in CORE_KINDS]
    for obj in core:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", TRAIN_OVERLAYS)
def test_embedded_pod_templates_validate_as_core_pod_templates(overlay: str):
    """The CRD schemas of the jobs embed a PodTemplateSpec but do not refuse unknown fields in
    it; Kubernetes' own PodTemplate schema (strict) does."""
    objs = rendered(overlay)
    specs = [s for o in objs for s in pod_specs(o)]
    assert specs
    for spec in specs:
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                    "template": {"spec": spec}}  # fmt: skip
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)


def test_spark_pods_validate_as_core_pod_templates():
    """spark-operator builds the driver and executor pods from these fields (podSecurityContext,
    securityContext, env, mounts, volumes): Kubernetes' own schemas, strict, catch a typo there."""
    (app,) = rendered("spark-etl")
    spec = app["spec"]
    for role in ("driver", "executor"):
        pod = spec[role]
        container = {"name": f"spark-{role}", "image": spec["image"]}
        container.update({k: pod[k] for k in ("securityContext", "envFrom", "volumeMounts")})
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role},
                    "template": {"spec": {"securityContext": pod["podSecurityContext"],
                                          "containers": [container],
                                          "volumes": spec["volumes"]}}}  # fmt: skip
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)


def test_core_validation_can_fail():
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
             "template": {"spec": {"containers": [{"name": "a", "imagePullPolicy": "Sometimes",
                                                   "image": "x", "volumeMount": []}]}}},
            K8S_VERSION, strict=True,
        )  # fmt: skip


# Trainer v2 releases, oldest first; an overlay works from its NEEDS entry on (v2.0 by default).
TRAINER_RELEASES = ("v2.0", "v2.1", "v2.2", "v2.3")
NEEDS = {"trainjob-volcano": "v2.1"}
PODGROUP_SCHEMAS = Path(__file__).with_name("trainer_podgrouppolicy.yaml")


@cache
def podgroup_validator(release: str) -> jsonschema.Draft4Validator:
    schema = yaml.safe_load(PODGROUP_SCHEMAS.read_text())[release]
    return jsonschema.Draft4Validator(strict(schema))


def podgroup_errors(runtime: dict[str, Any], release: str) -> list[str]:
    """Errors of the runtime's ``spec.podGroupPolicy`` against the CRD of ``release``."""
    policy = runtime["spec"].get("podGroupPolicy", {})
    errors = podgroup_validator(release).iter_errors(policy)
    return ["/".join(["podGroupPolicy", *map(str, e.absolute_path)]) + f": {e.message}"
            for e in errors]  # fmt: skip


def _runtime(overlay: str) -> dict[str, Any]:
    (runtime,) = [o for o in rendered(overlay) if o["kind"] == "TrainingRuntime"]
    return runtime


@pytest.mark.parametrize("overlay", [o for o in TRAIN_OVERLAYS if o.startswith("trainjob")])
def test_runtimes_fit_every_trainer_release_their_overlay_claims(overlay: str):
    first = NEEDS.get(overlay, TRAINER_RELEASES[0])
    for release in TRAINER_RELEASES[TRAINER_RELEASES.index(first) :]:
        assert podgroup_errors(_runtime(overlay), release) == [], release
    if overlay in NEEDS:  # and the overlay says so where a user reads it
        header = (MANIFESTS / "overlays" / overlay / "kustomization.yaml").read_text()
        assert f"Needs Kubeflow Trainer >= {first}" in header


def test_the_volcano_overlay_needs_trainer_2_1():
    """D9: spec.podGroupPolicy.volcano is not in the v2.0 CRD; the API server refuses it there."""
    runtime = _runtime("trainjob-volcano")
    assert podgroup_errors(runtime, "v2.0") == [
        "podGroupPolicy: Additional properties are not allowed ('volcano' was unexpected)"
    ]
    assert [podgroup_errors(runtime, r) for r in ("v2.1", "v2.2", "v2.3")] == [[], [], []]


def test_webhook_rules_hold_for_every_job_object():
    for _, obj in all_objects():
        assert webhook_errors(obj) == [], obj["metadata"]["name"]
