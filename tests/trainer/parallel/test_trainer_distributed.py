"""The training loop at world size 2 through its real entry points: ``torchrun -m trainer``,
``metarec train --nproc 2`` and PyTorchJob pods each running ``torchrun -m trainer`` with the
operator's variables. Each run ends with the dense parameters and embedding rows of the
single-process run over the union of the ranks' batches (MAML, FOMAML, plain); evaluation on every
rank equals single-process evaluation; a run resumed at world size 2 equals the uninterrupted one;
another world size is refused unless resharded; a rank that raises fails the job with its error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer.parallel.loop_reference import (
    assert_matches_reference,
    checkpoint_shards,
    eval_splits,
    reference_run,
    run_overrides,
)
from tests.trainer.run_helpers import write_episodes
from trainer.config import load_trainer_config
from trainer.logging_utils import read_jsonl
from trainer.parallel.env import ParallelEnv
from trainer.parallel.launch import free_port, spawn_local
from trainer.parallel.reshard import merge_shards
from trainer.trainer import Trainer

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parents[3]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK")  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("dist-loop") / "interval")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("PET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


def _run(commands: list[tuple[list[str], dict[str, str]]], timeout: float = 150) -> list[tuple]:
    """Start every command at once (pods start together); ``(returncode, output)`` of each."""
    procs = [
        subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for cmd, env in commands
    ]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
        return [(p.returncode, log) for p, log in zip(procs, logs, strict=True)]
    finally:
        for p in procs:
            p.kill()


def _ok(results: list[tuple]) -> None:
    for code, out in results:
        assert code == 0, out[-6000:]


# ------------------------------------------------------------------------ the three launchers
@pytest.fixture(scope="module")
def torchrun_maml(data: Path, tmp_path_factory) -> Path:
    """``torchrun --nproc_per_node=2 -m trainer`` (MAML, DLRM): 6 steps, checkpoint at 3 and 6."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "trainer", "--config", "debug",
           *run_overrides(data, out, **{"meta.mode": "maml"})]  # fmt: skip
    _ok(_run([(cmd, _env())]))
    return out


