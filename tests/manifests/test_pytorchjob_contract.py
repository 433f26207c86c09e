"""The job contract: the CPU variants' pods, started here as one local process each with the
environment the operator would inject and the container's command and args exactly as rendered
(``python -m trainer.supervise`` + torchrun's arguments; config from the rendered ConfigMap, PVCs ->
local directories holding synthetic episodes), train to the end and exit 0, as a single job of the
expected world size; a bad run (missing episodes) exits 2 in every pod, the code both operators
fail the job on at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.launchers.local_cluster import pod_commands, run_job_locally
from components.launchers.render import TrainRunParams, job_of, render_run
from trainer.data.synthetic import write_synthetic_episodes

DATA = "/data/episodes/interval=2026110100-2026110200"


@pytest.fixture(scope="module")
def claims(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("volumes")
    write_synthetic_episodes(root / "data" / DATA.removeprefix("/data/"), num_tasks=40,
                             episodes_per_task=2, num_buckets=2)  # fmt: skip
    (root / "runs").mkdir()
    return {"metarec-data": str(root / "data"), "metarec-runs": str(root / "runs")}


def _run(
    variant: str, claims: dict[str, str], tmp_path: Path, *extra: str, **params
) -> tuple[dict, Path]:
    overrides = (f"data.path={DATA}", *extra)
    objs = render_run(TrainRunParams(run_id="ci", variant=variant, overrides=overrides, **params))
    codes = run_job_locally(objs, claims, timeout_s=420, log_dir=tmp_path)
    logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}
    assert codes == [0] * len(codes), logs
    job = job_of(objs)
    return job, Path(claims["metarec-runs"]) / job["metadata"]["name"]


def _assert_trained(run_dir: Path, world_size: int, steps: int) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in records) == steps
    assert json.loads((run_dir / "eval.json").read_text())["splits"]
    (last,) = sorted((run_dir / "checkpoints").glob("step-*"))[-1:]
    assert len(list(last.glob("rank-*.pt"))) == world_size  # one shard per rank: one job


@pytest.mark.multiprocess
def test_pytorchjob_cpu_pods_train_as_one_job(claims: dict[str, str], tmp_path: Path):
    job, run_dir = _run("pytorchjob-cpu", claims, tmp_path)
    assert job["kind"] == "PyTorchJob"
    _assert_trained(run_dir, world_size=2, steps=6)


@pytest.mark.multiprocess
def test_trainjob_cpu_nodes_train_as_one_job(claims: dict[str, str], tmp_path: Path):
    job, run_dir = _run("trainjob-cpu", claims, tmp_path)
    assert job["kind"] == "TrainJob"
    _assert_trained(run_dir, world_size=2, steps=6)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_elastic_pytorchjob_rendezvous_over_c10d(claims: dict[str, str], tmp_path: Path):
    # the GPU overlay's elastic variant, made to fit a CPU machine by run parameters only
    small = ('train.device="cpu"', "train.steps=4", "data.batch_episodes=8",
             "eval.max_episodes=16", "model.mlp=[32,16]")  # fmt: skip
    job, run_dir = _run("pytorchjob-elastic", claims, tmp_path, *small, nproc_per_node=1,
                        gpus_per_node=0)  # fmt: skip
    assert "elasticPolicy" in job["spec"]
    _assert_trained(run_dir, world_size=2, steps=4)


@pytest.mark.multiprocess
def test_a_user_error_exits_2_in_every_pod(claims: dict[str, str], tmp_path: Path):
    missing = "data.path=/data/episodes/interval=1999010100-1999010200"
    params = TrainRunParams(run_id="bad", variant="pytorchjob-cpu", overrides=(missing,))
    objs = render_run(params)
    codes = run_job_locally(objs, claims, timeout_s=240, log_dir=tmp_path)
    logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")}
    assert codes == [2, 2], logs  # fail at once: ExitCode (v1) and podFailurePolicy (v2)
    assert all("trainer.supervise: rank" in text and "exit 2" in text for text in logs.values())


def test_injected_environment_follows_the_operator(tmp_path: Path):
    objs = render_run(TrainRunParams(run_id="e", variant="pytorchjob-gpu", nodes=3,
                                     overrides=(f"data.path={DATA}",)))  # fmt: skip
    pods = pod_commands(objs, {"metarec-data": "/d", "metarec-runs": "/r"}, tmp_path, 40000,
                        python="/venv/bin/python")  # fmt: skip
    assert [p[0] for p in pods] == [f"metarec-train-e-{r}" for r in
                                    ("master-0", "worker-0", "worker-1")]  # fmt: skip
    for rank, (_, cmd, env) in enumerate(pods):
        assert env["RANK"] == env["PET_NODE_RANK"] == str(rank)  # pod rank, Master first
        assert env["WORLD_SIZE"] == "6"  # 3 pods x nprocPerNode 2
        assert env["PET_NNODES"] == "3" and env["PET_NPROC_PER_NODE"] == "2"
        assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "127.0.0.1"
        assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "40000"
        assert env["NCCL_DEBUG"] == "WARN"
        assert cmd[:5] == ["/venv/bin/python", "-m", "trainer.supervise", "-m", "trainer"]
        assert f"data.path=/d/{DATA.removeprefix('/data/')}" in cmd
        config = Path(cmd[cmd.index("--config") + 1])
        assert (
            config.read_text()
            == next(o for o in objs if o["kind"] == "ConfigMap")["data"]["trainer.toml"]
        )
