"""What the operators' admission webhooks would refuse, checked before anything is submitted.

A CRD's OpenAPI schema cannot say "Master has exactly one replica" or "one container must be named
pytorch" (``pytorchReplicaSpecs`` is an open map), so a manifest that passes schema validation can
still be rejected by the cluster, or worse, accepted and hang. These rules restate the webhooks of
the Training Operator v1 (``pytorchjob_webhook.go``, release-1.9) and Trainer v2 (TrainJob), plus
the contract of the metarec trainer image (``python -m trainer.supervise``: torchrun, whose exit 1
on every failure the ExitCode restart policy would never restart)::

    problems = webhook_errors(obj)        # [] when the operator would accept it
    require_valid(objs)                   # ValueError listing every problem of a run's objects
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
REPLICA_TYPES = ("Master", "Worker")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
CLEAN_POD_POLICIES = ("None", "Running", "All")
RDZV_BACKENDS = ("c10d", "etcd", "etcd-v2")
NPROC_WORDS = ("auto", "cpu", "gpu")
V2_RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR",
                   "PET_MASTER_PORT")  # fmt: skip
TORCHRUN = ("torchrun", "torch.distributed.run")
SUPERVISE = "trainer.supervise"  # torchrun with its exit code mapped (trainer/supervise.py)
POD_FAILURE_ACTIONS = ("FailJob", "FailIndex", "Ignore", "Count")
JOBSET_ACTIONS = ("FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts")
JOB_FAILURE_REASONS = ("BackoffLimitExceeded", "DeadlineExceeded", "FailedIndexes",
                       "MaxFailedIndexesExceeded", "PodFailurePolicy")  # fmt: skip
JOBSET_RULE_NAME = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")
_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


def _name_errors(obj: dict[str, Any]) -> list[str]:
    name = obj.get("metadata", {}).get("name", "")
    if len(name) > 63 or not DNS1035.fullmatch(name):
        return [f"name {name!r} is not a DNS-1035 label (a-z, 0-9, '-', starts with a letter)"]
    return []


def _nproc_ok(value: Any) -> bool:
    return value in NPROC_WORDS or (str(value).isdigit() and int(value) >= 1)


def _plain_torchrun(command: list[str]) -> bool:
    text = " ".join(command)
    return any(t in text for t in TORCHRUN) and SUPERVISE not in text


def pytorchjob_errors(job: dict[str, Any]) -> list[str]:
    """The Training Operator v1 webhook's rules for a PyTorchJob."""
    errors = _name_errors(job)
    spec = job.get("spec", {})
    replicas = spec.get("pytorchReplicaSpecs") or {}
    if not replicas:
        errors.append("spec.pytorchReplicaSpecs is required")
    for rtype, rspec in replicas.items():
        where = f"pytorchReplicaSpecs.{rtype}"
        if rtype not in REPLICA_TYPES:
            errors.append(f"{where}: replica type must be Master or Worker")
        containers = rspec.get("template", {}).get("spec", {}).get("containers") or []
        if not containers:
            errors.append(f"{where}: the pod template has no containers")
        if any(not c.get("image") for c in containers):
            errors.append(f"{where}: every container needs an image")
        if not any(c.get("name") == "pytorch" for c in containers):
            errors.append(f"{where}: no container named 'pytorch' (the operator requires one)")
        policy = rspec.get("restartPolicy", "OnFailure")
        if policy not in RESTART_POLICIES:
            errors.append(f"{where}.restartPolicy must be one of {RESTART_POLICIES}")
        trainer = [c for c in containers if c.get("name") == "pytorch"]
        if policy == "ExitCode" and trainer and _plain_torchrun(trainer[0].get("command") or []):
            errors.append(
                f"{where}: restartPolicy ExitCode restarts only exit codes 128-255 and torchrun "
                f"exits 1 on every failure: run [python, -m, {SUPERVISE}] with torchrun's args"
            )
    if "Master" in replicas and replicas["Master"].get("replicas", 1) != 1:
        errors.append("pytorchReplicaSpecs.Master.replicas must be 1")
    if "Worker" in replicas and replicas["Worker"].get("replicas", 1) < 1:
        errors.append("pytorchReplicaSpecs.Worker.replicas must be >= 1")
    if "nprocPerNode" in spec and not _nproc_ok(spec["nprocPerNode"]):
        errors.append("nprocPerNode must be auto, cpu, gpu or a positive integer string")
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if "Worker" not in replicas:
            errors.append("elasticPolicy needs a Worker replica spec")
        if "nProcPerNode" in elastic and "nprocPerNode" in spec:
            errors.append("elasticPolicy.nProcPerNode and spec.nprocPerNode are exclusive")
        if elastic.get("rdzvBackend", "c10d") not in RDZV_BACKENDS:
            errors.append(f"elasticPolicy.rdzvBackend must be one of {RDZV_BACKENDS}")
        low, high = elastic.get("minReplicas"), elastic.get("maxReplicas")
        if low is not None and high is not None and low > high:
            errors.append(f"elasticPolicy.minReplicas {low} > maxReplicas {high}")
    policy = spec.get("runPolicy", {}).get("cleanPodPolicy", "None")
    if policy not in CLEAN_POD_POLICIES:
        errors.append(f"runPolicy.cleanPodPolicy must be one of {CLEAN_POD_POLICIES}")
    return errors