def test_torchrun_maml_equals_the_single_process_run(torchrun_maml, data, tmp_path) -> None:
    reference = reference_run(data, tmp_path / "ref", 2, **{"meta.mode": "maml"})
    assert_matches_reference(checkpoint_shards(torchrun_maml), reference)
    # the log shows the traffic of each collective per step, and the plan is saved with the config
    train = [r for r in read_jsonl(torchrun_maml / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    for r in train:
        assert r["episodes_per_step"] == 16 and r["comm.bytes_per_sample"] > 0
        for name in ("splits", "ids", "rows", "grads", "dense"):
            assert r[f"comm.{name}.calls"] == 1 and r[f"comm.{name}.bytes"] > 0, (name, r)
    plan = (torchrun_maml / "sharding_plan.json").read_text()
    assert '"world_size": 2' in plan


def test_metarec_train_nproc_2_fomaml_warm_started_from_one_process_equals_it(
    data, tmp_path
) -> None:
    """Incremental training after a scale change: a single-process run's checkpoint warm starts a
    2-rank run (each rank takes its rows of the saved table), which then matches the
    single-process run warm started from the same checkpoint."""
    day1_overrides = run_overrides(
        data, tmp_path / "day1", **{"meta.mode": "fomaml", "model.arch": "deepfm",
                                    "train.steps": 3, "eval.splits": []}
    )  # fmt: skip
    day1 = Trainer(load_trainer_config("debug", day1_overrides)).build()
    day1.fit()
    day1.close()
    out = tmp_path / "run"
    extra = {"meta.mode": "fomaml", "model.arch": "deepfm",
             "checkpoint.warm_start": str(tmp_path / "day1")}  # fmt: skip
    cmd = [PYTHON, "-m", "components.cli", "train", "--nproc", "2", "--config", "debug",
           *run_overrides(data, out, **extra)]  # fmt: skip
    _ok(_run([(cmd, _env())]))
    shards = checkpoint_shards(out)
    assert int(shards[0]["optimizers"]["dense"]["state"][0]["step"]) == 3 + 6  # Adam continued
    assert_matches_reference(shards, reference_run(data, tmp_path / "ref", 2, **extra))

    # a rank's user error fails the job: its one line, then metarec's, and a non-zero exit
    again = [*cmd, "checkpoint.resume=false"]
    ((code, log),) = _run([(again, _env())])
    assert code != 0
    assert "trainer: error:" in log and "already holds checkpoints" in log, log[-4000:]
    assert "metarec train: error: the torchrun job of 2 process(es) per host failed" in log


def operator_env(pod_rank: int, pods: int, port: int) -> dict[str, str]:
    """What the Kubeflow training operator (v1) injects into every container of pod ``pod_rank``
    (master 0, worker 1) of a Master + Worker PyTorchJob with ``nprocPerNode: "1"``; the master
    service ``<job>-master-0`` is 127.0.0.1 here."""
    return _env(
        PYTHONUNBUFFERED="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port), WORLD_SIZE=str(pods),
        RANK=str(pod_rank), PET_NODE_RANK=str(pod_rank), PET_NNODES=str(pods),
        PET_NPROC_PER_NODE="1",
    )  # fmt: skip


def test_pytorchjob_pods_running_torchrun_train_and_agree(data, tmp_path) -> None:
    """Each pod runs the container command of a manifest, ``torchrun -m trainer --config ...``
    with no rendezvous flags: torchrun takes them from the operator's ``PET_*`` variables."""
    out, extra, pods, port = (
        tmp_path / "run",
        {"meta.mode": "plain", "model.arch": "wide_deep"},
        2,
        free_port(),
    )
    container = [TORCHRUN, "-m", "trainer", "--config", "debug", *run_overrides(data, out, **extra)]
    _ok(_run([(container, operator_env(r, pods, port)) for r in range(pods)]))
    shards = checkpoint_shards(out)
    assert [s["embeddings"]["sharding.rank"] for s in shards] == [0, 1]
    assert_matches_reference(shards, reference_run(data, tmp_path / "ref", 2, **extra))


# ------------------------------------------------------------------------------- evaluation
def test_distributed_evaluation_equals_single_process_evaluation(
    torchrun_maml, data, tmp_path
) -> None:
    """The run's final evaluation (every rank scored its share of the first 40 episodes) against
    one process evaluating the same parameters: a warm start from the 2-rank checkpoint, which
    merges the shards into one table."""
    warm = {"checkpoint.warm_start": str(torchrun_maml / "checkpoints")}
    cfg = load_trainer_config("debug", run_overrides(data, tmp_path / "single", **warm))
    single = Trainer(cfg).build()
    try:
        assert not single.sharded and single.step == 0
        merged = merge_shards([s["embeddings"] for s in checkpoint_shards(torchrun_maml)])
        assert torch.equal(single.model.embeddings.state_dict()["emb.weight"], merged["emb.weight"])
        expected = single.evaluate()["valid"]
    finally:
        single.close()
    got = eval_splits(torchrun_maml)["valid"]
    for key in ("episodes", "tasks", "query_samples"):
        assert got[key] == expected[key], key
    assert got["episodes"] == 40
    for when in ("before", "after"):
        for key, value in expected[when].items():
            assert got[when][key] == pytest.approx(value, abs=1e-5), (when, key)


# ------------------------------------------------------------------- resume and world sizes
class _Crash(RuntimeError):
    pass


class _CrashingTrainer(Trainer):
    """Rank 1 dies before step ``crash_at`` (rank 0 is then waiting in that step's exchange)."""

    crash_at: int | None = None

    def train_step(self, batch, next_batch=None):
        if self.env.rank == 1 and self.step + 1 == self.crash_at:
            raise _Crash(f"rank 1 killed before step {self.crash_at}")
        return super().train_step(batch, next_batch)


def _train_rank(env: ParallelEnv, overrides: list[str], crash_at: int | None) -> None:
    trainer = _CrashingTrainer(load_trainer_config("debug", overrides), env)
    trainer.crash_at = crash_at
    trainer.build()
    try:
        trainer.fit()
    finally:
        trainer.close()


def test_resume_at_world_size_2_equals_the_uninterrupted_run(torchrun_maml, data, tmp_path) -> None:
    overrides = run_overrides(data, tmp_path / "run", **{"meta.mode": "maml"})
    with pytest.raises(Exception, match="rank 1 killed before step 5"):
        spawn_local(_train_rank, 2, (overrides, 5), timeout_s=60)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step-00000003"
    spawn_local(_train_rank, 2, (overrides, None), timeout_s=60)
    resumed, uninterrupted = checkpoint_shards(tmp_path / "run"), checkpoint_shards(torchrun_maml)
    for a, b in zip(resumed, uninterrupted, strict=True):
        assert a["step"] == b["step"] == 6 and a["reader"] == b["reader"]
        for part in ("model", "embeddings"):
            for key, value in b[part].items():
                assert (torch.equal(a[part][key], value) if isinstance(value, torch.Tensor)
                        else a[part][key] == value), (part, key)  # fmt: skip


def test_another_world_size_is_refused_unless_resharded(torchrun_maml, data, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(torchrun_maml, run)
    overrides = run_overrides(data, run, **{"meta.mode": "maml", "train.steps": 8})
    with pytest.raises(
        ValueError, match=r"saved by 2 rank\(s\), this run has 1.*checkpoint.reshard=true"
    ):
        Trainer(load_trainer_config("debug", overrides)).build()
    shards = checkpoint_shards(run)
    trainer = Trainer(load_trainer_config("debug", [*overrides, "checkpoint.reshard=true"])).build()
    try:
        assert trainer.step == 6
        for key, value in shards[0]["model"].items():
            assert torch.equal(trainer.model.state_dict()[key], value), key
        merged = merge_shards([s["embeddings"] for s in shards])
        table = trainer.model.embeddings.state_dict()
        assert all(torch.equal(table[k], v) for k, v in merged.items())
        # the same fraction of the epoch: 6 steps of 2 x 8 episodes = 12 steps of 8
        assert trainer.reader_state["step_in_epoch"] == 2 * shards[0]["reader"]["step_in_epoch"]
        trainer.fit()  # and it trains on from there
        assert trainer.step == 8
    finally:
        trainer.close()


def test_a_rank_that_raises_fails_the_job_with_its_traceback(data, tmp_path) -> None:
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "tests.trainer.parallel.failing_rank",
           "--config", "debug", *run_overrides(data, tmp_path / "run")]  # fmt: skip
    ((code, log),) = _run([(cmd, _env())], timeout=120)
    assert code != 0
    assert "InjectedFailure: injected failure on rank 1 at step 2" in log, log[-6000:]
    assert "rank: 1" in log and "Traceback" in log  # torchrun's root cause names the rank
    assert not (tmp_path / "run" / "eval.json").exists()
