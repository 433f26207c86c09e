"""Run a rendered PyTorchJob or TrainJob on this machine: one process per pod, each with the
container's command and args as rendered and the environment the operator would inject.

    objs = render_run(TrainRunParams(run_id="smoke", variant="pytorchjob-cpu",
                                     overrides=("data.path=/data/episodes",)))
    codes = run_job_locally(objs, claims={"metarec-data": "out/syn", "metarec-runs": "out/runs"})
    # [0, 0]: Master and Worker both exited 0

What a cluster would do and this does instead: volumes become local directories (a ConfigMap's
keys written as files, a PVC -> the directory given for its claim, an emptyDir -> a fresh temp
dir) and mount paths in args and env are rewritten to them, as if mounted; kubelet's ``$(VAR)``
expansion is applied; the image's ``python`` (the command is ``python -m trainer.supervise``) is
the interpreter given, this one by default; the operator's Service DNS name for the master becomes
127.0.0.1. Env per
:func:`pytorchjob_env` / :func:`trainjob_env` (anchors: training-operator release-1.9 envvar.go,
Trainer v2 torch plugin). It is the contract test of the manifests and a way to smoke-test a
manifest without a cluster; GPUs, images and the API server are what it cannot show.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.launchers.render import job_of

PYTORCHJOB_PORT = 23456
TRAINER_V2_PORT = 29500


def _total(job: dict[str, Any]) -> int:
    return sum(r.get("replicas", 1) for r in job["spec"]["pytorchReplicaSpecs"].values())


def pytorchjob_env(
    job: dict[str, Any], replica_type: str, index: int, master_addr: str, master_port: int
) -> dict[str, str]:
    """The variables the Training Operator v1 sets in every container of one replica's pod."""
    spec = job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    env = {"PYTHONUNBUFFERED": "1"}
    nproc = str(spec.get("nprocPerNode", "auto"))
    elastic = spec.get("elasticPolicy")
    if "Master" in replicas:
        rank = 0 if replica_type == "Master" else index + 1
        world = _total(job) * (int(nproc) if nproc.isdigit() else 1)
        env.update({
            "MASTER_ADDR": master_addr, "PET_MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port), "PET_MASTER_PORT": str(master_port),
            "WORLD_SIZE": str(world), "RANK": str(rank), "PET_NODE_RANK": str(rank),
        })  # fmt: skip
    env["PET_NPROC_PER_NODE"] = nproc
    if elastic is None:
        env["PET_NNODES"] = str(_total(job))
    else:
        workers = replicas["Worker"].get("replicas", 1)
        low, high = elastic.get("minReplicas"), elastic.get("maxReplicas")
        env["PET_NNODES"] = f"{low or high or workers}:{high or low or workers}"
        env["PET_RDZV_BACKEND"] = elastic.get("rdzvBackend", "c10d")
        env["PET_RDZV_ENDPOINT"] = f"{elastic.get('rdzvHost', master_addr)}:" + str(
            elastic.get("rdzvPort", master_port)
        )
        for key, var in (("maxRestarts", "PET_MAX_RESTARTS"), ("rdzvId", "PET_RDZV_ID"),
                         ("standalone", "PET_STANDALONE")):  # fmt: skip
            if key in elastic:
                env[var] = str(elastic[key]).lower()
    return env


