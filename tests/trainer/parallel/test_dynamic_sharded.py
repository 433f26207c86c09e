"""Dynamic tables over the sharded collection at world size 2 (gloo, CPU, spawned), the id maps
sharded by id over the ranks: with evictions, a count threshold and a TTL table, over a small
MixCache that prefetches, training equals one process training the plain dynamic collection (no
cache) with 2 id shards on the union batches (rows, Adagrad state, maps, dense layers, losses).
Resharding: the 2-rank checkpoint loaded at 1 rank continues like the one-process run reloaded
with 1 id shard; a 1-process checkpoint loaded at 2 ranks scores every sample (every admitted id)
as the run that saved it."""

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
from trainer.dynamic import DynamicTableConfig, physical_layout
from trainer.meta import outer_loss
from trainer.optim import build_optimizers
from trainer.parallel.env import ParallelEnv
from trainer.parallel.plan import ParallelConfig, build_sharding_plan
from trainer.parallel.reshard import merge_shards, reshard_states

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]
STEPS, MORE = 6, 2
CASE = Case("deepfm", "maml")
PARALLEL = ParallelConfig(cache=CacheConfig(enabled=True, capacity_rows=14, prefetch=True))
LOADABLE = (  # each id shard of 2 has a slot for every id of its parity: no id is dropped
    DynamicTableConfig(feature="user", capacity=40, fallback_rows=3, admit_count=2),
    DynamicTableConfig(feature="ad", capacity=22, eviction="lfu"),
    DynamicTableConfig(feature="tags", capacity=12, eviction="ttl", ttl_steps=1),
)


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


@torch.no_grad()
def _scores(model, world: int, rank: int | None) -> list[torch.Tensor]:
    """Evaluation scores of every training batch (rank ``rank``'s share; None: the union)."""
    out = []
    for s in range(STEPS):
        batch = global_batch(s, world, rank)
        out.append(model(model.embeddings.read(batch), batch.dense))
    return out


def one_process_checkpoint() -> tuple[dict, dict]:
    """A one-process run (1 id shard) of ``LOADABLE``: its dense and embedding state after
    ``STEPS`` steps."""
    model = dynamic_model(CASE, LOADABLE)
    opt = build_optimizers(CASE.optim_cfg(), model)
    _steps(model, opt, None, range(STEPS), False)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    return dense, {k: v.clone() for k, v in model.embeddings.state_dict().items()}


def train_dynamic(env: ParallelEnv) -> dict:
    """Per rank: the dynamic model over a cached shard, prefetching the next batch; then a fresh
    2-rank model loading the one-process checkpoint scores the training batches."""
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
    dense, emb = one_process_checkpoint()
    loaded = dynamic_model(CASE, LOADABLE, env, ParallelConfig())
    loaded.load_state_dict(dense)
    loaded.embeddings.load_state_dict(emb)
    out["loaded_scores"] = _scores(loaded, env.world_size, env.rank)
    out["loaded_maps"] = {
        k: v.clone() for k, v in loaded.embeddings.state_dict().items() if k.startswith("dynamic.")
    }
    loaded.embeddings.close()
    return out


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> list[dict]:
    return run_spawned(train_dynamic, 2, tmp_path_factory.mktemp("dyn2"))


@pytest.fixture(scope="module")
def reference() -> dict:
    """One process, 2 id shards, on the union batches; then its checkpoint reloaded by a model
    with 1 id shard (every id moves to its new slot) continues ``MORE`` steps."""
    model = dynamic_model(CASE, TIGHT, id_shards=2)
    opt = build_optimizers(CASE.optim_cfg(), model)
    losses = _steps(model, opt, None, range(STEPS), False)
    # The ranks prefetched (translated) the next batch too; its state is saved as before that.
    model.embeddings.prefetch(global_batch(STEPS, 2, None))
    stats = model.embeddings.cache_stats()
    state = {k: v.clone() for k, v in model.embeddings.state_dict().items()}
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    one = dynamic_model(CASE, TIGHT)
    one.load_state_dict(dense)
    one.embeddings.load_state_dict(state)
    opt_one = build_optimizers(CASE.optim_cfg(), one)
    opt_one.load_state_dict(opt.state_dict())
    more = _steps(one, opt_one, None, range(STEPS, STEPS + MORE), False)
    return {
        "losses": losses,
        "stats": stats,
        "dense": dense,
        "emb": state,
        "more": more,
        "emb_more": {k: v.clone() for k, v in one.embeddings.state_dict().items()},
    }


