"""What each operator decides when a training pod's container exits with a given code, computed from
the policy fields of rendered manifests by the operators' documented rules (the first failure of a
fresh job; no cluster here, so the rules are restated, with their sources):

- Training Operator v1 (PyTorchJob), release-1.9:
  ``pkg/controller.v1/common/pod.go`` ReconcilePods: a Failed pod is deleted and recreated when its
  replica's restartPolicy is ExitCode and ``train.IsRetryableExitCode(code)``, or OnFailure/Always;
  ExitCode with any other code sets JobFailed. ``pkg/util/train/train_util.go``:
  ``IsRetryableExitCode`` is ``code >= 128``. ``pkg/controller.v1/common/job.go`` /
  ``pkg/core/job.go``: failures past ``runPolicy.backoffLimit`` fail the job (0: the first one).
  ``pkg/apis/kubeflow.org/v1/pytorch_defaults.go``: an unset restartPolicy is OnFailure.
- Trainer v2 (TrainJob) builds a JobSet from the TrainingRuntime's template; then
  Kubernetes ``pkg/controller/job/pod_failure_policy.go``: the first podFailurePolicy rule whose
  onExitCodes match decides (FailJob: the Job fails with reason PodFailurePolicy; Ignore: not
  counted; Count: counted); ``job_controller.go``: more counted failures than backoffLimit fail the
  Job with reason BackoffLimitExceeded, fewer replace the pod. A pod restartPolicy OnFailure
  restarts the container in place (counted against backoffLimit) and allows no podFailurePolicy.
  JobSet ``pkg/controllers/failure_policy.go``: no failurePolicy fails the JobSet; else the first
  rule whose onJobFailureReasons and targetReplicatedJobs match (empty = any) gives the action, none
  matching gives RestartJobSet; RestartJobSet fails once the restarts reach maxRestarts.
"""

from __future__ import annotations

from typing import Any

RESTART, FAIL, SUCCEED = "restart", "fail", "succeed"
V1_DEFAULT_RESTART_POLICY = "OnFailure"
JOB_DEFAULT_BACKOFF_LIMIT = 6


def pytorchjob_decisions(job: dict[str, Any], exit_code: int) -> dict[str, str]:
    """Replica type -> what the Training Operator v1 does when that replica's pod exits so."""
    spec = job["spec"]
    backoff = spec.get("runPolicy", {}).get("backoffLimit")
    out = {}
    for rtype, replica in spec["pytorchReplicaSpecs"].items():
        policy = replica.get("restartPolicy", V1_DEFAULT_RESTART_POLICY)
        if exit_code == 0:
            out[rtype] = SUCCEED
            continue
        retryable = policy in ("OnFailure", "Always") or (policy == "ExitCode" and exit_code >= 128)
        within_backoff = backoff is None or backoff >= 1
        out[rtype] = RESTART if retryable and within_backoff else FAIL
    return out


def _exit_codes_match(on: dict[str, Any] | None, container: str, exit_code: int) -> bool:
    if on is None or on.get("containerName", container) != container:
        return False
    inside = exit_code in on["values"]
    return inside if on["operator"] == "In" else not inside


def job_failure_reason(job: dict[str, Any], container: str, exit_code: int) -> str | None:
    """The reason a batch/v1 Job fails with when one of its pods' ``container`` exits non-zero,
    or None when the Job replaces the pod itself."""
    backoff = job.get("backoffLimit", JOB_DEFAULT_BACKOFF_LIMIT)
    if job["template"]["spec"].get("restartPolicy") != "OnFailure":
        for rule in job.get("podFailurePolicy", {}).get("rules", []):
            if not _exit_codes_match(rule.get("onExitCodes"), container, exit_code):
                continue  # onPodConditions rules do not match a plain exit
            if rule["action"] == "FailJob":
                return "PodFailurePolicy"
            if rule["action"] == "Ignore":
                return None
            break  # Count: the default below
    return "BackoffLimitExceeded" if backoff < 1 else None


def trainjob_decision(runtime: dict[str, Any], exit_code: int, container: str = "node") -> str:
    """What Trainer v2 (JobSet over batch/v1 Jobs) does when a trainer pod of ``runtime`` exits."""
    jobset = runtime["spec"]["template"]["spec"]
    (rjob,) = [j for j in jobset["replicatedJobs"] if j["name"] == "node"]
    if exit_code == 0:
        return SUCCEED
    reason = job_failure_reason(rjob["template"]["spec"], container, exit_code)
    if reason is None:
        return RESTART  # of that pod only, by the Job
    policy = jobset.get("failurePolicy")
    if policy is None:
        return FAIL
    action = "RestartJobSet"
    for rule in policy.get("rules", []):
        reasons = rule.get("onJobFailureReasons") or [reason]
        targets = rule.get("targetReplicatedJobs") or [rjob["name"]]
        if reason in reasons and rjob["name"] in targets:
            action = rule["action"]
            break
    if action == "FailJobSet":
        return FAIL
    if action == "RestartJobSetAndIgnoreMaxRestarts":
        return RESTART
    return RESTART if policy.get("maxRestarts", 0) >= 1 else FAIL
