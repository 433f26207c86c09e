"""Render a training run from ``manifests/``: an overlay plus the run's parameters -> the objects to
create (the run's ConfigMap, a TrainingRuntime for Trainer v2, the job).

    params = TrainRunParams(variant="pytorchjob-gpu", run_id="r20261101", namespace="ml",
                            image="registry.example.com/metarec-trainer:0.1.0",
                            overrides=("data.path=/data/episodes/interval=2026110100-2026110200",),
                            nodes=4)
    objs = render_run(params)          # [ConfigMap, PyTorchJob metarec-train-r20261101]
    job = render_train_job(params)     # just the job

How: the overlay is rendered once to read its job; then a per-run kustomization is written beside
nothing but itself — ``resources: [<overlay>]``, ``namespace``, ``nameSuffix: -<run_id>``, a
``metarec.io/run-id`` label, ``images``, a ``configMapGenerator`` that replaces the trainer config
(when one is given) and JSON 6902 patches for the args, nodes, ranks and GPUs — and rendered with
kustomize itself (``kubectl kustomize``, :mod:`components.launchers.kustomize`).

Every per-run value is a field of :class:`TrainRunParams`; nothing is read from the environment of
the machine that renders (the CLI reads the config file the user names and passes its text).
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.launchers import kustomize
from components.launchers.kustomize import image_rule

JOB_KINDS = ("PyTorchJob", "TrainJob")
DATA_VOLUME = "data"
"""The pods' volume of the ``metarec-data`` claim (raw logs, episodes, the delivery run root)."""
RESERVED_MOUNTS = ("", "/tmp", "/dev/shm", "/etc/metarec", "/runs")
TRAINER_IMAGE = "metarec-trainer"
CONFIG_MAP = "metarec-trainer-config"
CONFIG_KEY = "trainer.toml"
TRAINER_CONTAINERS = {"PyTorchJob": "pytorch", "TrainJob": "node"}
MAX_JOB_NAME = 50  # room for the operator's "-worker-<i>" / JobSet's "-node-0-<i>-xxxxx" suffixes
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)+=")
RUN_ID_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def manifests_dir() -> Path:
    """``manifests/`` of this checkout, else the copy the components image ships
    (``$METAREC_MANIFESTS``, an installation setting, not a run parameter)."""
    here = Path(__file__).resolve().parents[2] / "manifests"
    if here.is_dir():
        return here
    installed = Path(os.environ.get("METAREC_MANIFESTS", "/opt/metarec/manifests"))
    if installed.is_dir():
        return installed
    raise FileNotFoundError(
        f"manifests/ not found at {here} or {installed}: run from a metarec checkout or set "
        "METAREC_MANIFESTS to the manifests directory"
    )


def variants(root: Path | None = None) -> list[str]:
    """The overlays that render a training job (``setup`` and ``spark-etl`` are not runs)."""
    base = (root or manifests_dir()) / "overlays"
    return sorted(p.name for p in base.iterdir() if p.name.startswith(("pytorchjob", "trainjob")))


@dataclass(frozen=True)
class TrainRunParams:
    """Everything that differs between two runs of the same overlay."""

    run_id: str
    """Lowercase letters, digits and '-': appended to every name (``metarec-train-<run_id>``).
    Make it deterministic per pipeline run, so a retried launcher re-attaches to its job."""
    variant: str = "pytorchjob-gpu"
    """An overlay of ``manifests/overlays`` (see :func:`variants`)."""
    namespace: str = "metarec"
    image: str | None = None
    """The trainer image (``registry/metarec-trainer:tag`` or ``...@sha256:...``); None keeps the
    overlay's."""
    config_toml: str | None = None
    """The trainer config (TOML text) mounted at /etc/metarec/trainer.toml; None keeps the
    overlay's trainer.toml."""
    overrides: tuple[str, ...] = ()
    """``section.key=value`` trainer overrides; they replace the overlay's args of the same key
    (``data.path=...`` is where the episodes are). ``train.output_dir`` defaults to
    ``/runs/<job name>`` when the overlay writes under ``/runs``."""
    nodes: int | None = None
    """Pods of the job (PyTorchJob: Master + Workers, or Workers when elastic; TrainJob: numNodes)."""
    nproc_per_node: int | None = None
    """Ranks per pod (PyTorchJob nprocPerNode, TrainJob numProcPerNode)."""
    gpus_per_node: int | None = None
    """nvidia.com/gpu limit per pod (0 removes it)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on every object (e.g. the Airflow DAG run or KFP run that launched it)."""
    data_mount: str | None = None
    """Where the pods mount the ``metarec-data`` volume; None keeps the overlay's ``/data``. The
    delivery flow passes the path at which its own worker sees that volume, so that a path in its
    records names the same file in the worker and in the pods."""

    def __post_init__(self) -> None:
        if not RUN_ID_PATTERN.fullmatch(self.run_id or ""):
            raise ValueError(
                f"run id {self.run_id!r} must be lowercase letters, digits and '-' (a DNS label "
                "part), e.g. r20261101-0600"
            )
        check_mount(self.data_mount)
        for name, value in (("nodes", self.nodes), ("nproc_per_node", self.nproc_per_node)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.config_toml is not None:
            try:
                tomllib.loads(self.config_toml)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"the trainer config is not valid TOML: {e}") from None
        for item in self.overrides:
            if not _OVERRIDE.match(item):
                raise ValueError(f"override {item!r} is not of the form section.key=value")