def test_two_ranks_train_exactly_what_one_process_trains(world2, reference) -> None:
    per_rank, name = world2, "cached"
    summed = [sum(r["losses"][s] for r in per_rank) for s in range(STEPS)]
    assert summed == pytest.approx(reference["losses"], rel=1e-10, abs=1e-12)
    full = merge_shards([r["emb"] for r in per_rank])
    assert_close_states(full, reference["emb"], f"{name} embeddings")
    assert_close_states(per_rank[0]["dense"], reference["dense"], f"{name} dense")
    assert per_rank[0]["stats"]["cache.evictions"] > 0
    # Each rank counts its own ids' decisions: summed, they are the one process's counts.
    for key, value in reference["stats"].items():
        if key.startswith("dynamic."):
            assert sum(r["stats"][key] for r in per_rank) == value, key
    stats = reference["stats"]
    assert 0 < stats["dynamic.rows_used"] <= sum(t.capacity for t in TIGHT)
    assert stats["dynamic.admissions"] > 0 and stats["dynamic.evictions"] > 0
    assert stats["dynamic.expirations"] > 0 and stats["dynamic.fallback_ids"] > 0
    # Each rank holds the map of its own ids only; the checkpoint's description is global.
    maps = [r["emb"] for r in per_rank]
    for t in TIGHT:
        keys = maps[0][f"dynamic.{t.feature}.keys"]
        assert keys.max() > 0
        assert torch.equal(keys, maps[1][f"dynamic.{t.feature}.keys"]), t.feature


def test_a_two_rank_checkpoint_resharded_to_one_rank_continues_like_the_reference(
    world2, reference
) -> None:
    per_rank = world2
    env = ParallelEnv.single_process(torch.device("cpu"))
    model = dynamic_model(CASE, TIGHT, env, ParallelConfig())
    phys = physical_layout(layout(), TIGHT)
    plan = build_sharding_plan(phys, 1, CASE.model_cfg(), ParallelConfig(), torch.float64)
    (shard,) = reshard_states([r["emb"] for r in per_rank], plan)
    with pytest.raises(ValueError, match="load the merged full table"):
        model.embeddings.load_state_dict(shard)  # a shard: its rows cannot move between ranks
    model.embeddings.load_state_dict(merge_shards([r["emb"] for r in per_rank]))
    model.load_state_dict(per_rank[0]["dense"])
    opt = build_optimizers(CASE.optim_cfg(), model)
    opt.load_state_dict(per_rank[0]["opt"])
    more = _steps(model, opt, env, range(STEPS, STEPS + MORE), False)
    assert more == pytest.approx(reference["more"], rel=1e-10, abs=1e-12)
    state = model.embeddings.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("sharding.")}
    assert_close_states(state, reference["emb_more"], "resharded embeddings")


def test_a_one_process_checkpoint_loaded_at_two_ranks_scores_every_sample_alike(world2) -> None:
    """W=1 -> W=2: every admitted id moves to a slot of its owner rank (none is dropped here), with
    its row and Adagrad state: the 2 ranks score every training sample as the one-process run."""
    dense, emb = one_process_checkpoint()
    model = dynamic_model(CASE, LOADABLE)
    model.load_state_dict(dense)
    model.embeddings.load_state_dict(emb)
    expected = _scores(model, 2, None)
    for s in range(STEPS):
        got = torch.cat([r["loaded_scores"][s] for r in world2])
        torch.testing.assert_close(got, expected[s], rtol=1e-12, atol=1e-14)
    maps = world2[0]["loaded_maps"]
    assert int(maps["dynamic.id_shards"]) == 2
    for t in LOADABLE:
        before = emb[f"dynamic.{t.feature}.keys"]
        after = maps[f"dynamic.{t.feature}.keys"]
        assert sorted(before[before >= 0].tolist()) == sorted(after[after >= 0].tolist())
        held = after >= 0
        slots = held.nonzero().squeeze(1)
        f = layout().feature_names.index(t.feature)
        owner = (1 + t.fallback_rows + slots + f) % 2  # the rank holding the slot's row
        assert torch.equal(owner, after[held] % 2), t.feature
