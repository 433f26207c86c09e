"""MixCache behind the sharded collection at world size 2 (gloo, CPU, spawned): training with a
small cache (evictions and write-backs forced; LRU and LFU; with and without the prefetch stage,
which exchanges the next step's ids ahead) ends with exactly the parameters and optimizer state of
training without it, on every rank; a run resumed from a checkpoint equals the uninterrupted one;
and the cache behind DES serves the owners' rows the same way."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tests.trainer.parallel.parity import DTYPE, global_batch, layout
from tests.trainer.parallel.spawn import run_spawned
from trainer.cache import CacheConfig
from trainer.meta import MetaConfig, outer_loss
from trainer.models import ModelConfig
from trainer.optim import OptimConfig, build_optimizers
from trainer.parallel.apply import build_parallel_model
from trainer.parallel.env import ParallelEnv
from trainer.parallel.plan import ParallelConfig

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]
STEPS = 5


@dataclass(frozen=True)
class CacheCase:
    arch: str
    mode: str
    policy: str
    prefetch: bool
    des: str = "off"

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.mode}-{self.policy}-prefetch{int(self.prefetch)}-des-{self.des}"

    def parallel(self, cached: bool) -> ParallelConfig:
        cache = CacheConfig(
            enabled=cached, capacity_rows=16, policy=self.policy, prefetch=self.prefetch
        )
        return ParallelConfig(cache=cache, des=self.des)


CASES = [
    CacheCase("deepfm", "maml", "lru", True),
    CacheCase("dlrm", "fomaml", "lfu", True),
    CacheCase("wide_deep", "plain", "lfu", False),
    CacheCase("melu", "maml", "lru", False),
    CacheCase("deepfm", "maml", "lfu", True, des="on"),
]


def _train(env: ParallelEnv, case: CacheCase, cached: bool, steps: range, state=None, ckpt=-1):
    meta = MetaConfig(mode=case.mode, inner_steps=1, inner_lr=0.3, adapt="head")
    cfg = ModelConfig(
        arch=case.arch, embedding_dim=4, mlp=(8, 4), bottom_mlp=(4,), embedding_init_std=0.1
    )
    model, _ = build_parallel_model(
        cfg, layout(), env, case.parallel(cached), seed=0, dtype=DTYPE, meta=meta
    )
    coll = model.embeddings
    opt = build_optimizers(OptimConfig(dense_lr=0.02, sparse_lr=0.2), model)
    if state is not None:
        model.load_state_dict(state["dense"])
        opt.load_state_dict(state["opt"])
        coll.load_state_dict(state["emb"])
    stats, saved = [], None
    for s in steps:
        batch, nxt = (
            global_batch(s, env.world_size, env.rank),
            global_batch(s + 1, env.world_size, env.rank),
        )
        sparse = coll.lookup(batch)
        coll.prefetch(nxt)
        loss, _ = outer_loss(model, sparse, batch, meta, env.normalizer(batch.episode_mask.sum()))
        loss.backward()
        env.reduce_dense_grads(model.parameters())
        opt.step()
        stats.append(coll.cache_stats())
        if s + 1 == ckpt:  # a checkpoint as the trainer takes it
            saved = {"dense": model.state_dict(), "opt": opt.state_dict(), "emb": coll.state_dict()}
            saved = {k: _clone(v) for k, v in saved.items()}
    emb = {k: v.clone() for k, v in coll.state_dict().items() if isinstance(v, torch.Tensor)}
    return {
        "dense": model.state_dict(),
        "adam": opt.state_dict()["dense"]["state"],
        "emb": emb,
        "stats": stats,
        "saved": saved,
    }


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return x


def rank_job(env: ParallelEnv, cases: list[CacheCase]) -> dict:
    out = {}
    for case in cases:
        plain = _train(env, case, False, range(STEPS))
        cached = _train(env, case, True, range(STEPS), ckpt=2)
        resumed = _train(env, case, True, range(2, STEPS), state=cached["saved"])
        out[case.name] = {"plain": plain, "cached": cached, "resumed": resumed}
    return out


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> list[dict]:
    return run_spawned(rank_job, 2, tmp_path_factory.mktemp("cache2"), (CASES,))


def _assert_equal_training(a: dict, b: dict, what: str) -> None:
    for key, value in b["dense"].items():
        assert torch.equal(a["dense"][key], value), (what, key)
    for key in ("emb.weight", "emb.adagrad_sum", "linear.weight", "linear.adagrad_sum"):
        if key in b["emb"]:
            assert torch.equal(a["emb"][key], b["emb"][key]), (what, key)
    for i, st in b["adam"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(a["adam"][i][key], st[key]), (what, i, key)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_sharded_training_with_the_cache_equals_training_without_it(case, world2) -> None:
    # emb(4) | Adagrad sum, + linear and its sum for DeepFM / Wide&Deep; float64
    row_bytes = (5 + 2 * int(case.arch in ("deepfm", "wide_deep"))) * 8
    evictions = 0
    for rank, res in enumerate(world2):
        r = res[case.name]
        _assert_equal_training(r["cached"], r["plain"], f"{case.name} rank {rank}")
        assert r["plain"]["emb"]["emb.adagrad_sum"].count_nonzero() > 0  # rows moved
        for st in r["cached"]["stats"]:
            assert st["cache.hits"] + st["cache.misses"] == st["cache.lookups"] > 0
            assert st["cache.h2d_bytes"] == st["cache.misses"] * row_bytes
            assert st["cache.d2h_bytes"] % row_bytes == 0
            evictions += st["cache.evictions"]
        assert not r["plain"]["stats"][0]  # no cache, no counters
    assert evictions > 0  # the small cache did evict (and so wrote rows back)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_resumed_sharded_cache_equals_the_uninterrupted_run(case, world2) -> None:
    for res in world2:
        r = res[case.name]
        _assert_equal_training(r["resumed"], r["cached"], case.name)
        assert r["resumed"]["stats"] == r["cached"]["stats"][2:]
