"""The server's image and its InferenceService, without a cluster: the Dockerfile (hadolint, pinned
base, the shared non-root user, the serving extra and pins), its constraints kept equal to the
dev pins but for the two that kserve needs older, and the ``serving`` overlay rendered by
kustomize, checked field by field against KServe's own API models (unknown fields refused), its
pod against Kubernetes' schemas (strict), and its arguments against the server's parser.
``tests/images/test_serve_image.py`` runs the entry point in the image's environment."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests.images.dockerfile import IMAGES, copies, exec_form, instructions, pip_install, stages
from tests.manifests.conftest import MANIFESTS, rendered

REPO = MANIFESTS.parent
DOCKERFILE = IMAGES["serve"]
OVERRIDES = {"psutil", "python-dateutil"}
"""Pins of components/serve/constraints.txt that differ from constraints.txt (kserve 0.21 needs
psutil<6 and python-dateutil<3; Airflow 3 in the dev venv needs psutil>=6.1)."""


def _pins(path: Path) -> dict[str, str]:
    return dict(line.split("==", 1) for line in path.read_text().splitlines()
                if "==" in line and not line.startswith("#"))  # fmt: skip


def _final() -> list[tuple[str, str]]:
    return stages(instructions(DOCKERFILE))["final"]


def test_serving_pins_are_the_dev_pins_but_two():
    dev, serve = _pins(REPO / "constraints.txt"), _pins(DOCKERFILE.with_name("constraints.txt"))
    assert dev.keys() == serve.keys() and "kserve" in dev
    assert {k for k in dev if dev[k] != serve[k]} == OVERRIDES
    assert serve["psutil"].startswith("5.") and serve["python-dateutil"].startswith("2.")


def test_dockerfile_builds_the_server_as_the_other_images_do():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if Path(hadolint).exists():
        proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    text = DOCKERFILE.read_text()
    trainer_base = re.search(r"ARG PYTHON_IMAGE=(\S+)", (REPO / "trainer/Dockerfile").read_text())
    assert trainer_base and f"ARG PYTHON_IMAGE={trainer_base.group(1)}" in text  # same base
    final = _final()
    install = pip_install(final)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {"trainer", "serving"} <= set(install.extras) <= set(extras["optional-dependencies"])
    assert (["components/serve/constraints.txt"], install.constraints) in copies(final)
    assert [r for w, r in final if w == "USER"][-1] == "10001:10001"
    run = " ".join(r for w, r in final if w == "RUN")
    assert "groupadd --gid 10001 " in run and "useradd --uid 10001 --gid 10001 " in run
    assert exec_form(final, "ENTRYPOINT") == ["python", "-m", "components.serve"]
    from components.serve.server import build_parser

    args = build_parser().parse_args(exec_form(final, "CMD"))
    assert (args.model_dir, args.model_name) == ("/mnt/models", "metarec")


def _check_fields(value: Any, type_name: str, where: str) -> list[str]:
    """Unknown fields of ``value`` against the OpenAPI model ``type_name`` (kserve's v1beta1 or
    Kubernetes' own classes: what the API server's structural schema would keep)."""
    import kserve.models
    import kubernetes.client.models

    if type_name.startswith("list["):
        return [e for i, v in enumerate(value) for e in _check_fields(v, type_name[5:-1],
                                                                       f"{where}[{i}]")]  # fmt: skip
    if type_name.startswith("dict(") or type_name in ("object", "str", "int", "bool", "float"):
        return []
    module = kserve.models if type_name.startswith("V1beta1") else kubernetes.client.models
    cls = getattr(module, type_name, None)
    if cls is None:
        return [f"{where}: no model {type_name}"]
    by_json = {json: attr for attr, json in cls.attribute_map.items()}
    errors = []
    for key, sub in value.items():
        if key not in by_json:
            errors.append(f"{where}.{key}: not a field of {type_name}")
        else:
            errors += _check_fields(sub, cls.openapi_types[by_json[key]], f"{where}.{key}")
    return errors


def test_the_serving_overlay_is_a_valid_inferenceservice():
    (isvc,) = rendered("serving")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert _check_fields(isvc, "V1beta1InferenceService", "isvc") == []
    broken = {**isvc, "spec": {"predictor": {**isvc["spec"]["predictor"], "containerz": []}}}
    assert _check_fields(broken, "V1beta1InferenceService", "isvc") == [
        "isvc.spec.predictor.containerz: not a field of V1beta1PredictorSpec"
    ]

    import kubernetes_validate

    predictor = isvc["spec"]["predictor"]
    pod_fields = ("serviceAccountName", "automountServiceAccountToken", "securityContext",
                  "containers", "volumes")  # fmt: skip
    template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                "template": {"spec": {k: predictor[k] for k in pod_fields}}}  # fmt: skip
    kubernetes_validate.validate(template, "1.32.0", strict=True)


def test_the_serving_pod_runs_the_server_locked_down_on_the_registry():
    (isvc,) = rendered("serving")
    predictor = isvc["spec"]["predictor"]
    setup = {(o["kind"], o["metadata"]["name"]) for o in rendered("setup")}
    assert ("ServiceAccount", predictor["serviceAccountName"]) in setup
    assert predictor["automountServiceAccountToken"] is False
    pod = predictor["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (10001, 10001, 10001)
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = predictor["containers"]
    assert container["image"] == "metarec-server"  # kustomize edit set image metarec-server=...
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in predictor["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    claim = volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]
    assert ("PersistentVolumeClaim", claim["claimName"]) in setup and mounts["/data"]["readOnly"]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # HOME and caches (read-only root)

    from components.serve.server import build_parser

    args = build_parser().parse_args(container["args"])
    # the delivery flow's registry on that PVC (components/steps/config.py: run_root, model_name)
    assert args.model_dir == "/data/metarec/delivery/models/ctr-dlrm"
    assert container["ports"][0]["containerPort"] == args.http_port
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == (f"/v2/models/{args.model_name}/ready", args.http_port)
    assert args.poll_seconds > 0  # follows the champion
