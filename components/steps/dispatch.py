"""``backend = "kubernetes"``: hand a step's heavy work to the cluster and watch it from here.

    objs = render_etl_run(params)                                 # or render_run(...) for training
    run_job(cfg, objs, layout.record_path(interval, "etl.k8s").with_suffix(".yaml"), "ETL of ...")

The one way the steps submit a job (the ETL's SparkApplication, the training PyTorchJob/TrainJob):
check the objects against the operators' admission rules, keep them beside the interval's records
(what was submitted, for ``kubectl apply -f`` by hand), create them with
:class:`~components.launchers.kubernetes.KubernetesLauncher`, stream the job's log into this
process's log (the Airflow task's or the KFP pod's) and wait. The job is named after the interval
and a key (:func:`job_run_id`; the ETL's inputs, the model's name), so a retried task renders the
same name and re-attaches to its job instead of submitting a second one; a job of that name that
failed in an earlier try is deleted and submitted again (the launcher's rule).

The cluster API comes from :func:`components.launchers.backend.kubernetes_apis` (in-cluster
config in a pod, else ``~/.kube/config``); tests replace that one function with a double.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from pathlib import Path
from typing import Any

from components.steps.config import DeliveryConfig
from components.steps.layout import Interval

log = logging.getLogger(__name__)
job_log = logging.getLogger("components.steps.job")
"""The submitted job's own log lines, prefixed with the pod name."""
LAST_LINES = 8
"""Log lines of the job quoted in the step's error when it fails."""


def job_run_id(interval: Interval, key: str) -> str:
    """``<interval slug>-<4 hex digits of key>``: the same on every try of the same work.

    >>> job_run_id(Interval.parse("2026-11-01T00/1h"), "ctr-dlrm")
    '20261101t00-20261101t01-7669'
    """
    return f"{interval.slug}-{hashlib.sha1(key.encode()).hexdigest()[:4]}"


def keep(objs: list[dict[str, Any]], record: Path) -> Path:
    """Check ``objs`` against the operators' admission rules and write them to ``record`` (YAML).

    Raises:
        ValueError: the cluster would refuse them (every problem is listed).
    """
    from components.launchers.checks import require_valid
    from components.launchers.render import to_yaml

    require_valid(objs)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(to_yaml(objs))
    return record


def run_job(cfg: DeliveryConfig, objs: list[dict[str, Any]], record: Path, what: str) -> Path:
    """Check ``objs``, write them to ``record`` (YAML), submit them and wait for their job.

    Args:
        cfg: its ``[kubernetes]`` section gives ``timeout_s`` and ``cleanup``.
        objs: a rendered run (the job, and the ConfigMap/TrainingRuntime it needs).
        record: where the submitted objects are kept.
        what: names the work in messages (``ETL of interval=...``).

    Returns:
        ``record``.

    Raises:
        ValueError: the objects would be refused by the cluster (nothing is submitted).
        RuntimeError: the job failed, timed out or was deleted; the message holds the
            launcher's (the operator's reason, how to inspect the job) and the job's last lines.
    """
    from components.launchers.backend import kubernetes_apis
    from components.launchers.kubernetes import JobError, KubernetesLauncher

    keep(objs, record)
    k = cfg.kubernetes
    custom, core = kubernetes_apis()
    last: collections.deque[str] = collections.deque(maxlen=LAST_LINES)

    def sink(line: str) -> None:
        last.append(line)
        job_log.info("%s", line)

    launcher = KubernetesLauncher(custom, core, cleanup=k.cleanup, sink=sink)
    try:
        outcome = launcher.run(objs, timeout_s=k.timeout_s)
    except JobError as e:
        tail = "".join(f"\n  {line}" for line in last)
        raise RuntimeError(
            f"{what} on Kubernetes failed: {e}" + (f"\nlast log lines:{tail}" if tail else "")
        ) from e
    log.info("%s: %s %s/%s succeeded in %.0f s", what, outcome.kind, outcome.namespace,
             outcome.name, outcome.seconds)  # fmt: skip
    return record
