"""Where and how the pipeline's tasks run: resources, retries, deadlines (KFP) and volumes,
placement, identity (kfp-kubernetes), kept apart from the wiring.

Every task mounts the shared volume that holds the raw logs and the run root (the same path in
every pod, so step records and checkpoint paths stay valid across tasks and with the Airflow
flow), runs as the images' user and group (uid/gid 10001) and has CPU/memory requests and limits
and a deadline by its kind (``KINDS``). Training on this pod (``gpu``) runs on the GPU pool (node
selector + the GPU taint's toleration) with ``nproc`` GPUs; every other task runs on the CPU pool.

Not set here, because KFP cannot: the pods' ``fsGroup`` (kfp-kubernetes 2.17 sets only the
container's runAsUser/runAsGroup/runAsNonRoot; the platform admin sets it for every pipeline pod,
``pipelines/README.md``) and the service account (chosen when a run is created).

``kfp-kubernetes`` is an optional dependency (``metarec[kfp]``). Without it the pipeline still
compiles and runs (``kfp.local`` ignores platform settings anyway); :func:`apply` then logs a
warning once and sets only what the KFP SDK itself sets (resources, retries, GPUs), and the
compiled YAML has no platform section.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kfp.dsl import PipelineTask
    from kfp.dsl.pipeline_channel import PipelineChannel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskKind:
    """Requests, limits and the deadline of one kind of task."""

    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str
    timeout_s: int


KINDS = {
    # resolve_run, gate, promote, report: JSON files and a pointer swap.
    "light": TaskKind("250m", "512Mi", "1", "1Gi", 30 * 60),
    # validate_raw, run_etl: Spark local[4] (1 GB driver heap) + Python workers.
    "spark": TaskKind("4", "6Gi", "4", "8Gi", 6 * 3600),
    # validate_episodes: pyarrow reads of the episode files, one at a time (no Spark, no JVM).
    "arrow": TaskKind("1", "2Gi", "2", "6Gi", 3 * 3600),
    # export_model, evaluate: torch on CPU, the interval's episodes in memory.
    "torch": TaskKind("2", "8Gi", "4", "16Gi", 3 * 3600),
    # train, backend "local": torchrun with nproc ranks on this pod's GPUs.
    "gpu": TaskKind("8", "32Gi", "16", "64Gi", 24 * 3600),
    # train, backend "kubernetes": renders, submits and watches the job; outlives its timeout
    # ([kubernetes] timeout_s, 24 h by default) long enough to report and clean up.
    "launcher": TaskKind("250m", "1Gi", "1", "2Gi", 24 * 3600 + 30 * 60),
}


@dataclass(frozen=True)
class ClusterSettings:
    """Where the pipeline's pods run, what they mount and how they are retried."""

    pvc_name: str = "metarec-data"
    """ReadWriteMany PVC holding the raw logs and the run root (``manifests/`` creates it)."""
    mount_path: str = "/data"
    gpu_node_label: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    """Node selector of the training task (GPU Feature Discovery label)."""
    cpu_node_label: tuple[str, str] = ("metarec.io/pool", "cpu")
    """Node selector of every other task."""
    gpu_toleration: str = "nvidia.com/gpu"
    """Taint key of the GPU nodes (tolerated with effect NoSchedule)."""
    uid: int = 10001
    """User and group of both images (``trainer/Dockerfile``, ``components/Dockerfile``)."""
    retries: int = 2
    """Retries of a task marked retryable (the pipeline says which, and why)."""
    retry_backoff: str = "120s"
    """First retry delay; doubled for each further retry, at most an hour."""
    kinds: dict[str, TaskKind] = field(default_factory=lambda: dict(KINDS))


DEFAULT_SETTINGS = ClusterSettings()
_warned = False


def _kubernetes():
    global _warned
    try:
        from kfp import kubernetes
    except ImportError:
        if not _warned:
            log.warning(
                "kfp-kubernetes is not installed: compiling without volume, placement and "
                "security context settings (pip install 'metarec[kfp]')"
            )
            _warned = True
        return None
    return kubernetes


def apply(
    task: PipelineTask,
    kind: str,
    *,
    retry: bool,
    gpus: PipelineChannel | None = None,
    settings: ClusterSettings = DEFAULT_SETTINGS,
) -> PipelineTask:
    """Size, retry, mount, place and identify ``task`` as a task of ``kind`` (``KINDS``).

    Args:
        retry: retry a failed attempt (only for tasks whose rerun changes nothing).
        gpus: the GPU count of a ``gpu`` task: a pipeline parameter.
    """
    k = settings.kinds[kind]
    task.set_cpu_request(k.cpu).set_cpu_limit(k.cpu_limit)
    task.set_memory_request(k.memory).set_memory_limit(k.memory_limit)
    if retry:
        task.set_retry(
            settings.retries,
            backoff_duration=settings.retry_backoff,
            backoff_factor=2.0,
            backoff_max_duration="3600s",
        )
    if kind == "gpu":
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
        # A pipeline parameter read only by a resource field is not an input of the dsl.If
        # group around the task unless registered (kfp 2.17 compiles a dangling reference).
        task.register_pipeline_channels([gpus])
    k8s = _kubernetes()
    if k8s is None:
        return task
    k8s.mount_pvc(task, pvc_name=settings.pvc_name, mount_path=settings.mount_path)
    key, value = settings.gpu_node_label if kind == "gpu" else settings.cpu_node_label
    k8s.add_node_selector(task, label_key=key, label_value=value)
    if kind == "gpu":
        k8s.add_toleration(
            task, key=settings.gpu_toleration, operator="Exists", effect="NoSchedule"
        )
    k8s.set_timeout(task, k.timeout_s)
    k8s.set_security_context(
        task, run_as_user=settings.uid, run_as_group=settings.uid, run_as_non_root=True
    )
    return task
