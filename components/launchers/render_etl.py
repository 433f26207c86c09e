"""Render the ETL of one data interval as a SparkApplication from ``manifests/overlays/spark-etl``.

    objs = render_etl_run(EtlRunParams(run_id="2026110100", input="/data/raw",
                                       output="/data/episodes", start="2026-11-01T00",
                                       end="2026-11-02T00", executors=4))
    # [SparkApplication metarec-etl-2026110100] with --input ... --end ... as its arguments

Same mechanism as :mod:`components.launchers.render`: a per-run kustomization over the overlay
(namespace, ``-<run_id>`` suffix, run label, image, JSON 6902 patches), rendered by kubectl or by
the built-in renderer; every per-run value is a field of :class:`EtlRunParams`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.launchers.render import RUN_ID_PATTERN, build_kustomization, manifests_dir
from components.launchers.transformers import image_rule

COMPONENTS_IMAGE = "metarec-components"
VARIANT = "spark-etl"


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
    """More ``metarec etl`` options (``--task-key``, ``--k``, ``--features`` ...)."""
    namespace: str = "metarec"
    image: str | None = None
    """``registry/metarec-components:tag``; None keeps the overlay's."""
    executors: int | None = None
    executor_cores: int | None = None
    executor_memory: str | None = None
    """Spark's notation, e.g. ``8g``."""
    driver_memory: str | None = None

    def __post_init__(self) -> None:
        if not RUN_ID_PATTERN.fullmatch(self.run_id or ""):
            raise ValueError(f"run id {self.run_id!r} must be lowercase letters, digits and '-'")
        for name in ("input", "output", "start", "end"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required")
        for name in ("input", "output"):
            value = getattr(self, name)
            if not (value.startswith("/") or "://" in value):
                raise ValueError(
                    f"{name} {value!r} must be an absolute path on a mounted volume or a URI "
                    "(s3a://, gs://, hdfs://): it is read inside the Spark pods"
                )
        if self.executors is not None and self.executors < 1:
            raise ValueError(f"executors must be >= 1, got {self.executors}")

    def arguments(self) -> list[str]:
        """The job's command line (``components/etl/job.py`` options)."""
        return ["--input", self.input, "--output", self.output, "--start", self.start,
                "--end", self.end, *self.extra_args]  # fmt: skip


def etl_kustomization(params: EtlRunParams, overlay_rel: str) -> dict[str, Any]:
    """The per-run kustomization of the ETL (see the module docstring)."""
    ops: list[dict[str, Any]] = [
        {"op": "replace", "path": "/spec/arguments", "value": params.arguments()}
    ]
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
        "labels": [{"pairs": {"metarec.io/run-id": params.run_id}}],
        "patches": [{"target": {"kind": "SparkApplication"}, "patch": yaml.safe_dump(ops)}],
    }
    if params.image:
        kust["images"] = [image_rule(COMPONENTS_IMAGE, params.image)]
    return kust


def render_etl_run(
    params: EtlRunParams, engine: str = "auto", root: Path | None = None
) -> list[dict[str, Any]]:
    """The SparkApplication of one ETL run (a one-element list, for the launcher)."""
    overlay = ((root or manifests_dir()) / "overlays" / VARIANT).resolve()
    with tempfile.TemporaryDirectory(prefix="metarec-etl-") as tmp:
        kust = etl_kustomization(params, os.path.relpath(overlay, tmp))
        return build_kustomization(Path(tmp), kust, engine)
