"""Render the ETL of one data interval as a SparkApplication from ``manifests/overlays/spark-etl``.

    params = EtlRunParams(run_id="20261101t00-20261102t00-5e1c", input="/data/raw",
                          output="/data/episodes", start="2026-11-01T00", end="2026-11-02T00",
                          executors=4)
    objs = render_etl_run(params)
    # [SparkApplication metarec-etl-20261101t00-20261102t00-5e1c] with --input ... --end ... as
    # its arguments. The delivery flow names a run after its interval and inputs
    # (components/steps/dispatch.py job_run_id), so a retried task renders the same name and the
    # launcher re-attaches to its application (or submits it anew if it failed)

Same mechanism as :mod:`components.launchers.render`: a per-run kustomization over the overlay
(namespace, ``-<run_id>`` suffix, run labels, image, JSON 6902 patches), rendered by kustomize
(``kubectl kustomize``); every per-run value is a field of :class:`EtlRunParams`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.launchers import kustomize
from components.launchers.render import DATA_VOLUME, RUN_ID_PATTERN, check_mount, manifests_dir

COMPONENTS_IMAGE = "metarec-components"
VARIANT = "spark-etl"
APP_NAME = "metarec-etl"
MAX_APP_NAME = 63  # a label value: spark-operator labels every pod with the application's name
_HOUR = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2})")


@dataclass(frozen=True)
class EtlRunParams:
    """One ETL run: the interval, where it reads and writes, and how big the Spark job is."""

    run_id: str
    input: str
    output: str
    start: str
    """Interval start, UTC hour (``2026-11-01T00``), inclusive."""
    end: str
    extra_args: tuple[str, ...] = ()
    """More ``metarec etl`` arguments: options (``--task-key``, ``--k``, ``--features`` ...) or
    ``key=value`` settings (how the delivery flow passes its ``[etl]`` section)."""
    namespace: str = "metarec"
    image: str | None = None
    """``registry/metarec-components:tag``; None keeps the overlay's."""
    executors: int | None = None
    executor_cores: int | None = None
    executor_memory: str | None = None
    """Spark's notation, e.g. ``8g``."""
    driver_memory: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on the application (e.g. the Airflow DAG run or KFP run that launched it)."""
    data_mount: str | None = None
    """Where the driver and executors mount the ``metarec-data`` volume; None keeps ``/data``
    (see :class:`~components.launchers.render.TrainRunParams`)."""

    @property
    def name(self) -> str:
        """The SparkApplication's name (its driver pod is ``<name>-driver``)."""
        return f"{APP_NAME}-{self.run_id}"

    def __post_init__(self) -> None:
        if not RUN_ID_PATTERN.fullmatch(self.run_id or ""):
            raise ValueError(f"run id {self.run_id!r} must be lowercase letters, digits and '-'")
        if len(self.name) > MAX_APP_NAME:
            raise ValueError(
                f"application name {self.name!r} is longer than {MAX_APP_NAME} characters (it "
                "becomes a label value of every Spark pod): shorten the run id"
            )
        for name in ("input", "output", "start", "end"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required")
        for name in ("start", "end"):
            if not _HOUR.fullmatch(getattr(self, name)):
                raise ValueError(
                    f"{name} {getattr(self, name)!r} must be a UTC hour YYYY-MM-DDTHH (2026-11-01T00)"
                )
        for name in ("input", "output"):
            value = getattr(self, name)
            if not (value.startswith("/") or "://" in value):
                raise ValueError(
                    f"{name} {value!r} must be an absolute path on a mounted volume or a URI "
                    "(s3a://, gs://, hdfs://): it is read inside the Spark pods"
                )
        check_mount(self.data_mount)
        if self.executors is not None and self.executors < 1:
            raise ValueError(f"executors must be >= 1, got {self.executors}")

    def arguments(self) -> list[str]:
        """The job's command line (``components/etl/job.py`` options)."""
        return ["--input", self.input, "--output", self.output, "--start", self.start,
                "--end", self.end, *self.extra_args]  # fmt: skip


def etl_kustomization(
    params: EtlRunParams, overlay_rel: str, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The per-run kustomization of the ETL (see the module docstring); ``base`` is the overlay's
    SparkApplication (needed to move the data volume's mounts, ``params.data_mount``)."""
    ops: list[dict[str, Any]] = [
        {"op": "replace", "path": "/spec/arguments", "value": params.arguments()}
    ]
    if params.data_mount:
        if base is None:
            raise ValueError("data_mount needs the overlay's SparkApplication (base)")
        ops += kustomize.mount_ops(base, DATA_VOLUME, params.data_mount)
    for path, value in (
        ("/spec/executor/instances", params.executors),
        ("/spec/executor/cores", params.executor_cores),
        ("/spec/executor/memory", params.executor_memory),
        ("/spec/driver/memory", params.driver_memory),
    ):
        if value is not None:
            ops.append({"op": "add", "path": path, "value": value})
    kust: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [overlay_rel],
        "namespace": params.namespace,
        "nameSuffix": f"-{params.run_id}",
        "labels": [{"pairs": {"metarec.io/run-id": params.run_id, **dict(params.labels)}}],
        "patches": [{"target": {"kind": "SparkApplication"}, "patch": yaml.safe_dump(ops)}],
    }
    if params.image:
        kust["images"] = [kustomize.image_rule(COMPONENTS_IMAGE, params.image)]
    return kust


def render_etl_run(params: EtlRunParams, root: Path | None = None) -> list[dict[str, Any]]:
    """The SparkApplication of one ETL run (a one-element list, for the launcher)."""
    overlay = ((root or manifests_dir()) / "overlays" / VARIANT).resolve()
    base = kustomize.build(overlay)[0] if params.data_mount else None
    with tempfile.TemporaryDirectory(prefix="metarec-etl-") as tmp:
        kust = etl_kustomization(params, os.path.relpath(overlay, tmp), base)
        return kustomize.build(Path(tmp), kust)
