"""Kubernetes settings of the pipeline's tasks (kfp-kubernetes), kept apart from the wiring.

Every task mounts the shared volume that holds the raw logs and the run root (the same path in
every pod, so step records and checkpoint paths stay valid across tasks and with the Airflow
flow); the training task runs on the GPU pool (node selector + the GPU taint's toleration) with
one GPU, and the data tasks on the CPU pool. The service account is not part of the compiled
pipeline in KFP v2: it is chosen when a run is created (``pipelines/README.md``).

``kfp-kubernetes`` is an optional dependency (``metarec[kfp]``). Without it the pipeline still
compiles and runs (``kfp.local`` ignores platform settings anyway); :func:`apply` then logs a
warning once and leaves the tasks as they are, and the compiled YAML has no platform section.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSettings:
    """Where the pipeline's pods run and what they mount."""

    pvc_name: str = "metarec-data"
    """ReadWriteMany PVC holding the raw logs and the run root (``manifests/`` creates it)."""
    mount_path: str = "/data"
    gpu_node_label: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    """Node selector of the training task (GPU Feature Discovery label)."""
    cpu_node_label: tuple[str, str] = ("metarec.io/pool", "cpu")
    """Node selector of the data and delivery tasks."""
    gpu_toleration: str = "nvidia.com/gpu"
    """Taint key of the GPU nodes (tolerated with effect NoSchedule)."""
    gpus: int = 1
    train_timeout_s: int = 24 * 3600


DEFAULT_SETTINGS = ClusterSettings()
_warned = False


def _kubernetes():
    global _warned
    try:
        from kfp import kubernetes
    except ImportError:
        if not _warned:
            log.warning(
                "kfp-kubernetes is not installed: compiling without volume, node "
                "selector and toleration settings (pip install 'metarec[kfp]')"
            )
            _warned = True
        return None
    return kubernetes


def apply(task, role: str, settings: ClusterSettings = DEFAULT_SETTINGS):
    """Mount the data volume on ``task`` and place it by ``role`` (``gpu`` or ``cpu``)."""
    k8s = _kubernetes()
    if role == "gpu":
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(settings.gpus)
    if k8s is None:
        return task
    k8s.mount_pvc(task, pvc_name=settings.pvc_name, mount_path=settings.mount_path)
    key, value = settings.gpu_node_label if role == "gpu" else settings.cpu_node_label
    k8s.add_node_selector(task, label_key=key, label_value=value)
    if role == "gpu":
        k8s.add_toleration(
            task, key=settings.gpu_toleration, operator="Exists", effect="NoSchedule"
        )
        k8s.set_timeout(task, settings.train_timeout_s)
    return task