def render_overlay(name: str, root: Path | None = None) -> list[dict[str, Any]]:
    """The objects of ``manifests/overlays/<name>``, as ``kubectl kustomize`` gives them."""
    path = (root or manifests_dir()) / "overlays" / name
    if not (path / "kustomization.yaml").is_file():
        overlays = sorted(p.name for p in path.parent.iterdir())
        raise ValueError(f"no overlay {name!r}; the overlays are: {', '.join(overlays)}")
    return kustomize.build(path)


def job_of(objs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The one PyTorchJob or TrainJob among ``objs``."""
    jobs = [o for o in objs if o.get("kind") in JOB_KINDS]
    if len(jobs) != 1:
        raise ValueError(f"expected one PyTorchJob or TrainJob, found {len(jobs)}")
    return jobs[0]


def trainer_containers(job: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """(JSON pointer of the pod spec, index, container) of the trainer container of every replica:
    ``pytorch`` in a PyTorchJob's replicas; for a TrainJob, its ``spec/trainer`` (index -1)."""
    if job["kind"] == "TrainJob":
        return [("/spec/trainer", -1, job["spec"]["trainer"])]
    out = []
    for rtype, spec in job["spec"]["pytorchReplicaSpecs"].items():
        pod = f"/spec/pytorchReplicaSpecs/{rtype}/template/spec"
        for i, c in enumerate(spec["template"]["spec"]["containers"]):
            if c.get("name") == "pytorch":
                out.append((pod, i, c))
    return out


def merge_args(args: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """The overlay's args with ``overrides`` applied: same key replaced in place, new ones appended.

    >>> merge_args(["-m", "trainer", "data.path=/a", "x.y=1"], ["data.path=/b", "z.w=2"])
    ['-m', 'trainer', 'data.path=/b', 'x.y=1', 'z.w=2']
    """
    out = list(args)
    for item in overrides:
        key = item.partition("=")[0]
        hits = [i for i, a in enumerate(out) if _OVERRIDE.match(a) and a.partition("=")[0] == key]
        if hits:
            out[hits[-1]] = item
        else:
            out.append(item)
    return out


def _arg_value(args: Sequence[str], key: str) -> str | None:
    values = [a.partition("=")[2] for a in args if a.startswith(key + "=")]
    return values[-1] if values else None


def _run_args(base: dict[str, Any], params: TrainRunParams, final_name: str) -> list[str]:
    _, _, container = trainer_containers(base)[0]
    args = list(container.get("args", []))
    overrides = list(params.overrides)
    if params.config_toml is not None and not any(o.startswith("data.path=") for o in overrides):
        # The overlay's data.path arg would silently win over the run's config file.
        data_path = tomllib.loads(params.config_toml).get("data", {}).get("path")
        if data_path:
            overrides.insert(0, f"data.path={data_path}")
    out_dir = _arg_value(args, "train.output_dir")
    user_out = any(o.startswith("train.output_dir=") for o in overrides)
    if out_dir and out_dir.startswith("/runs/") and not user_out:
        overrides.insert(0, f"train.output_dir=/runs/{final_name}")
    args = merge_args(args, overrides)
    data = _arg_value(args, "data.path")
    if data is not None:  # a TOML literal ("/abs") or a bare value (/abs), as the trainer accepts
        data = data.strip().strip("'\"")
    if data is not None and not (data.startswith("/") or "://" in data):
        raise ValueError(
            f"data.path={data} is relative: in the pod it must be an absolute path on a mounted "
            "volume (/data/episodes/interval=...) or an object-store URI (s3://, gs://, hdfs://)"
        )
    return args


def _patches(base: dict[str, Any], params: TrainRunParams, final_name: str) -> list[dict]:
    kind = base["kind"]
    ops: list[dict[str, Any]] = []
    args = _run_args(base, params, final_name)
    for pointer, index, _ in trainer_containers(base):
        where = pointer if index < 0 else f"{pointer}/containers/{index}"
        ops.append({"op": "replace", "path": f"{where}/args", "value": args})
        if params.gpus_per_node is not None:
            res = "resourcesPerNode" if kind == "TrainJob" else "resources"
            current = dict(_at(base, where).get(res, {}))
            limits = dict(current.get("limits", {}))
            if params.gpus_per_node:
                limits["nvidia.com/gpu"] = str(params.gpus_per_node)
            else:
                limits.pop("nvidia.com/gpu", None)
            ops.append(
                {"op": "add", "path": f"{where}/{res}", "value": {**current, "limits": limits}}
            )
    spec = base["spec"]
    if kind == "TrainJob":
        if params.nodes is not None:
            ops.append({"op": "add", "path": "/spec/trainer/numNodes", "value": params.nodes})
        if params.nproc_per_node is not None:
            ops.append(
                {
                    "op": "add",
                    "path": "/spec/trainer/numProcPerNode",
                    "value": params.nproc_per_node,
                }
            )
        return ops
    if params.nproc_per_node is not None:
        ops.append({"op": "add", "path": "/spec/nprocPerNode", "value": str(params.nproc_per_node)})
    if params.nodes is not None:
        replicas = spec["pytorchReplicaSpecs"]
        workers = params.nodes - (1 if "Master" in replicas else 0)
        if workers < 1:
            raise ValueError(
                f"{params.variant} has a Master and Workers: nodes must be >= 2, got {params.nodes}"
            )
        ops.append(
            {"op": "add", "path": "/spec/pytorchReplicaSpecs/Worker/replicas", "value": workers}
        )
        elastic = spec.get("elasticPolicy")
        if elastic:
            low = min(elastic.get("minReplicas", workers), workers)
            high = max(elastic.get("maxReplicas", workers), workers)
            ops.append({"op": "add", "path": "/spec/elasticPolicy/minReplicas", "value": low})
            ops.append({"op": "add", "path": "/spec/elasticPolicy/maxReplicas", "value": high})
    return ops


def _at(doc: dict[str, Any], pointer: str) -> dict[str, Any]:
    node: Any = doc
    for token in pointer.strip("/").split("/"):
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def run_kustomization(params: TrainRunParams, base_objs: Sequence[dict], overlay_rel: str) -> dict:
    """The per-run kustomization (see the module docstring) for an overlay rendered as
    ``base_objs`` and found at ``overlay_rel`` relative to the kustomization's directory."""
    base = job_of(base_objs)
    final_name = f"{base['metadata']['name']}-{params.run_id}"
    if len(final_name) > MAX_JOB_NAME or not _DNS1035.fullmatch(final_name):
        raise ValueError(
            f"job name {final_name!r} must be a DNS-1035 label of at most {MAX_JOB_NAME} "
            "characters (the operator appends pod and service suffixes): shorten the run id"
        )
    kust: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [overlay_rel],
        "namespace": params.namespace,
        "nameSuffix": f"-{params.run_id}",
        "labels": [{"pairs": {"metarec.io/run-id": params.run_id, **dict(params.labels)}}],
    }
    if params.image:
        kust["images"] = [image_rule(TRAINER_IMAGE, params.image)]
    if params.config_toml is not None:
        kust["configMapGenerator"] = [
            {"name": CONFIG_MAP, "behavior": "replace", "files": [CONFIG_KEY]}
        ]
    kust["patches"] = [
        {
            "target": {"kind": base["kind"]},
            "patch": yaml.safe_dump(_patches(base, params, final_name)),
        }
    ]
    if params.data_mount:
        for obj in base_objs:
            ops = kustomize.mount_ops(obj, DATA_VOLUME, params.data_mount)
            if ops:
                kust["patches"].append(
                    {"target": {"kind": obj["kind"]}, "patch": yaml.safe_dump(ops)}
                )
    return kust


def check_mount(path: str | None) -> None:
    """A data volume mount path must be absolute and not one the image needs."""
    if path is not None and (not path.startswith("/") or path.rstrip("/") in RESERVED_MOUNTS):
        raise ValueError(
            f"data_mount {path!r} must be an absolute path other than {', '.join(RESERVED_MOUNTS)}"
        )


def render_run(params: TrainRunParams, root: Path | None = None) -> list[dict[str, Any]]:
    """The objects of one run, in creation order (ConfigMap, TrainingRuntime, job).

    Raises:
        ValueError: an unknown variant, a bad parameter, a job name that is too long.
    """
    root = root or manifests_dir()
    base_objs = render_overlay(params.variant, root)
    overlay = (root / "overlays" / params.variant).resolve()
    with tempfile.TemporaryDirectory(prefix="metarec-run-") as tmp:
        kust = run_kustomization(params, base_objs, os.path.relpath(overlay, tmp))
        sort = yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("sortOptions")
        if sort:
            kust["sortOptions"] = sort
        if params.config_toml is not None:
            Path(tmp, CONFIG_KEY).write_text(params.config_toml)
        return kustomize.build(Path(tmp), kust)


def render_train_job(params: TrainRunParams) -> dict[str, Any]:
    """The PyTorchJob or TrainJob of the run (what ``metarec train --backend kubernetes`` creates
    last, after its ConfigMap and runtime)."""
    return job_of(render_run(params))


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the trainer config) as ``|`` blocks, readable as written."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def to_yaml(objs: Sequence[dict[str, Any]]) -> str:
    """A multi-document YAML stream, ``kubectl apply -f -`` ready."""
    return "---\n".join(yaml.dump(o, Dumper=_Dumper, sort_keys=False, width=100) for o in objs)
