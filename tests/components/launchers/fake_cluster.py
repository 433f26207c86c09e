"""A fake Kubernetes API for the launcher tests: it records every request, stores created objects,
plays back a script of job statuses (one step per read of the job) and serves pod logs that grow
as the job runs. Errors are the real client's ``ApiException`` with the real status codes."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from kubernetes.client.exceptions import ApiException

from components.launchers.render import TrainRunParams, render_run
from components.launchers.render_etl import EtlRunParams, render_etl_run

DELETED = "DELETED"
JOB_PLURALS = {"pytorchjobs": "PyTorchJob", "trainjobs": "TrainJob",
               "sparkapplications": "SparkApplication"}  # fmt: skip


def _cond(*types: str, reason: str = "", message: str = "") -> dict[str, Any]:
    out = [{"type": t, "status": "True"} for t in types]
    if reason:
        out[-1].update(reason=reason, message=message)
    return {"conditions": out}


def _spark(state: str, error: str = "") -> dict[str, Any]:
    app = {"state": state}
    if error:
        app["errorMessage"] = error
    return {"applicationState": app}


# kind -> outcome -> statuses the operator reports, read after read.
SCRIPTS: dict[str, dict[str, list[Any]]] = {
    "PyTorchJob": {
        "succeeded": [_cond("Created"), _cond("Created", "Running"), _cond("Created", "Running"),
                      _cond("Created", "Succeeded", reason="PyTorchJobSucceeded",
                            message="PyTorchJob metarec-train-r1 successfully completed.")],
        "failed": [_cond("Created", "Running"),
                   _cond("Created", "Failed", reason="PyTorchJobFailed",
                         message="pod metarec-train-r1-master-0 exited with code 2")],
        "running": [_cond("Created", "Running")],
        "deleted": [_cond("Created", "Running"), _cond("Created", "Running"), DELETED],
    },
    "TrainJob": {
        "succeeded": [{}, _cond("Created"), _cond("Complete", reason="JobSetCompleted")],
        "failed": [_cond("Created"), _cond("Failed", reason="JobSetFailed",
                                           message="jobset failed: node-0 backoff")],
        "running": [_cond("Created")],
        "deleted": [_cond("Created"), DELETED],
    },
    "SparkApplication": {
        "succeeded": [{}, _spark("SUBMITTED"), _spark("RUNNING"), _spark("COMPLETED")],
        "failed": [_spark("RUNNING"), _spark("FAILED", "driver exited with code 2")],
        "running": [_spark("RUNNING")],
        "deleted": [_spark("RUNNING"), DELETED],
    },
}  # fmt: skip


class FakeClock:
    """``clock`` and ``sleep`` for the launcher: sleeping advances time instantly."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeCluster:
    """CustomObjectsApi and CoreV1Api in one object (pass it as both)."""

    def __init__(self, script: list[Any] | None = None, pods: int = 2) -> None:
        self.script = script or []
        self.pods = pods
        self.calls: list[tuple[str, tuple, dict]] = []
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.reads = 0
        self.log_lines: dict[str, list[str]] = {}

    def _record(self, method: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((method, args, kwargs))

    def methods(self) -> list[str]:
        return [c[0] for c in self.calls]

    # -- CustomObjectsApi --------------------------------------------------------------------

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self._record("create_namespaced_custom_object", group, version, namespace, plural,
                     body["metadata"]["name"])  # fmt: skip
        return self._store((plural, namespace, body["metadata"]["name"]), body)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._record("get_namespaced_custom_object", group, version, namespace, plural, name)
        key = (plural, namespace, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        if plural in JOB_PLURALS and self.script:
            step = self.script[min(self.reads, len(self.script) - 1)]
            self.reads += 1
            if step == DELETED:
                del self.objects[key]
                raise ApiException(status=404, reason="Not Found")
            self.objects[key]["status"] = copy.deepcopy(step)
            self._grow_logs(name)
        return copy.deepcopy(self.objects[key])

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._record("delete_namespaced_custom_object", group, version, namespace, plural, name)
        if self.objects.pop((plural, namespace, name), None) is None:
            raise ApiException(status=404, reason="Not Found")

    # -- CoreV1Api ---------------------------------------------------------------------------

    def create_namespaced_config_map(self, namespace, body):
        self._record("create_namespaced_config_map", namespace, body["metadata"]["name"])
        return self._store(("configmaps", namespace, body["metadata"]["name"]), body)

    def delete_namespaced_config_map(self, name, namespace):
        self._record("delete_namespaced_config_map", namespace, name)
        if self.objects.pop(("configmaps", namespace, name), None) is None:
            raise ApiException(status=404, reason="Not Found")

    def list_namespaced_pod(self, namespace, label_selector):
        self._record("list_namespaced_pod", namespace, label_selector=label_selector)
        job = label_selector.split(",")[0].split("=")[1]
        return {"items": [{"metadata": {"name": p}} for p in self.log_lines if p.startswith(job)]}

    def read_namespaced_pod_log(self, name, namespace, container, timestamps, since_seconds):
        self._record("read_namespaced_pod_log", namespace, name, container=container,
                     since_seconds=since_seconds)  # fmt: skip
        if name not in self.log_lines:
            raise ApiException(status=400, reason="container is waiting to start")
        # the whole log every time (a superset of what since_seconds asks for): the launcher
        # must show each line once
        return "\n".join(self.log_lines[name]) + "\n"

    # -- helpers -----------------------------------------------------------------------------

    def _store(self, key: tuple[str, str, str], body: dict[str, Any]) -> dict[str, Any]:
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[key] = copy.deepcopy(body)
        return body

    def _grow_logs(self, job: str) -> None:
        """Each read of the job: every pod prints one more line (varying fraction digits)."""
        n = self.reads
        for i in range(self.pods):
            pod = f"{job}-pod-{i}"
            lines = self.log_lines.setdefault(pod, [])
            frac = ("5", "25", "123456789")[n % 3]
            lines.append(f"2026-11-01T00:00:{n:02d}.{frac}Z step {n} on {pod}")


def objects_for(kind: str, run_id: str = "r1") -> list[dict[str, Any]]:
    """A real render of a run of ``kind`` (the objects the launcher would get): rendered once per
    kind and run id in a process, a fresh copy per call (launchers and tests change them)."""
    return copy.deepcopy(list(_render(kind, run_id)))


@cache
def _render(kind: str, run_id: str) -> tuple[dict[str, Any], ...]:
    if kind == "SparkApplication":
        params = EtlRunParams(run_id=run_id, input="/data/raw", output="/data/episodes",
                              start="2026-11-01T00", end="2026-11-02T00")  # fmt: skip
        return tuple(render_etl_run(params))
    variant = "pytorchjob-cpu" if kind == "PyTorchJob" else "trainjob-cpu"
    params = TrainRunParams(run_id=run_id, variant=variant, overrides=("data.path=/data/e",))
    return tuple(render_run(params))


def run_scenario(
    cluster: FakeCluster,
    kind: str,
    outcome: str,
    *,
    cleanup: str = "on-success",
    timeout_s: float = 3600.0,
    objs: list[dict[str, Any]] | None = None,
    script: list[Any] | None = None,
) -> tuple[Any, list[str]]:
    """Run a launcher against ``cluster`` playing ``script`` (default ``SCRIPTS[kind][outcome]``).

    Returns:
        (the JobOutcome, or the exception raised, and the log lines the launcher showed)
    """
    from components.launchers.kubernetes import KubernetesLauncher

    cluster.script = SCRIPTS[kind][outcome] if script is None else script
    clock, shown = FakeClock(), []
    launcher = KubernetesLauncher(cluster, cluster, poll_s=30.0, cleanup=cleanup,
                                  sink=shown.append, clock=clock, sleep=clock.sleep)  # fmt: skip
    try:
        result: Any = launcher.run(objs or objects_for(kind), timeout_s=timeout_s)
    except Exception as e:  # the tests assert on the type and message
        result = e
    return result, shown
