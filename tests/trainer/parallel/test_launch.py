"""The launch contract: processes started as a launcher starts them join one job, train with sharded
embeddings and match the single-process run.

- PyTorchJob: pods simulated as local processes, each given exactly the variables the Kubeflow
  training operator (v1) injects for a Master + Worker job with one process per pod;
- torchrun: ``python -m torch.distributed.run --standalone --nproc_per_node=2``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer.parallel import launch_probe
from tests.trainer.parallel.parity import assert_close_states, reference_run
from trainer.parallel.launch import free_port
from trainer.parallel.reshard import merge_shards

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]
REPO = Path(__file__).resolve().parents[3]
PROBE = ["-m", "tests.trainer.parallel.launch_probe"]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("PET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def operator_env(pod_rank: int, pods: int, port: int) -> dict[str, str]:
    """The v1 operator's variables for pod ``pod_rank`` (master 0, workers 1..), nprocPerNode auto.
    ``MASTER_ADDR`` would be ``<job>-master-0``; the pods are local processes here."""
    env = _clean_env()
    env.update({
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(port), "WORLD_SIZE": str(pods), "RANK": str(pod_rank),
        "PET_NODE_RANK": str(pod_rank), "PET_NNODES": str(pods), "PET_NPROC_PER_NODE": "auto",
    })  # fmt: skip
    return env


def _run(commands: list[tuple[list[str], dict[str, str]]]) -> None:
    procs = [
        subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for cmd, env in commands
    ]
    try:
        logs = [p.communicate(timeout=150)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)


def _check(out: Path, launcher: str, world_size: int) -> None:
    results = [torch.load(out / f"rank-{r}.pt", weights_only=False) for r in range(world_size)]
    assert [(r["launcher"], r["rank"], r["world_size"]) for r in results] == [
        (launcher, r, world_size) for r in range(world_size)
    ]
    ref = reference_run(launch_probe.CASE, world_size, launch_probe.STEPS)
    for r in results:
        assert_close_states(r["dense"], ref["dense"], f"rank {r['rank']} dense")
    assert_close_states(merge_shards([r["emb"] for r in results]), ref["emb"], "embeddings")


def test_pytorchjob_pods_join_and_match_the_single_process_run(tmp_path) -> None:
    pods, port = 2, free_port()
    _run(
        [
            ([sys.executable, *PROBE, str(tmp_path)], operator_env(r, pods, port))
            for r in range(pods)
        ]
    )
    _check(tmp_path, "pytorchjob", pods)


def test_torchrun_processes_join_and_match_the_single_process_run(tmp_path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *PROBE, str(tmp_path)]  # fmt: skip
    _run([(cmd, _clean_env())])
    _check(tmp_path, "torchrun", 2)