def trainjob_errors(job: dict[str, Any]) -> list[str]:
    """Trainer v2's rules for a TrainJob (the runtime is checked by :func:`runtime_errors`)."""
    errors = _name_errors(job)
    spec = job.get("spec", {})
    ref = spec.get("runtimeRef") or {}
    if not ref.get("name"):
        errors.append("spec.runtimeRef.name is required")
    if ref.get("kind", "ClusterTrainingRuntime") not in (
        "TrainingRuntime",
        "ClusterTrainingRuntime",
    ):
        errors.append("spec.runtimeRef.kind must be TrainingRuntime or ClusterTrainingRuntime")
    trainer = spec.get("trainer") or {}
    if trainer.get("numNodes", 1) < 1:
        errors.append("spec.trainer.numNodes must be >= 1")
    if "numProcPerNode" in trainer and not _nproc_ok(trainer["numProcPerNode"]):
        errors.append("spec.trainer.numProcPerNode must be auto, cpu, gpu or a positive integer")
    reserved = [e["name"] for e in trainer.get("env", []) if e.get("name") in V2_RESERVED_ENV]
    if reserved:
        errors.append(f"spec.trainer.env sets {reserved}, which the Trainer reserves")
    command = trainer.get("command") or []
    if command and not any(t in " ".join(command) for t in (*TORCHRUN, SUPERVISE)):
        errors.append(
            f"spec.trainer.command must run torchrun (or {SUPERVISE}): Trainer v2 injects no RANK"
        )
    return errors


def runtime_errors(runtime: dict[str, Any]) -> list[str]:
    """A TrainingRuntime the torch plugin can drive: a replicated job ``node`` (the trainer step)
    with a container ``node``, ``mlPolicy.torch`` set and no ``numProcPerNode`` there (removed in
    Trainer v2.2; the TrainJob sets it)."""
    errors = _name_errors(runtime)
    spec = runtime.get("spec", {})
    torch = spec.get("mlPolicy", {}).get("torch")
    if torch is None:
        errors.append("spec.mlPolicy.torch is required for a torch runtime")
    elif "numProcPerNode" in torch:
        errors.append("spec.mlPolicy.torch.numProcPerNode was removed in Trainer v2.2")
    jobs = spec.get("template", {}).get("spec", {}).get("replicatedJobs") or []
    node = [j for j in jobs if j.get("name") == "node"]
    if not node:
        return [*errors, "no replicatedJob named 'node'"]
    labels = node[0].get("template", {}).get("metadata", {}).get("labels", {})
    if labels.get("trainer.kubeflow.org/trainjob-ancestor-step") != "trainer":
        errors.append(
            "replicatedJob node lacks trainer.kubeflow.org/trainjob-ancestor-step=trainer"
        )
    pod = node[0].get("template", {}).get("spec", {}).get("template", {}).get("spec", {})
    if not any(c.get("name") == "node" for c in pod.get("containers", [])):
        errors.append("replicatedJob node has no container named 'node'")
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        errors.append("the node pod's restartPolicy must be Never or OnFailure (a Job's rule)")
    containers = [c.get("name") for c in pod.get("containers", [])]
    errors += pod_failure_policy_errors(node[0]["template"].get("spec", {}), containers)
    errors += jobset_failure_policy_errors(spec.get("template", {}).get("spec", {}))
    return errors


