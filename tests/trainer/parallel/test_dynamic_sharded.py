"""Dynamic tables over the sharded collection at world size 2 (gloo, CPU, spawned): with evictions,
a count threshold and a TTL table, over a small MixCache that prefetches, training equals one
process training the plain dynamic collection (no cache) on the union batches (rows, Adagrad state, maps,
dense layers, losses); and the 2-rank checkpoint resharded to 1 rank continues like the reference."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.dynamic_fixtures import dynamic_model
from tests.trainer.parallel.parity import (
    Case,
    assert_close_states,
    global_batch,
    layout,
    train_step,
)
from tests.trainer.parallel.spawn import run_spawned
from tests.trainer.test_dynamic import TIGHT
from trainer.cache import CacheConfig
from trainer.dynamic import physical_layout
from trainer.meta import outer_loss
from trainer.optim import build_optimizers
from trainer.parallel.env import ParallelEnv
from trainer.parallel.plan import ParallelConfig, build_sharding_plan
from trainer.parallel.reshard import merge_shards, reshard_states

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]
STEPS, MORE = 6, 2
CASE = Case("deepfm", "maml")
PARALLEL = ParallelConfig(cache=CacheConfig(enabled=True, capacity_rows=14, prefetch=True))


def _steps(model, opt, env: ParallelEnv | None, steps: range, prefetch: bool) -> list[float]:
    """Training steps on rank ``env.rank``'s share (one process: the union batches)."""
    world = 2 if env is None or env.world_size == 1 else env.world_size
    rank = None if env is None or env.world_size == 1 else env.rank
    losses = []
    for s in steps:
        batch = global_batch(s, world, rank)
        if not prefetch:
            losses.append(train_step(model, opt, batch, CASE.meta_cfg(), env))
            continue
        sparse = model.embeddings.lookup(batch)
        model.embeddings.prefetch(global_batch(s + 1, world, rank))
        normalizer = env.normalizer(batch.episode_mask.sum())
        loss, _ = outer_loss(model, sparse, batch, CASE.meta_cfg(), normalizer)
        loss.backward()
        env.reduce_dense_grads(model.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _copy(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def train_dynamic(env: ParallelEnv) -> dict:
    """Per rank: the dynamic model over a cached shard, prefetching the next batch."""
    model = dynamic_model(CASE, TIGHT, env, PARALLEL)
    opt = build_optimizers(CASE.optim_cfg(), model)
    losses = _steps(model, opt, env, range(STEPS), True)
    out = {
        "losses": losses,
        "dense": {k: v.clone() for k, v in model.state_dict().items()},
        "opt": opt.state_dict(),
        "emb": {k: _copy(v) for k, v in model.embeddings.state_dict().items()},
        "stats": model.embeddings.cache_stats(),
    }
    model.embeddings.close()
    return out


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> list[dict]:
    return run_spawned(train_dynamic, 2, tmp_path_factory.mktemp("dyn2"))


@pytest.fixture(scope="module")
def reference() -> dict:
    model = dynamic_model(CASE, TIGHT)
    opt = build_optimizers(CASE.optim_cfg(), model)
    losses = _steps(model, opt, None, range(STEPS), False)
    state = {k: v.clone() for k, v in model.embeddings.state_dict().items()}
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    more = _steps(model, opt, None, range(STEPS, STEPS + MORE), False)
    return {
        "losses": losses,
        "dense": dense,
        "emb": state,
        "more": more,
        "emb_more": {k: v.clone() for k, v in model.embeddings.state_dict().items()},
    }


def test_two_ranks_train_exactly_what_one_process_trains(world2, reference) -> None:
    per_rank, name = world2, "cached"
    summed = [sum(r["losses"][s] for r in per_rank) for s in range(STEPS)]
    assert summed == pytest.approx(reference["losses"], rel=1e-10, abs=1e-12)
    full = merge_shards([r["emb"] for r in per_rank])
    assert_close_states(full, reference["emb"], f"{name} embeddings")
    assert_close_states(per_rank[0]["dense"], reference["dense"], f"{name} dense")
    stats = per_rank[0]["stats"]
    assert stats["cache.evictions"] > 0 and stats["dynamic.rows_used"] <= sum(
        t.capacity for t in TIGHT
    )
    assert stats["dynamic.admissions"] > 0 and stats["dynamic.evictions"] > 0
    assert stats["dynamic.expirations"] > 0 and stats["dynamic.fallback_ids"] > 0
    # The maps are replicated: both ranks hold the same ones.
    for key, value in per_rank[0]["emb"].items():
        if key.startswith("dynamic."):
            assert torch.equal(value, per_rank[1]["emb"][key]), key


def test_a_two_rank_checkpoint_resharded_to_one_rank_continues_like_the_reference(
    world2, reference
) -> None:
    per_rank = world2
    env = ParallelEnv.single_process(torch.device("cpu"))
    model = dynamic_model(CASE, TIGHT, env, ParallelConfig())
    phys = physical_layout(layout(), TIGHT)
    plan = build_sharding_plan(phys, 1, CASE.model_cfg(), ParallelConfig(), torch.float64)
    (shard,) = reshard_states([r["emb"] for r in per_rank], plan)
    model.embeddings.load_state_dict(shard)
    model.load_state_dict(per_rank[0]["dense"])
    opt = build_optimizers(CASE.optim_cfg(), model)
    opt.load_state_dict(per_rank[0]["opt"])
    more = _steps(model, opt, env, range(STEPS, STEPS + MORE), False)
    assert more == pytest.approx(reference["more"], rel=1e-10, abs=1e-12)
    state = model.embeddings.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("sharding.")}
    assert_close_states(state, reference["emb_more"], "resharded embeddings")