def trainjob_env(
    job: dict[str, Any], node_rank: int, master_addr: str, master_port: int
) -> dict[str, str]:
    """The variables Trainer v2's torch plugin sets in the ``node`` container (no RANK/WORLD_SIZE)."""
    trainer = job["spec"].get("trainer", {})
    return {
        "PET_NNODES": str(trainer.get("numNodes", 1)),
        "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode", "auto")),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": str(master_port),
    }


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """kubelet's expansion of ``$(VAR)`` in command, args and env values: defined variables are
    substituted, ``$$`` is a literal ``$``, an undefined reference is left as written."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def map_paths(text: str, mounts: Mapping[str, str]) -> str:
    """``text`` with every path under a mount path rewritten to its local directory."""
    # One pass, longest mount first: a replacement (often under /tmp) is never mapped again.
    if not mounts:
        return text
    alternation = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
    pattern = rf"(?<![\w/.-])({alternation})(?=/|$|\s)"
    return re.sub(pattern, lambda m: mounts[m.group(1)], text)


def _pods(objs: Sequence[dict[str, Any]]) -> list[tuple[str, int, dict, dict]]:
    """(replica type, index, pod spec, container) per pod: Master first, like the operator."""
    job = job_of(objs)
    if job["kind"] == "PyTorchJob":
        out = []
        for rtype in ("Master", "Worker"):
            rspec = job["spec"]["pytorchReplicaSpecs"].get(rtype)
            if rspec is None:
                continue
            pod = rspec["template"]["spec"]
            container = next(c for c in pod["containers"] if c["name"] == "pytorch")
            out += [(rtype, i, pod, container) for i in range(rspec.get("replicas", 1))]
        return out
    runtime = next(o for o in objs if o["kind"] == "TrainingRuntime")
    rjob = next(j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]
                if j["name"] == "node")  # fmt: skip
    pod = rjob["template"]["spec"]["template"]["spec"]
    base = next(c for c in pod["containers"] if c["name"] == "node")
    trainer = job["spec"]["trainer"]
    container = {**base, **{k: trainer[k] for k in ("image", "command", "args") if k in trainer}}
    container["env"] = [*base.get("env", []), *trainer.get("env", [])]
    return [("node", i, pod, container) for i in range(trainer.get("numNodes", 1))]


def mount_dirs(
    pod: dict[str, Any],
    container: dict[str, Any],
    objs: Sequence[dict],
    claims: Mapping[str, str],
    scratch: Path,
) -> dict[str, str]:
    """Mount path -> local directory for ``container``'s mounts: a ConfigMap's keys written under
    ``scratch``, a PVC -> ``claims[claimName]``, an emptyDir -> a fresh directory in ``scratch``."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {}
    for m in container.get("volumeMounts", []):
        vol = volumes[m["name"]]
        if "configMap" in vol:
            where = scratch / m["name"]
            where.mkdir(parents=True, exist_ok=True)
            for key, text in maps[vol["configMap"]["name"]].items():
                (where / key).write_text(text)
        elif "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            if claim not in claims:
                raise ValueError(f"no local directory for PVC {claim}: pass claims[{claim!r}]")
            where = Path(claims[claim])
        elif "emptyDir" in vol:
            where = scratch / m["name"]
            where.mkdir(parents=True, exist_ok=True)
        else:
            raise ValueError(f"volume {m['name']}: only configMap, PVC and emptyDir run locally")
        mounts[m["mountPath"]] = str(where.resolve())
    return mounts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_commands(
    objs: Sequence[dict[str, Any]],
    claims: Mapping[str, str],
    scratch: Path,
    master_port: int,
    python: str = sys.executable,
) -> list[tuple[str, list[str], dict[str, str]]]:
    """(pod name, command, environment) of every pod of the job, ready to run here with the
    interpreter ``python``."""
    job = job_of(objs)
    name = job["metadata"]["name"]
    out = []
    for rtype, index, pod, container in _pods(objs):
        pod_name = f"{name}-{rtype.lower()}-{index}"
        mounts = mount_dirs(pod, container, objs, claims, scratch / pod_name)
        if job["kind"] == "PyTorchJob":
            injected = pytorchjob_env(job, rtype, index, "127.0.0.1", master_port)
        else:
            injected = trainjob_env(job, index, "127.0.0.1", master_port)
        env: dict[str, str] = {}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = map_paths(expand_vars(e["value"], env), mounts)
        for source in container.get("envFrom", []):
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            if not ref.get("optional"):
                raise ValueError(f"{pod_name}: envFrom {ref.get('name')} is required; no cluster")
        env.update(injected)
        if "/tmp" in mounts:
            env["TMPDIR"] = mounts["/tmp"]
        words = [*container.get("command", []), *container.get("args", [])]
        words = [map_paths(expand_vars(w, env), mounts) for w in words]
        if words and words[0] in ("python", "python3"):  # a PATH lookup in the image
            words = [python, *words[1:]]
        out.append((pod_name, words, env))
    return out


def run_job_locally(
    objs: Sequence[dict[str, Any]],
    claims: Mapping[str, str],
    *,
    timeout_s: float = 600.0,
    log_dir: str | Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> list[int]:
    """Start every pod of the rendered job as a local process and wait for all of them.

    Args:
        objs: a rendered run (:func:`~components.launchers.render.render_run`).
        claims: local directory for each PVC claim name the pods mount.
        timeout_s: processes still running then are killed (their code is then -9).
        log_dir: where each pod's output goes (``<pod>.log``); a temp dir by default.
        extra_env: added to every pod (e.g. ``PATH``); the pods otherwise inherit nothing from
            this process, as in a container.
        python: the interpreter that runs the image's ``python`` (e.g. a virtualenv built as the
            image's Dockerfile builds its environment).

    Returns:
        The exit code of every pod, in order (Master first), as ``trainer.supervise`` maps it: 0,
        2 for a user error, 128-255 for a retryable failure.
    """
    log_root = Path(log_dir or tempfile.mkdtemp(prefix="metarec-pods-"))
    log_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="metarec-volumes-"))
    base_env = {"PATH": os.environ.get("PATH", ""), **(extra_env or {})}
    procs = []
    for pod_name, cmd, env in pod_commands(objs, claims, scratch, _free_port(), python):
        out = (log_root / f"{pod_name}.log").open("w")
        procs.append(subprocess.Popen(cmd, env={**base_env, **env}, stdout=out, stderr=out))
    deadline = time.monotonic() + timeout_s
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            codes.append(p.wait())
    return codes