def pod_failure_policy_errors(job: dict[str, Any], containers: Sequence[str]) -> list[str]:
    """Kubernetes' validation of a Job's ``podFailurePolicy`` (batch/v1, GA in 1.31)."""
    rules = job.get("podFailurePolicy", {}).get("rules")
    if rules is None:
        return []
    errors = []
    if job.get("template", {}).get("spec", {}).get("restartPolicy") != "Never":
        errors.append("podFailurePolicy needs the pod's restartPolicy Never")
    for i, rule in enumerate(rules):
        where = f"podFailurePolicy.rules[{i}]"
        if rule.get("action") not in POD_FAILURE_ACTIONS:
            errors.append(f"{where}.action must be one of {POD_FAILURE_ACTIONS}")
        on = rule.get("onExitCodes")
        if (on is None) == (rule.get("onPodConditions") is None):
            errors.append(f"{where}: exactly one of onExitCodes and onPodConditions")
        if on is None:
            continue
        if on.get("operator") not in ("In", "NotIn"):
            errors.append(f"{where}.onExitCodes.operator must be In or NotIn")
        if not on.get("values") or (on.get("operator") == "In" and 0 in on["values"]):
            errors.append(f"{where}.onExitCodes.values must be non-empty, without 0 for In")
        if "containerName" in on and on["containerName"] not in containers:
            errors.append(
                f"{where}.onExitCodes.containerName {on['containerName']} is no container"
            )
    return errors


def jobset_failure_policy_errors(jobset: dict[str, Any]) -> list[str]:
    """The JobSet webhook's rules for ``failurePolicy`` (JobSet >= 0.6, under every Trainer v2)."""
    policy = jobset.get("failurePolicy")
    if policy is None:
        return []
    errors = []
    if policy.get("maxRestarts", 0) < 0:
        errors.append("failurePolicy.maxRestarts must be >= 0")
    names = [j.get("name") for j in jobset.get("replicatedJobs", [])]
    for i, rule in enumerate(policy.get("rules", [])):
        where = f"failurePolicy.rules[{i}]"
        if not JOBSET_RULE_NAME.fullmatch(rule.get("name", "")):
            errors.append(f"{where}.name must match {JOBSET_RULE_NAME.pattern}")
        if rule.get("action") not in JOBSET_ACTIONS:
            errors.append(f"{where}.action must be one of {JOBSET_ACTIONS}")
        unknown = set(rule.get("onJobFailureReasons", [])) - set(JOB_FAILURE_REASONS)
        if unknown:
            errors.append(
                f"{where}.onJobFailureReasons {sorted(unknown)}: not a Job failure reason"
            )
        missing = set(rule.get("targetReplicatedJobs", [])) - set(names)
        if missing:
            errors.append(f"{where}.targetReplicatedJobs {sorted(missing)} are not replicatedJobs")
    return errors


def sparkapplication_errors(app: dict[str, Any]) -> list[str]:
    """spark-operator's requirements for a Python SparkApplication."""
    errors = _name_errors(app)
    spec = app.get("spec", {})
    for key in ("type", "mode", "image", "sparkVersion", "mainApplicationFile"):
        if not spec.get(key):
            errors.append(f"spec.{key} is required")
    if spec.get("type") not in (None, "Python", "Scala", "Java", "R"):
        errors.append("spec.type must be Python, Scala, Java or R")
    if not spec.get("driver", {}).get("serviceAccount"):
        errors.append("spec.driver.serviceAccount is required (the driver creates executor pods)")
    return errors


def webhook_errors(obj: dict[str, Any]) -> list[str]:
    """The admission rules of ``obj``'s kind ([] for kinds without extra rules)."""
    checks = {
        "PyTorchJob": pytorchjob_errors,
        "TrainJob": trainjob_errors,
        "TrainingRuntime": runtime_errors,
        "SparkApplication": sparkapplication_errors,
    }
    check = checks.get(obj.get("kind", ""))
    return check(obj) if check else []


def require_valid(objs: Sequence[dict[str, Any]]) -> None:
    """Raise if any object of a run would be refused, or refers to a missing runtime/ConfigMap.

    Raises:
        ValueError: every problem, one per line, prefixed with the object's kind and name.
    """
    problems = [
        f"{o.get('kind')} {o.get('metadata', {}).get('name')}: {e}"
        for o in objs for e in webhook_errors(o)
    ]  # fmt: skip
    names = {(o.get("kind"), o.get("metadata", {}).get("name")) for o in objs}
    for o in objs:
        ref = o.get("spec", {}).get("runtimeRef", {}) if o.get("kind") == "TrainJob" else {}
        if (
            ref.get("kind") == "TrainingRuntime"
            and ("TrainingRuntime", ref.get("name")) not in names
        ):
            problems.append(f"TrainJob {o['metadata']['name']}: runtime {ref.get('name')} missing")
        for cm in config_maps_referenced(o):
            if ("ConfigMap", cm) not in names:
                problems.append(f"{o.get('kind')} {o['metadata']['name']}: ConfigMap {cm} missing")
    problems += [f"{k} {n}: {e}" for k, n, e in volume_errors(objs)]
    if problems:
        raise ValueError("the cluster would refuse this run:\n  " + "\n  ".join(problems))


