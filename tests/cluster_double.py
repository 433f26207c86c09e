"""A Kubernetes double that RUNS what is submitted, for the orchestrator tests (no cluster here).

    cluster = RunningCluster(volumes)                # PVC claim name -> local directory
    monkeypatch.setattr(backend, "kubernetes_apis", lambda: (cluster, cluster))
    etl_step(cfg, interval)                          # the SparkApplication really runs

It is :class:`~tests.components.launchers.fake_cluster.FakeCluster` (requests recorded, objects
stored, 409 on a second create, 404 for a missing object) whose create of a job runs it here, to
the end, before returning:

- a SparkApplication: its driver as the rendered spec says, a spark-submit subprocess on a
  ``local[2]`` master (:func:`components.launchers.local_spark.run_driver_locally`); status ``COMPLETED`` or ``FAILED`` with the driver's exit code, as the
  operator reports it;
- a PyTorchJob or TrainJob: every pod as a local process
  (:func:`components.launchers.local_cluster.run_job_locally`, with the run's ConfigMap and
  TrainingRuntime); conditions ``Succeeded``/``Complete`` or ``Failed`` naming the pod and code.

The pods' output is served by ``read_namespaced_pod_log`` (driver pod ``<app>-driver``, training
pods ``<job>-<replica>-<i>``), one timestamped line per output line. Status reads return the real
outcome at once (the job has already finished): what it cannot show is a job observed while
running. Paths: mount paths of the pods map to ``volumes`` (and emptyDirs, ``/tmp`` included, to
scratch directories) as on a cluster. The tests mount the data volume in the pods where the worker
sees it (``[kubernetes] data_mount``, as a deployment must), so that volume maps to itself; keep it
outside ``/tmp`` (see :func:`shared_dir`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tests.components.launchers.fake_cluster import FakeCluster, _cond, _spark

TRAINING = ("PyTorchJob", "TrainJob")


def shared_dir(prefix: str) -> Path:
    """A fresh directory outside ``/tmp`` (an emptyDir in the pods: the double maps it away)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))


def _timestamped(text: str) -> list[str]:
    # The launcher asks for timestamps and shows each line once, by its timestamp.
    return [f"2026-11-01T00:00:00.{i:09d}Z {line}" for i, line in enumerate(text.splitlines())]


class RunningCluster(FakeCluster):
    """CustomObjectsApi and CoreV1Api in one object (pass it as both); see the module docstring."""

    def __init__(
        self, volumes: dict[str, str], timeout_s: float = 600.0, journal: Path | None = None
    ) -> None:
        super().__init__(script=[])  # no script: a job's status is what its run produced
        self.volumes, self.timeout_s, self.journal = volumes, timeout_s, journal
        self.ran: list[dict[str, Any]] = []
        """Every job this double ran, as submitted (also appended to ``journal``, JSON lines)."""

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        stored = super().create_namespaced_custom_object(group, version, namespace, plural, body)
        kind, name = body["kind"], body["metadata"]["name"]
        if kind == "SparkApplication":
            status = self._run_spark(body)
        elif kind in TRAINING:
            status = self._run_training(namespace, body)
        else:
            return stored
        self.ran.append(body)
        self.objects[(plural, namespace, name)]["status"] = status
        if self.journal is not None:
            with self.journal.open("a") as f:
                f.write(json.dumps({"job": body, "status": status}) + "\n")
        return stored

    def _run_spark(self, app: dict[str, Any]) -> dict[str, Any]:
        from components.launchers.local_spark import run_driver_locally

        driver = f"{app['metadata']['name']}-driver"
        log = Path(tempfile.mkdtemp(prefix="metarec-double-driver-")) / f"{driver}.log"
        code = run_driver_locally(app, self.volumes, log_path=log, timeout_s=self.timeout_s)
        self.log_lines[driver] = _timestamped(log.read_text())
        if code == 0:
            return _spark("COMPLETED")
        # spark-operator's message for a driver that exited non-zero
        return _spark("FAILED", f"driver container failed with ExitCode: {code}, Reason: Error")

    def _run_training(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        from components.launchers.local_cluster import run_job_locally

        runtime = (job["spec"].get("runtimeRef") or {}).get("name")
        needed = [
            o for (_, ns, _), o in self.objects.items()
            if ns == namespace and (o["kind"] == "ConfigMap" or (
                o["kind"] == "TrainingRuntime" and o["metadata"]["name"] == runtime))
        ]  # fmt: skip
        logs = Path(tempfile.mkdtemp(prefix="metarec-double-pods-"))
        codes = run_job_locally([*needed, job], self.volumes, timeout_s=self.timeout_s,
                                log_dir=logs)  # fmt: skip
        pods = sorted(logs.glob("*.log"))  # Master before Worker, node-0 before node-1: run order
        for log in pods:
            self.log_lines[log.stem] = _timestamped(log.read_text())
        failed = [(p.stem, c) for p, c in zip(pods, codes, strict=True) if c != 0]
        done = "Complete" if job["kind"] == "TrainJob" else "Succeeded"
        if not failed:
            return _cond("Created", "Running", done, reason=f"{job['kind']}Succeeded")
        pod, code = failed[0]
        return _cond("Created", "Running", "Failed", reason=f"{job['kind']}Failed",
                     message=f"pod {pod} exited with code {code}")  # fmt: skip


JOURNAL_ENV = "METAREC_TEST_CLUSTER"
"""Set to a journal file: :func:`install_from_env` makes this process use the double."""


def install_from_env() -> None:
    """In a process the test starts (a ``kfp.local`` component, through a ``sitecustomize`` on
    ``PYTHONPATH``): when ``$METAREC_TEST_CLUSTER`` names a journal, the cluster API is a double
    (volumes beside the journal) that appends every job it ran to it, and the local backend's
    entry points (the in-process ETL, local training) raise."""
    journal = os.environ.get(JOURNAL_ENV)
    if not journal:
        return
    import components.etl
    import components.launchers.local
    from components.launchers import backend

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("heavy work ran in the orchestrating process")

    root = Path(journal).parent  # the data volume, mounted where the process sees it
    volumes = {"metarec-data": str(root), "metarec-runs": str(root / "metarec-runs")}
    Path(volumes["metarec-runs"]).mkdir(exist_ok=True)
    double = RunningCluster(volumes, journal=Path(journal))
    backend.kubernetes_apis = lambda: (double, double)
    components.etl.run_etl = refuse
    components.launchers.local.train_locally = refuse
