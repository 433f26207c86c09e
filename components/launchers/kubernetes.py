"""Run a rendered job on a cluster: create it, follow it to the end, stream its logs, clean up.

    from kubernetes import client, config
    config.load_incluster_config()            # or load_kube_config() on a laptop
    launcher = KubernetesLauncher(client.CustomObjectsApi(), client.CoreV1Api())
    outcome = launcher.run(render_run(params), timeout_s=6 * 3600)   # raises JobError subclasses

The API objects are injected (tests pass a fake that records requests and plays back statuses).
What it does, in order:

1. checks the objects against the operators' admission rules (:mod:`.checks`), then creates them
   in order (ConfigMap, TrainingRuntime, job). A job that already exists with the same
   ``metarec.io/run-id`` is re-attached to (a retried KFP/Airflow task must not submit twice),
   unless it has failed: a retry then means "try again", so it is deleted and submitted anew
   (its logs went to the try that saw it fail); one with another run id is an error;
2. polls the job: ``status.conditions`` of a PyTorchJob (Created, Running, Restarting, Succeeded,
   Failed) or TrainJob (Complete, Failed), ``status.applicationState`` of a SparkApplication;
   while polling, appends the new log lines of the job's pods (selected by the operator's label,
   e.g. ``training.kubeflow.org/job-name``), prefixed with the pod name;
3. ends with :class:`JobOutcome` on success, or raises :class:`JobFailed` (the operator's reason
   and message), :class:`JobTimeout` or :class:`JobDeleted` (the job vanished while running);
4. deletes what it created per ``cleanup``: ``on-success`` (default: keep a failed job's pods for
   ``kubectl logs``/``describe``, but stop a timed-out one), ``always`` or ``never``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from components.launchers.checks import require_valid

log = logging.getLogger(__name__)
RUN_ID_LABEL = "metarec.io/run-id"
CLEANUP_POLICIES = ("on-success", "always", "never")


@dataclass(frozen=True)
class Kind:
    """How to reach one kind through the API and find its pods."""

    group: str
    version: str
    plural: str
    pod_label: str
    """Label the operator puts on the job's pods, valued with the job's name."""
    container: str
    """The container whose log is streamed."""
    only: str = ""
    """More of the label selector (Spark: the driver's log only)."""


KINDS: dict[str, Kind] = {
    "PyTorchJob": Kind("kubeflow.org", "v1", "pytorchjobs", "training.kubeflow.org/job-name",
                       "pytorch"),
    "TrainJob": Kind("trainer.kubeflow.org", "v1alpha1", "trainjobs",
                     "jobset.sigs.k8s.io/jobset-name", "node"),
    "TrainingRuntime": Kind("trainer.kubeflow.org", "v1alpha1", "trainingruntimes", "", ""),
    "SparkApplication": Kind("sparkoperator.k8s.io", "v1beta2", "sparkapplications",
                             "sparkoperator.k8s.io/app-name", "spark-kubernetes-driver",
                             ",spark-role=driver"),
}  # fmt: skip
JOB_KINDS = ("PyTorchJob", "TrainJob", "SparkApplication")


class CustomObjects(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` used here."""

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict
    ) -> Any: ...
    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...
    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...


class CoreV1(Protocol):
    """The part of ``kubernetes.client.CoreV1Api`` used here."""

    def create_namespaced_config_map(self, namespace: str, body: dict) -> Any: ...
    def delete_namespaced_config_map(self, name: str, namespace: str) -> Any: ...
    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any: ...
    def read_namespaced_pod_log(
        self,
        name: str,
        namespace: str,
        container: str,
        timestamps: bool,
        since_seconds: int | None,
    ) -> str: ...


class JobError(RuntimeError):
    """A job did not succeed; the message says what happened and how to look at it."""


class JobFailed(JobError):
    """The operator marked the job Failed."""


class JobTimeout(JobError):
    """The job did not finish within the launcher's timeout."""


class JobDeleted(JobError):
    """The job disappeared while it was being watched (deleted by a person, a TTL, a cleanup)."""


@dataclass(frozen=True)
class JobOutcome:
    kind: str
    namespace: str
    name: str
    state: str
    """``succeeded``."""
    seconds: float
    conditions: tuple[dict[str, Any], ...]


def job_state(obj: dict[str, Any]) -> tuple[str, str]:
    """(state, detail) of a job object: state is pending, running, succeeded or failed; detail is
    the deciding condition's ``reason: message``.

    >>> job_state({"kind": "PyTorchJob", "status": {"conditions": [
    ...     {"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]}})
    ('running', 'Running')
    """
    status = obj.get("status") or {}
    if obj.get("kind") == "SparkApplication":
        app = status.get("applicationState") or {}
        state = app.get("state", "")
        detail = f"{state}: {app.get('errorMessage', '')}".rstrip(": ")
        if state == "COMPLETED":
            return "succeeded", detail
        if state in ("FAILED", "SUBMISSION_FAILED"):
            return "failed", detail
        return ("running" if state else "pending"), detail
    true = [c for c in status.get("conditions") or [] if c.get("status") == "True"]

    def describe(c: dict[str, Any]) -> str:
        text = ": ".join(x for x in (c.get("reason"), c.get("message")) if x)
        return text or c["type"]

    for wanted, state in ((("Failed",), "failed"), (("Succeeded", "Complete"), "succeeded")):
        hits = [c for c in true if c.get("type") in wanted]
        if hits:
            return state, describe(hits[-1])
    running = [c for c in true if c.get("type") in ("Running", "Restarting")]
    if running:
        return "running", describe(running[-1])
    return "pending", describe(true[-1]) if true else "no conditions yet"


def _status(error: BaseException) -> int | None:
    return getattr(error, "status", None)  # kubernetes.client.exceptions.ApiException


def _timestamp_key(ts: str) -> tuple[str, str]:
    # RFC 3339 with a variable number of fraction digits: compare seconds, then padded nanos.
    head, _, frac = ts.rstrip("Z").partition(".")
    return head, frac.ljust(9, "0")


class KubernetesLauncher:
    """Creates, follows and cleans up jobs through injected API objects (see the module doc)."""

    def __init__(
        self,
        custom: CustomObjects,
        core: CoreV1,
        *,
        poll_s: float = 10.0,
        cleanup: str = "on-success",
        stream_logs: bool = True,
        sink: Callable[[str], None] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if cleanup not in CLEANUP_POLICIES:
            raise ValueError(
                f"cleanup must be one of {', '.join(CLEANUP_POLICIES)}, got {cleanup!r}"
            )
        self.custom, self.core = custom, core
        self.poll_s, self.cleanup, self.stream_logs = poll_s, cleanup, stream_logs
        self.sink = sink or (lambda line: sys.stdout.write(line + "\n"))
        # looked up now, not when this module was imported (a test may have replaced time.sleep)
        self.clock, self.sleep = clock or time.monotonic, sleep or time.sleep
        self._seen: dict[str, tuple[str, str]] = {}  # pod -> timestamp of its last line shown

    # -- one run ------------------------------------------------------------------------------

    def run(self, objs: Sequence[dict[str, Any]], timeout_s: float) -> JobOutcome:
        """Create ``objs``, wait for their job, clean up per policy; see the module docstring.

        Raises:
            ValueError: the objects would be refused by the cluster's webhooks.
            JobFailed, JobTimeout, JobDeleted: the job did not succeed (cleaned up per policy).
        """
        require_valid(objs)
        job = _the_job(objs)
        created = self.submit(objs)
        try:
            outcome = self.wait(job, timeout_s)
        except JobFailed:
            self._cleanup(created, delete=self.cleanup == "always")
            raise
        except JobError:  # timeout or deleted: never leave a job running unless told to
            self._cleanup(created, delete=self.cleanup != "never")
            raise
        self._cleanup(created, delete=self.cleanup != "never")
        return outcome

    def submit(self, objs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create every object in order; returns the ones this call owns (for cleanup)."""
        created = []
        for obj in objs:
            kind, meta = obj["kind"], obj["metadata"]
            try:
                self._create(obj)
                log.info("created %s %s/%s", kind, meta["namespace"], meta["name"])
            except Exception as e:
                if _status(e) != 409:
                    raise
                self._reattach(obj)
            created.append(obj)
        return created

    def _create(self, obj: dict[str, Any]) -> None:
        ns = obj["metadata"]["namespace"]
        if obj["kind"] == "ConfigMap":
            self.core.create_namespaced_config_map(ns, obj)
            return
        k = KINDS[obj["kind"]]
        self.custom.create_namespaced_custom_object(k.group, k.version, ns, k.plural, obj)

    def _reattach(self, obj: dict[str, Any]) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        if kind not in JOB_KINDS:  # hash-named config / per-run runtime: the same content
            log.info("%s %s/%s exists already; reusing it", kind, meta["namespace"], meta["name"])
            return
        existing = self._get(obj)
        theirs = (existing.get("metadata", {}).get("labels") or {}).get(RUN_ID_LABEL)
        ours = (meta.get("labels") or {}).get(RUN_ID_LABEL)
        if theirs != ours:
            raise JobError(
                f"{kind} {meta['namespace']}/{meta['name']} exists and belongs to run {theirs!r}, "
                f"not {ours!r}: pick another run id or delete it (kubectl -n {meta['namespace']} "
                f"delete {kind.lower()} {meta['name']})"
            )
        state, detail = job_state(existing)
        if state == "failed":
            log.info("%s %s/%s of this run failed before (%s): submitting it again", kind,
                     meta["namespace"], meta["name"], detail)  # fmt: skip
            self._delete(obj)
            self._wait_deleted(obj)
            self._create(obj)
            return
        log.info(
            "%s %s/%s exists for this run: re-attaching", kind, meta["namespace"], meta["name"]
        )

    def _wait_deleted(self, obj: dict[str, Any], timeout_s: float = 600.0) -> None:
        """Wait until a deleted job is gone (its finalizers and pods take a while)."""
        start = self.clock()
        while True:
            try:
                self._get(obj)
            except Exception as e:
                if _status(e) == 404:
                    return
                raise
            if self.clock() - start >= timeout_s:
                meta = obj["metadata"]
                raise JobError(
                    f"{obj['kind']} {meta['namespace']}/{meta['name']} is still being deleted "
                    f"after {timeout_s:.0f} s; retry when it is gone"
                )
            self.sleep(self.poll_s)

    def _get(self, obj: dict[str, Any]) -> dict[str, Any]:
        k, meta = KINDS[obj["kind"]], obj["metadata"]
        return self.custom.get_namespaced_custom_object(
            k.group, k.version, meta["namespace"], k.plural, meta["name"]
        )

    def wait(self, job: dict[str, Any], timeout_s: float) -> JobOutcome:
        """Poll ``job`` until it succeeds (returned) or fails, times out or vanishes (raised)."""
        kind, ns, name = job["kind"], job["metadata"]["namespace"], job["metadata"]["name"]
        start, last = self.clock(), None
        hint = self._hint(job)
        while True:
            try:
                current = self._get(job)
            except Exception as e:
                if _status(e) != 404:
                    raise
                self._logs(job)
                raise JobDeleted(
                    f"{kind} {ns}/{name} was deleted while running (by someone, a TTL or a "
                    f"cleanup) after {self.clock() - start:.0f} s; its logs may be gone"
                ) from None
            state, detail = job_state(current)
            if (state, detail) != last:
                log.info("%s %s/%s: %s (%s)", kind, ns, name, state, detail)
                last = (state, detail)
            self._logs(job)
            elapsed = self.clock() - start
            if state == "succeeded":
                conditions = tuple((current.get("status") or {}).get("conditions") or [])
                return JobOutcome(kind, ns, name, state, elapsed, conditions)
            if state == "failed":
                raise JobFailed(
                    f"{kind} {ns}/{name} failed after {elapsed:.0f} s: {detail}. {hint}"
                )
            if elapsed >= timeout_s:
                raise JobTimeout(
                    f"{kind} {ns}/{name} did not finish within {timeout_s:.0f} s (last: {state}, "
                    f"{detail}). {hint}"
                )
            self.sleep(self.poll_s)

    def _hint(self, job: dict[str, Any]) -> str:
        k, meta = KINDS[job["kind"]], job["metadata"]
        return (
            f"Inspect: kubectl -n {meta['namespace']} describe {job['kind'].lower()} "
            f"{meta['name']}; kubectl -n {meta['namespace']} logs -l {k.pod_label}={meta['name']} "
            "--prefix"
        )

    def _logs(self, job: dict[str, Any]) -> None:
        """Show the log lines of the job's pods that were not shown yet."""
        if not self.stream_logs:
            return
        k, ns, name = KINDS[job["kind"]], job["metadata"]["namespace"], job["metadata"]["name"]
        try:
            pods = self.core.list_namespaced_pod(ns, label_selector=f"{k.pod_label}={name}{k.only}")
        except Exception as e:
            log.debug("listing pods of %s failed: %s", name, e)
            return
        for pod in _items(pods):
            pod_name = _field(_field(pod, "metadata"), "name")
            seen = self._seen.get(pod_name)
            since = None if seen is None else int(self.poll_s * 2 + 5)
            try:
                text = self.core.read_namespaced_pod_log(
                    pod_name, ns, container=k.container, timestamps=True, since_seconds=since
                )
            except Exception as e:  # not started yet, or already gone
                log.debug("no log from %s yet: %s", pod_name, e)
                continue
            for line in (text or "").splitlines():
                ts, _, message = line.partition(" ")
                key = _timestamp_key(ts)
                if seen is not None and key <= seen:
                    continue
                self.sink(f"[{pod_name}] {message}")
                self._seen[pod_name] = seen = key

    def _cleanup(self, created: Sequence[dict[str, Any]], *, delete: bool) -> None:
        if not delete:
            names = ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in created)
            log.info("leaving %s in place (cleanup=%s)", names, self.cleanup)
            return
        for obj in reversed(created):  # the job first: its pods go with it
            ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            try:
                self._delete(obj)
            except Exception as e:
                if _status(e) != 404:
                    log.warning("could not delete %s %s/%s: %s", obj["kind"], ns, name, e)

    def _delete(self, obj: dict[str, Any]) -> None:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap":
            self.core.delete_namespaced_config_map(name, ns)
        else:
            k = KINDS[obj["kind"]]
            self.custom.delete_namespaced_custom_object(k.group, k.version, ns, k.plural, name)
        log.info("deleted %s %s/%s", obj["kind"], ns, name)


def _the_job(objs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    jobs = [o for o in objs if o.get("kind") in JOB_KINDS]
    if len(jobs) != 1:
        raise ValueError(f"a run must hold exactly one job, got {len(jobs)}")
    return jobs[0]


def _items(listing: Any) -> list[Any]:
    return list(_field(listing, "items") or [])


def _field(obj: Any, name: str) -> Any:
    # The real client returns model objects (attributes); a fake may return plain dicts.
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