def volume_errors(objs: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(kind, name, problem) where a job would read its input from a path that no volume of its
    pod mounts, or write its output where no writable volume is mounted (the root filesystem is
    read-only: the run would fail in the pod, after scheduling and the image pull). The trainer's
    ``data.path`` / ``train.output_dir``, the ETL's ``--input`` / ``--output``; object-store URIs
    are not checked. A TrainJob's mounts are those of its TrainingRuntime."""
    runtimes = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "TrainingRuntime"}
    out = []
    for job in objs:
        kind, spec = job.get("kind"), job.get("spec", {})
        if kind == "PyTorchJob":
            pods, container = pod_specs(job), "pytorch"
            found = [c for p in pods for c in p["containers"] if c.get("name") == container]
            args = found[0].get("args", []) if found else []
            paths = [("data.path", _arg(args, "data.path="), False),
                     ("train.output_dir", _arg(args, "train.output_dir="), True)]  # fmt: skip
        elif kind == "TrainJob":
            runtime = runtimes.get(spec.get("runtimeRef", {}).get("name"))
            pods = pod_specs(runtime) if runtime else []
            found = [c for p in pods for c in p["containers"] if c.get("name") == "node"]
            args = spec.get("trainer", {}).get("args", [])
            paths = [("data.path", _arg(args, "data.path="), False),
                     ("train.output_dir", _arg(args, "train.output_dir="), True)]  # fmt: skip
        elif kind == "SparkApplication":
            found = [spec.get("driver", {})]
            flags = list(spec.get("arguments", []))
            options = dict(zip(flags, [*flags[1:], ""], strict=True))
            paths = [("--input", options.get("--input", ""), False),
                     ("--output", options.get("--output", ""), True)]  # fmt: skip
        else:
            continue
        if not found:
            continue
        mounts = [(m["mountPath"].rstrip("/") + "/", not m.get("readOnly", False))
                  for m in found[0].get("volumeMounts", [])]  # fmt: skip
        for key, path, need_write in paths:
            if not path.startswith("/"):  # unset, or an object-store URI
                continue
            under = [(len(m), w) for m, w in mounts if (path.rstrip("/") + "/").startswith(m)]
            if not under or (need_write and not max(under)[1]):  # the deepest mount decides
                what = "a writable volume" if need_write else "a volume"
                seen = ", ".join(f"{m}{'' if w else ' (read-only)'}" for m, w in mounts)
                out.append((kind, job["metadata"]["name"],
                            f"{key} {path} is not on {what} of the pod (mounts: {seen})"))  # fmt: skip
    return out


def _arg(args: Sequence[Any], prefix: str) -> str:
    """The last ``prefix<value>`` argument's value, unquoted (the trainer accepts "/x" and /x)."""
    values = [a[len(prefix) :] for a in args if isinstance(a, str) and a.startswith(prefix)]
    return values[-1].strip().strip("'\"") if values else ""


def config_maps_referenced(obj: dict[str, Any]) -> set[str]:
    """Names of the ConfigMaps mounted as volumes anywhere in ``obj``."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("configMap"), dict) and "name" in node["configMap"]:
                found.add(node["configMap"]["name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj)
    return found


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec inside a PyTorchJob or TrainingRuntime (for convention checks)."""
    if obj.get("kind") == "PyTorchJob":
        specs = obj["spec"]["pytorchReplicaSpecs"].values()
        return [r["template"]["spec"] for r in specs]
    if obj.get("kind") == "TrainingRuntime":
        jobs = obj["spec"]["template"]["spec"]["replicatedJobs"]
        return [j["template"]["spec"]["template"]["spec"] for j in jobs]
    return []


def inline_secret_errors(obj: dict[str, Any]) -> list[str]:
    """Env vars whose name says credential but whose value is written in the manifest."""
    errors: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for env in node.get("env", []) if isinstance(node.get("env"), list) else []:
                if _SECRET_NAME.search(env.get("name", "")) and "value" in env:
                    errors.append(f"env {env['name']} holds a literal value: use a Secret")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj)
    return errors
