"""World size 2 (gloo, spawned): collectives, gradient sync, VSI vs no VSI, distributed evaluation
and per-rank checkpoints. One spawned job computes everything (one process start-up); each test
asserts on its part. A failing rank is tested on its own job."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tests.trainer.parallel.parity import (
    Case,
    global_batch,
    layout,
    reference_model,
    train_step,
)
from tests.trainer.parallel.spawn import run_spawned
from trainer.checkpoint import Checkpointer, CheckpointError
from trainer.data.batch import EpisodeBatch
from trainer.meta import adapt, predict
from trainer.metrics import binary_metrics
from trainer.models import ModelConfig
from trainer.optim import build_optimizers
from trainer.parallel.apply import build_parallel_model
from trainer.parallel.dense_sync import allreduce_gradients
from trainer.parallel.env import ParallelEnv
from trainer.parallel.metrics_sync import global_binary_metrics
from trainer.parallel.plan import build_sharding_plan
from trainer.parallel.reshard import merge_shards
from trainer.parallel.sharded_embeddings import ShardedEmbeddingCollection

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]
CKPT_CASE = Case("deepfm", "maml", "dense+emb", clip=0.05)
VSI_CASE = Case("melu", "fomaml", "dense")
EVAL_CASE = Case("wide_deep", "maml", "dense+emb")


# ----------------------------------------------------------------------------- per-rank bodies
def _collectives(env: ParallelEnv) -> dict:
    r = env.rank
    gathered = env.comm.all_gather_rows(torch.arange(r + 2) + 10 * r, "gather")
    sums = env.reduce_sums({"a": r + 1.0, "b": 0.5})
    both, one, none = (nn.Parameter(torch.zeros(3)) for _ in range(3))
    both.grad = torch.full((3,), r + 1.0)
    if r == 1:
        one.grad = torch.tensor([1.0, 2.0, 3.0])
    allreduce_gradients([both, one, none], env.comm)
    grads = [None if p.grad is None else p.grad.tolist() for p in (both, one, none)]
    return {"gathered": [t.tolist() for t in gathered], "sums": sums, "grads": grads}


def _empty_rank(env: ParallelEnv) -> dict:
    """Rank 1 has no ids at all this step; rank 0 asks for ids 0..9 (id 0: a null row)."""
    plan = build_sharding_plan(
        layout(), env.world_size, ModelConfig(arch="deepfm", embedding_dim=4)
    )
    coll = ShardedEmbeddingCollection(plan, env.comm, layout().slot_feature, seed=1)
    ids = torch.arange(10) if env.rank == 0 else torch.zeros(0, dtype=torch.int64)
    batch = SimpleNamespace(ids=ids, inverse=torch.zeros(0, 1, 6, dtype=torch.int64))
    coll.lookup(batch)
    before = coll.rows
    before.emb.grad, before.linear.grad = torch.ones(len(ids), 4), torch.ones(len(ids), 1)
    coll.apply_gradients(0.1)
    coll.lookup(batch)
    after = coll.rows
    return {"shape": tuple(before.emb.shape), "moved": (after.emb - before.emb).tolist()}


def _without_vsi(batch: EpisodeBatch) -> EpisodeBatch:
    """The same episodes with every slot occurrence as its own id (no de-duplication)."""
    flat = batch.ids[batch.inverse].reshape(-1)
    inverse = torch.arange(flat.numel()).reshape(batch.inverse.shape)
    return dataclasses.replace(batch, ids=flat, inverse=inverse, task_rows=None)


def _vsi(env: ParallelEnv) -> dict:
    out = {}
    for variant in ("vsi", "no_vsi"):
        model, _ = build_parallel_model(
            VSI_CASE.model_cfg(), layout(), env, seed=0, dtype=torch.float64
        )
        opt = build_optimizers(VSI_CASE.optim_cfg(), model)
        env.comm_stats(reset=True)
        comm = []
        for s in range(2):
            batch = global_batch(s, env.world_size, env.rank)
            batch = batch if variant == "vsi" else _without_vsi(batch)
            train_step(model, opt, batch, VSI_CASE.meta_cfg(), env)
            comm.append(env.comm_stats(reset=True))
        out[variant] = {
            "dense": model.state_dict(),
            "emb": model.embeddings.state_dict(),
            "comm": comm,
        }
    return out


def _evaluation(env: ParallelEnv) -> dict:
    model, _ = build_parallel_model(EVAL_CASE.model_cfg(), layout(), env, dtype=torch.float64)
    batch = global_batch(0, env.world_size, env.rank)
    y, logits0, logits1, groups = _scores(model, batch)
    return {
        "before": global_binary_metrics(env, y, logits0, groups).to_dict(),
        "after": global_binary_metrics(env, y, logits1, groups).to_dict(),
    }


def _scores(model, batch: EpisodeBatch) -> tuple[np.ndarray, ...]:
    """Query labels, logits before and after adaptation, task ids of the real query samples."""
    sparse = model.embeddings.read(batch)
    K = batch.k_support
    mask = batch.query_mask & batch.episode_mask[:, None]
    logits0 = predict(model, sparse, batch)
    logits1 = predict(model, sparse, batch, adapt(model, sparse, batch, EVAL_CASE.meta_cfg()))
    tasks = batch.task_ids[:, None].expand_as(mask)
    return tuple(t[mask].numpy() for t in (batch.click[:, K:], logits0, logits1, tasks))


def _train(model, opt, env: ParallelEnv, steps: range) -> None:
    for s in steps:
        train_step(model, opt, global_batch(s, env.world_size, env.rank), CKPT_CASE.meta_cfg(), env)


def _checkpoint(env: ParallelEnv, root: str) -> dict:
    def build(seed: int):
        model, _ = build_parallel_model(
            CKPT_CASE.model_cfg(), layout(), env, seed=seed, dtype=torch.float64
        )
        return model, build_optimizers(CKPT_CASE.optim_cfg(), model)

    ckpt = Checkpointer(root, rank=env.rank, world_size=env.world_size, barrier=env.barrier_fn())
    model, opt = build(0)
    _train(model, opt, env, range(0, 2))
    state = {"model": model.state_dict(), "optim": opt.state_dict(),
             "embeddings": model.embeddings.state_dict()}  # fmt: skip
    ckpt.save(2, state)
    _train(model, opt, env, range(2, 4))
    uninterrupted = {"dense": model.state_dict(), "emb": model.embeddings.state_dict()}

    resumed, opt2 = build(seed=7)  # different start: only the checkpoint can make them equal
    loaded, info = ckpt.load()
    resumed.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optim"])
    resumed.embeddings.load_state_dict(loaded["embeddings"])
    _train(resumed, opt2, env, range(2, 4))
    return {
        "uninterrupted": uninterrupted,
        "resumed": {"dense": resumed.state_dict(), "emb": resumed.embeddings.state_dict()},
        "step": info["step"],
    }


def world2_job(env: ParallelEnv, root: str) -> dict:
    return {
        "collectives": _collectives(env),
        "empty_rank": _empty_rank(env),
        "vsi": _vsi(env),
        "evaluation": _evaluation(env),
        "checkpoint": _checkpoint(env, root),
    }


def failing_job(env: ParallelEnv) -> None:
    if env.rank == 1:
        raise ValueError("rank 1 fails on purpose")
    env.all_reduce_(torch.ones(1))  # rank 0 waits here for a peer that never comes


# ----------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[list[dict], Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return run_spawned(world2_job, 2, tmp_path_factory.mktemp("w2"), (str(root),)), root


def test_uneven_gather_sum_reduction_and_gradient_presence(job) -> None:
    results = [r["collectives"] for r in job[0]]
    for res in results:
        assert res["gathered"] == [[0, 1], [10, 11, 12]]
        assert res["sums"] == {"a": 3.0, "b": 1.0}
        # summed where any rank had a gradient (zeros elsewhere); None where no rank had one
        assert res["grads"] == [[3.0] * 3, [1.0, 2.0, 3.0], None]


def test_a_rank_without_ids_still_takes_part_in_the_exchanges(job) -> None:
    rank0, rank1 = (r["empty_rank"] for r in job[0])
    assert rank1 == {"shape": (0, 4), "moved": []}
    assert rank0["shape"] == (10, 4)
    moved = torch.tensor(rank0["moved"])
    assert torch.equal(moved[0], torch.zeros(4))  # the null row never moves
    # row-wise Adagrad's first step on a gradient of ones: -lr * 1 / sqrt(1) per weight
    torch.testing.assert_close(moved[1:], torch.full((9, 4), -0.1), rtol=0, atol=1e-6)


def test_vsi_sends_fewer_bytes_for_the_same_training(job) -> None:
    runs = [r["vsi"] for r in job[0]]
    for variant in ("dense", "emb"):
        for key, value in runs[0]["vsi"][variant].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(
                    runs[0]["no_vsi"][variant][key], value, rtol=1e-9, atol=1e-12
                )
    for step in range(2):
        with_vsi, without = runs[0]["vsi"]["comm"][step], runs[0]["no_vsi"]["comm"][step]
        for name in ("ids", "rows", "grads"):
            assert with_vsi[f"comm.{name}.calls"] == without[f"comm.{name}.calls"] == 1
            assert without[f"comm.{name}.bytes"] > 1.5 * with_vsi[f"comm.{name}.bytes"] > 0
        assert with_vsi["comm.dense.bytes"] == without["comm.dense.bytes"]


def test_evaluation_metrics_reduced_over_ranks_equal_single_process(job) -> None:
    model = reference_model(EVAL_CASE)
    y, logits0, logits1, groups = _scores(model, global_batch(0, 2, None))
    expected = {"before": binary_metrics(y, logits0, groups).to_dict(),
                "after": binary_metrics(y, logits1, groups).to_dict()}  # fmt: skip
    for res in job[0]:
        for when in ("before", "after"):
            assert res["evaluation"][when] == pytest.approx(expected[when], rel=1e-9)
    assert expected["before"]["samples"] > 10 and expected["after"] != expected["before"]


def test_checkpoint_at_world_size_2_resumes_exactly(job) -> None:
    results, root = job
    for res in results:
        ck = res["checkpoint"]
        assert ck["step"] == 2
        for part in ("dense", "emb"):
            for key, value in ck["uninterrupted"][part].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(ck["resumed"][part][key], value), (part, key)
    shards = sorted(p.name for p in (root / "step-00000002").glob("rank-*.pt"))
    assert shards == ["rank-00000.pt", "rank-00001.pt"]


def test_checkpoint_at_another_world_size_is_refused_or_resharded(job) -> None:
    _, root = job

    def reader(rank: int, world_size: int) -> Checkpointer:  # loading never waits on a barrier
        return Checkpointer(root, rank=rank, world_size=world_size, barrier=lambda: None)

    with pytest.raises(CheckpointError, match="saved by 2 ranks but this run has 4"):
        reader(0, 4).load()
    shards = [reader(r, 2).load()[0]["embeddings"] for r in range(2)]
    full = merge_shards(shards)  # the whole table, e.g. to reshard or export
    assert full["emb.weight"].shape == (layout().total_rows, 4)


def test_a_rank_that_raises_fails_the_job_with_its_error(tmp_path) -> None:
    with pytest.raises(Exception, match="rank 1 fails on purpose"):
        run_spawned(failing_job, 2, tmp_path)
