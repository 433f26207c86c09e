"""MixCache without processes: eviction policies on tiny tables, protection of the current and
previous step, the capacity error, write-back and counters, the memory-mapped host store, and the
oracle of DESIGN.md §5.3: training with the cache (LRU, LFU, with and without the prefetch stage;
one process runs it through the sharded collection at world size 1) ends with exactly the
parameters and optimizer state of training the plain collection without it, and so does a run
resumed from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.meta_fixtures import make_layout, random_batch
from trainer import embeddings as embeddings_module
from trainer.cache import (
    CacheConfig,
    CacheSegment,
    CacheSpec,
    HostStore,
    MixCache,
    TableCacheConfig,
)
from trainer.config_loader import build
from trainer.embeddings import PlainEmbeddingCollection, draw_initial_rows
from trainer.meta import MetaConfig, outer_loss
from trainer.models import ModelConfig, build_model
from trainer.optim import OptimConfig, build_optimizers
from trainer.parallel.comm import Collectives
from trainer.parallel.plan import ParallelConfig, build_sharding_plan
from trainer.parallel.reshard import merge_shards
from trainer.parallel.sharded_embeddings import ShardedEmbeddingCollection
from trainer.sparse import EmbeddingCollection

FEATURES = [("user", 41, 1), ("ad", 23, 1), ("hour", 7, 1), ("tags", 13, 3)]
ROW_BYTES = (4 + 1 + 1 + 1) * 4  # emb(4) | linear | two Adagrad sums, float32


def _tiny_cache(capacity: int, policy: str, rows: int = 10, prefetch: bool = False) -> MixCache:
    """One 2-wide table of ``rows`` rows whose values are the row numbers."""
    store = HostStore(rows, [("emb.weight", 2)], torch.float32)
    store.data[:] = torch.arange(rows, dtype=torch.float32)[:, None]
    spec = CacheSpec((CacheSegment("t", 0, rows, capacity, policy),), prefetch=prefetch)
    return MixCache(store, spec, "cpu")


def _resident(cache: MixCache) -> set[int]:
    return set(cache.slot_row[cache.slot_row >= 0].tolist())


def _step(cache: MixCache, rows: list[int]) -> torch.Tensor:
    return cache.lookup(torch.tensor(rows))


# ---------------------------------------------------------------------------- policies
def test_lru_evicts_the_least_recently_used_unprotected_row() -> None:
    cache = _tiny_cache(4, "lru")
    _step(cache, [1, 2])  # step 0
    _step(cache, [3])  # step 1
    _step(cache, [4])  # step 2: fills the last free slot
    _step(cache, [1])  # step 3: hit; 1 is now the most recent
    _step(cache, [5])  # step 4: evictable = used before step 3 = {2, 3}; 2 is older
    assert _resident(cache) == {1, 3, 4, 5}
    _step(cache, [6])  # step 5: evictable = {1, 3, 4} minus step 4's {5}: 3 (step 1) is oldest
    assert _resident(cache) == {1, 4, 5, 6}
    stats = cache.stats()
    assert stats["cache.lookups"] == 7 and stats["cache.hits"] == 1 and stats["cache.misses"] == 6
    assert stats["cache.evictions"] == 2


def test_lfu_evicts_the_least_frequently_used_row_and_breaks_ties_by_recency() -> None:
    cache = _tiny_cache(4, "lfu")
    for rows in ([1, 2, 3], [1, 2], [1, 4], [2], [1]):  # counts: 1 -> 4, 2 -> 3, 3 -> 1, 4 -> 1
        _step(cache, rows)
    _step(cache, [5])  # step 5: not protected: 2 (step 3), 3 (step 0), 4 (step 2); 3, 4 least used
    assert _resident(cache) == {1, 2, 4, 5}  # 3 and 4 tie on count: 3 is the less recent
    _step(cache, [6])  # 1 and 5 protected; 2 (count 3) outlives 4 (count 1)
    assert _resident(cache) == {1, 2, 5, 6}


def test_rows_of_the_current_and_previous_step_are_never_evicted() -> None:
    cache = _tiny_cache(4, "lru")
    _step(cache, [1, 2])
    _step(cache, [3, 4])
    # Step 2 needs 2 new rows; 3 and 4 (previous step) are protected, so 1 and 2 go.
    _step(cache, [5, 6])
    assert _resident(cache) == {3, 4, 5, 6}
    with pytest.raises(ValueError, match=r"'t' has 4 cache rows .* at least 5 rows"):
        _step(cache, [7, 8, 9, 5])  # 5 hits; 5 and 6 protected: 3 new + 2 > 4 rows
    assert _resident(cache) == {3, 4, 5, 6}  # the refused step evicted nothing


def test_a_step_larger_than_the_cache_names_the_minimum_capacity() -> None:
    cache = _tiny_cache(3, "lfu")
    with pytest.raises(ValueError, match=r"needs 5 resident at once.*at least 5 rows"):
        _step(cache, [1, 2, 3, 4, 5])


def test_dirty_rows_are_written_back_on_eviction_and_flush_clean_rows_are_not() -> None:
    cache = _tiny_cache(2, "lru")
    slots = _step(cache, [1, 2])
    cache.table("emb.weight")[slots[0]] = 100.0  # row 1 updated on the device
    cache.mark_dirty(torch.tensor([1]))
    _step(cache, [])  # step 1 (rows of step 0 are still protected in it)
    cache.stats()
    _step(cache, [7, 8])  # step 2: rows 1 (dirty) and 2 (clean) evicted
    stats = cache.stats()
    assert stats["cache.evictions"] == 2 and stats["cache.d2h_bytes"] == 1 * 8
    assert stats["cache.h2d_bytes"] == 2 * 8
    assert cache.store.data[1].tolist() == [100.0, 100.0] and cache.store.data[2].tolist() == [2, 2]
    slots = cache.slots(torch.tensor([7]))
    cache.table("emb.weight")[slots] = -7.0
    cache.mark_dirty(torch.tensor([7]))
    cache.flush()
    assert cache.store.data[7].tolist() == [-7.0, -7.0] and cache.stats()["cache.d2h_bytes"] == 8
    assert cache.evict() == 2 and _resident(cache) == set()


def test_a_row_is_loaded_into_its_slot() -> None:
    cache = _tiny_cache(3, "lru")
    slots = _step(cache, [0, 4])
    assert torch.equal(cache.table("emb.weight")[slots], torch.tensor([[0.0, 0.0], [4.0, 4.0]]))


def test_prefetched_steps_give_the_same_slots_and_counters_as_synchronous_ones() -> None:
    g = torch.Generator().manual_seed(0)
    stream = [torch.unique(torch.randint(0, 60, (12,), generator=g)) for _ in range(30)]
    results = {}
    for prefetch in (False, True):
        for policy in ("lru", "lfu"):
            cache = _tiny_cache(30, policy, rows=60, prefetch=prefetch)
            slots, counts = [], []
            for t, rows in enumerate(stream):
                slots.append(cache.lookup(rows))
                if t + 1 < len(stream):
                    cache.prefetch(stream[t + 1])
                counts.append(cache.stats())
            results[prefetch, policy] = (slots, counts, cache.totals)
            cache.close()
    for policy in ("lru", "lfu"):
        sync, pre = results[False, policy], results[True, policy]
        assert all(torch.equal(a, b) for a, b in zip(sync[0], pre[0], strict=True))
        assert sync[1] == pre[1] and sync[2] == pre[2]
        assert (
            sync[2]["evictions"] > 0 and sync[2]["hits"] + sync[2]["misses"] == sync[2]["lookups"]
        )


def test_a_lookup_that_differs_from_the_prefetch_still_serves_its_rows() -> None:
    cache = _tiny_cache(6, "lru", prefetch=True)
    cache.lookup(torch.tensor([1, 2]))
    cache.prefetch(torch.tensor([3, 4]))
    slots = cache.lookup(torch.tensor([5]))  # e.g. an evaluation batch in between
    assert cache.table("emb.weight")[slots].tolist() == [[5.0, 5.0]]
    assert {3, 4, 5} <= _resident(cache)
    with pytest.raises(ValueError, match="twice"):
        cache.prefetch(torch.tensor([1]))
        cache.prefetch(torch.tensor([2]))


# ------------------------------------------------------------------------- host store
def test_memory_mapped_store_persists_in_its_file(tmp_path) -> None:
    path = tmp_path / "rows" / "shard-0.rows"
    store = HostStore(5, [("emb.weight", 3), ("emb.adagrad_sum", 1)], torch.float32, path=path)
    store.column("emb.weight")[2] = torch.tensor([1.0, 2.0, 3.0])
    store.column("emb.adagrad_sum")[4] = 9.0
    assert path.stat().st_size == 5 * 4 * 4
    del store
    again = HostStore(5, [("emb.weight", 3), ("emb.adagrad_sum", 1)], torch.float32, path=path)
    assert again.column("emb.weight")[2].tolist() == [1.0, 2.0, 3.0]
    assert again.column("emb.adagrad_sum").tolist() == [0.0, 0.0, 0.0, 0.0, 9.0]


def test_chunked_initial_draw_equals_one_full_draw(monkeypatch) -> None:
    monkeypatch.setattr(embeddings_module, "INIT_CHUNK_ROWS", 32)
    plain = PlainEmbeddingCollection([0, 40], 150, 4, init_std=0.3, seed=5).store.weights["emb"]
    out = torch.zeros(150, 4)
    draw_initial_rows(out, None, 150, 0.3, 5)
    out[[0, 40]] = 0.0
    assert torch.equal(out, plain)
    owned = torch.tensor([1, 2, 33, 70, 149])
    part = torch.zeros(5, 4)
    draw_initial_rows(part, owned, 150, 0.3, 5)
    assert torch.equal(part, plain[owned])


# ------------------------------------------------------------------------------ config
def test_cache_config_resolves_per_table_overrides_and_loads_from_toml_data() -> None:
    cfg = build(
        ParallelConfig,
        {
            "cache": {
                "enabled": True,
                "capacity_fraction": 0.25,
                "tables": [
                    {"feature": "hour", "enabled": False},
                    {"feature": "user", "policy": "lfu", "capacity_rows": 5},
                ],
            }
        },
    )
    assert cfg.cache.resolve("ad", 23) == (True, 6, "lru")
    assert cfg.cache.resolve("user", 41) == (True, 5, "lfu")
    assert cfg.cache.resolve("hour", 7) == (False, 7, "lru")
    plan = build_sharding_plan(_layout(), 2, ModelConfig(arch="deepfm"), cfg)
    text = str(plan)
    assert "MixCache" in text and "lfu 5 rows" in text and "off" in text
    spec = plan.cache_spec(1)
    assert [s.name for s in spec.segments] == ["user", "ad", "hour", "tags"]
    assert spec.segments[-1].stop == plan.rows_per_rank[1]
    with pytest.raises(ValueError, match="capacity_fraction"):
        CacheConfig(capacity_fraction=0.0)
    with pytest.raises(ValueError, match="not features"):
        build_sharding_plan(
            _layout(),
            1,
            ModelConfig(),
            ParallelConfig(
                cache=CacheConfig(enabled=True, tables=(TableCacheConfig(feature="nope"),))
            ),
        )


# ----------------------------------------------------------- training equals no cache
def _layout():
    return make_layout(FEATURES, dense_width=2)


def _cached_collection(
    capacity: int | None, policy: str = "lru", prefetch: bool = False, mmap_dir: str = ""
) -> EmbeddingCollection:
    """The plain collection (``capacity`` None: the reference), else the sharded collection at
    world size 1 with a cache of ``capacity`` rows."""
    lay = _layout()
    if capacity is None:
        return PlainEmbeddingCollection(
            lay.table_offsets, lay.total_rows, 4, lay.slot_feature, linear=True, init_std=0.1,
            seed=1,
        )  # fmt: skip
    cache = CacheConfig(
        enabled=True,
        capacity_rows=capacity,
        policy=policy,
        prefetch=prefetch,
        mmap_dir=mmap_dir,
    )
    plan = build_sharding_plan(lay, 1, _model_cfg(), ParallelConfig(cache=cache))
    return ShardedEmbeddingCollection(
        plan, Collectives(0, 1), lay.slot_feature, init_std=0.1, seed=1, cache=plan.cache_spec(0)
    )


def _model_cfg() -> ModelConfig:
    return ModelConfig(arch="deepfm", embedding_dim=4, mlp=(8, 4), embedding_init_std=0.1)


def _train(
    coll: EmbeddingCollection,
    steps: range,
    mode: str,
    state: dict | None = None,
    checkpoint_at: int = -1,
) -> dict:
    """Train on the batches of ``steps`` (prefetching each next batch); ``state``: resume;
    ``checkpoint_at``: take a checkpoint (flushes the cache) after that many steps."""
    torch.use_deterministic_algorithms(True)
    lay = _layout()
    model = build_model(_model_cfg(), lay, embeddings=coll, seed=0)
    opt = build_optimizers(OptimConfig(dense_lr=0.02, sparse_lr=0.2), model)
    if state is not None:
        model.load_state_dict(state["dense"])
        opt.load_state_dict(state["opt"])
        coll.load_state_dict(state["emb"])
    meta = MetaConfig(mode=mode, adapt="dense")
    batches = {s: random_batch(lay, 3, seed=s) for s in [*steps, steps.stop]}
    stats = []
    for s in steps:
        sparse = coll.lookup(batches[s])
        coll.prefetch(batches[s + 1])  # the reader's next batch
        loss, _ = outer_loss(model, sparse, batches[s], meta)
        loss.backward()
        opt.step()
        stats.append(coll.cache_stats())
        if s + 1 == checkpoint_at:
            coll.state_dict()
    emb = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in coll.state_dict().items()}
    return {"dense": model.state_dict(), "opt": opt.state_dict(), "emb": emb, "stats": stats}


def _assert_same_training(a: dict, b: dict) -> None:
    for key, value in a["dense"].items():
        assert torch.equal(value, b["dense"][key]), key
    for key in ("emb.weight", "linear.weight", "emb.adagrad_sum", "linear.adagrad_sum"):
        assert torch.equal(a["emb"][key], b["emb"][key]), key
    for i, st in a["opt"]["dense"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(st[key], b["opt"]["dense"]["state"][i][key])


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("mode", ["maml", "plain"])
def test_training_with_the_cache_equals_training_without_it(policy, prefetch, mode) -> None:
    ref = _train(_cached_collection(None), range(8), mode)
    got = _train(_cached_collection(18, policy, prefetch), range(8), mode)
    _assert_same_training(got, ref)
    total = {k: sum(s[k] for s in got["stats"]) for k in got["stats"][0]}
    assert total["cache.hits"] + total["cache.misses"] == total["cache.lookups"]
    assert total["cache.h2d_bytes"] == total["cache.misses"] * ROW_BYTES
    assert total["cache.d2h_bytes"] % ROW_BYTES == 0 and total["cache.d2h_bytes"] > 0
    assert total["cache.evictions"] > 0 and total["cache.hits"] > 0
    assert ref["emb"]["emb.adagrad_sum"].count_nonzero() > 0  # training moved the rows


def test_memory_mapped_cached_training_equals_training_without_it(tmp_path) -> None:
    ref = _train(_cached_collection(None), range(5), "fomaml")
    got = _train(_cached_collection(18, "lfu", True, str(tmp_path)), range(5), "fomaml")
    _assert_same_training(got, ref)
    assert len(list(tmp_path.glob("shard-0-of-1-*.rows"))) == 1


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path) -> None:
    whole = _train(_cached_collection(18, "lru", True), range(8), "maml", checkpoint_at=4)
    first = _train(_cached_collection(18, "lru", True), range(4), "maml")
    torch.save(first, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    second = _train(_cached_collection(18, "lru", True), range(4, 8), "maml", state)
    _assert_same_training(second, whole)
    # The cache itself resumed: the same hits, misses and traffic step by step.
    assert second["stats"] == whole["stats"][4:]
    assert torch.equal(second["emb"]["cache.totals"], whole["emb"]["cache.totals"])
    # A checkpoint of a cached run loads into an uncached collection (cache state ignored).
    plain = _cached_collection(None)
    plain.load_state_dict(merge_shards([state["emb"]]))
    assert torch.equal(plain.store.weights["emb"], state["emb"]["emb.weight"])


def test_victim_selection_equals_a_stable_sort_of_every_candidate() -> None:
    """``_smallest`` (selection, then a sort of the chosen) picks the victims that a stable
    argsort of all candidates picks, in the same order: ties included (LRU stamps, LFU keys)."""
    from trainer.cache import _smallest

    g = torch.Generator().manual_seed(0)
    for trial in range(2000):
        n = int(torch.randint(1, 200, (1,), generator=g))
        key = torch.randint(0, int(torch.randint(1, 20, (1,), generator=g)), (n,), generator=g)
        if trial % 2:  # LFU keys: (uses << 32) + last used
            key = (torch.randint(0, 5, (n,), generator=g) << 32) + key
        k = int(torch.randint(0, n + 2, (1,), generator=g))
        assert torch.equal(_smallest(key, k), torch.argsort(key, stable=True)[:k]), (key, k)
