"""Dynamic embedding tables (trainer/dynamic.py): the id map's admission and eviction, and the
oracles: admitting everything with room for every id trains exactly the exact (one row per id,
unhashed) table; a resumed run equals the uninterrupted one. Distributed = single process, cache =
no cache and resharding: tests/trainer/parallel/test_dynamic_sharded.py."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.dynamic_fixtures import SEED, dynamic_model
from tests.trainer.parallel.parity import DTYPE, Case, global_batch, layout, train_step
from tests.trainer.run_helpers import read_jsonl, tiny_overrides, write_episodes
from trainer.config import load_trainer_config
from trainer.dynamic import (
    DynamicEmbeddingCollection,
    DynamicTableConfig,
    IdMap,
    id_normal,
    physical_layout,
)
from trainer.embeddings import PlainEmbeddingCollection
from trainer.meta import outer_loss
from trainer.models import build_model
from trainer.models.build import LINEAR_ARCHS
from trainer.optim import build_optimizers
from trainer.parallel.apply import build_des
from trainer.parallel.env import ParallelEnv
from trainer.parallel.plan import ParallelConfig
from trainer.trainer import Trainer

STEPS = 3
ROOMY = (  # capacity >= every id of the feature: nothing is ever evicted
    DynamicTableConfig(feature="user", capacity=40),
    DynamicTableConfig(feature="tags", capacity=12),
)
TIGHT = (  # evictions, a count threshold and a TTL table
    DynamicTableConfig(feature="user", capacity=40, fallback_rows=3, admit_count=2),
    DynamicTableConfig(feature="ad", capacity=8, eviction="lfu"),
    DynamicTableConfig(feature="tags", capacity=6, eviction="ttl", ttl_steps=1),
)


def _ids(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# ------------------------------------------------------------------------------- the id map
def test_ids_are_admitted_after_the_count_threshold_and_fall_back_before() -> None:
    m = IdMap(DynamicTableConfig(feature="f", capacity=4, fallback_rows=2, admit_count=3), seed=0)
    slots, new, _ = m.assign(_ids(5, 9), _ids(2, 1), step=0)
    assert slots.tolist() == [-1, -1] and new.numel() == 0
    slots, new, new_ids = m.assign(_ids(5, 9), _ids(1, 1), step=1)  # 5 seen 3 times, 9 twice
    assert slots.tolist() == [0, -1] and new.tolist() == [0] and new_ids.tolist() == [5]
    assert m.find(_ids(9, 5, 7)).tolist() == [-1, 0, -1]
    assert m.counts["admissions"] == 1 and m.counts["fallback_ids"] == 3


@pytest.mark.parametrize(("eviction", "victim"), [("lru", 2), ("lfu", 3)])
def test_a_full_table_evicts_by_policy_and_spares_the_last_two_steps(eviction, victim) -> None:
    m = IdMap(DynamicTableConfig(feature="f", capacity=3, eviction=eviction), seed=0)
    m.assign(_ids(1, 2, 3), _ids(1, 9, 1), step=0)
    m.assign(_ids(3), _ids(5), step=1)
    m.assign(_ids(1), _ids(1), step=2)
    # id: last seen, occurrences = 1: step 2, 2x; 2: step 0, 9x; 3: step 1, 6x. Full at step 3:
    # 1 is spared (used the step before); LRU takes 2, LFU 3 (1 would be LFU's otherwise).
    slots, new, new_ids = m.assign(_ids(4), _ids(1), step=3)
    assert new_ids.tolist() == [4] and slots.tolist() == new.tolist()
    assert m.find(_ids(victim)).tolist() == [-1]
    assert sorted(m.keys.tolist()) == sorted({1, 2, 3, 4} - {victim})
    assert m.counts["evictions"] == 1 and m.used == 3
    # Every row used at step 3 or 4: a new id at step 4 finds no row and falls back.
    assert m.assign(_ids(*sorted({1, 2, 3} - {victim}), 5), _ids(1, 1, 1), step=4)[0][-1] == -1


def test_ttl_frees_stale_rows_and_a_full_ttl_table_admits_nothing() -> None:
    m = IdMap(DynamicTableConfig(feature="f", capacity=2, eviction="ttl", ttl_steps=2), seed=0)
    m.assign(_ids(1, 2), _ids(1, 1), step=0)
    assert m.assign(_ids(3), _ids(1), step=1)[0].tolist() == [-1]
    m.assign(_ids(2), _ids(1), step=2)
    slots, _, new_ids = m.assign(_ids(3), _ids(1), step=3)  # 1 unseen since step 0: expired
    assert new_ids.tolist() == [3] and m.find(_ids(1, 2)).tolist() == [-1, 1]
    assert m.counts["expirations"] == 1 and slots.tolist() == [0]


def test_admitted_ids_never_share_a_row_on_a_long_stream() -> None:
    cfg = DynamicTableConfig(feature="f", capacity=50, admit_count=2, admit_probability=0.7)
    m = IdMap(cfg, seed=3)
    g = torch.Generator().manual_seed(0)
    for step in range(60):
        ids = torch.unique((torch.rand(40, generator=g) ** 3 * 5000).long() + 1)
        slots, _, _ = m.assign(ids, torch.ones_like(ids), step)
        held = slots[slots >= 0]
        assert held.unique().numel() == held.numel()  # distinct ids, distinct rows
        assert torch.equal(m.keys[held], ids[slots >= 0])
    keys = m.keys[m.keys >= 0]
    assert keys.unique().numel() == keys.numel() == m.used <= 50
    assert m.counts["evictions"] > 0


def test_the_initial_row_of_an_id_depends_on_the_id_and_seed_only() -> None:
    a = id_normal(_ids(7, 123456789012345, 8), 64, 0.1, seed=5, dtype=torch.float64)
    b = id_normal(_ids(8, 7), 64, 0.1, seed=5, dtype=torch.float64)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], id_normal(_ids(7), 64, 0.1, seed=6, dtype=torch.float64)[0])
    big = id_normal(torch.arange(1, 2001), 64, 0.1, seed=0, dtype=torch.float64)
    assert abs(float(big.mean())) < 0.003 and abs(float(big.std()) - 0.1) < 0.002


def test_config_refuses_bad_tables_and_unknown_features() -> None:
    with pytest.raises(ValueError, match="ttl_steps must be >= 1"):
        DynamicTableConfig(feature="user", capacity=4, eviction="ttl")
    with pytest.raises(ValueError, match="capacity and fallback_rows"):
        DynamicTableConfig(feature="user", capacity=0)
    with pytest.raises(ValueError, match=r"names \['nope'\]"):
        physical_layout(layout(), [DynamicTableConfig(feature="nope", capacity=4)])


# ------------------------------------------------------------------------------- oracles
def _exact_reference(case: Case, dyn_model) -> object:
    """The exact table: one row per id of the logical layout, starting where the dynamic model's
    rows start (static features: the same drawn rows; dynamic features: id_normal per id)."""
    lay, cfg = layout(), case.model_cfg()
    ref = PlainEmbeddingCollection(
        lay.table_offsets, lay.total_rows, cfg.embedding_dim, lay.slot_feature,
        linear=cfg.arch in LINEAR_ARCHS, init_std=cfg.embedding_init_std, dtype=DTYPE,
    )  # fmt: skip
    state = ref.state_dict()
    inner = dyn_model.embeddings.inner.state_dict()
    phys = physical_layout(lay, ROOMY)
    dynamic = {t.feature for t in ROOMY}
    for f, name in enumerate(lay.feature_names):
        lo, n = lay.table_offsets[f], lay.feature_buckets[f]
        if name in dynamic:
            rows = id_normal(torch.arange(lo + 1, lo + n), cfg.embedding_dim,
                             cfg.embedding_init_std, SEED, DTYPE)  # fmt: skip
            state["emb.weight"][lo + 1 : lo + n] = rows
        else:
            plo = phys.table_offsets[f]
            state["emb.weight"][lo : lo + n] = inner["emb.weight"][plo : plo + n]
    ref.load_state_dict(state)
    return build_model(cfg, lay, embeddings=ref, seed=0)


@pytest.mark.parametrize(
    ("case", "id_shards"),
    [(Case("deepfm", "maml", adapt="dense+emb"), 1), (Case("dlrm", "plain"), 2)],
    ids=lambda c: getattr(c, "name", str(c)),
)
def test_admit_all_with_room_trains_exactly_the_exact_table(case: Case, id_shards: int) -> None:
    """Also with the maps split into 2 id shards (each shard has room for its ids)."""
    model = dynamic_model(case, ROOMY, id_shards=id_shards)
    ref = _exact_reference(case, model)
    opt, ref_opt = (
        build_optimizers(case.optim_cfg(), model),
        build_optimizers(case.optim_cfg(), ref),
    )
    for s in range(STEPS):
        batch = global_batch(s, 2, None)
        loss = train_step(model, opt, batch, case.meta_cfg(), None)
        assert loss == train_step(ref, ref_opt, batch, case.meta_cfg(), None)
    # Every admitted id's row and Adagrad state equal the exact table's row of that id.
    coll, lay = model.embeddings, layout()
    inner, exact = coll.inner.state_dict(), ref.embeddings.state_dict()
    state = coll.state_dict()
    phys = physical_layout(lay, ROOMY)
    seen = torch.cat([global_batch(s, 2, None).ids for s in range(STEPS)]).unique()
    for t in ROOMY:
        f = lay.feature_names.index(t.feature)
        keys = state[f"dynamic.{t.feature}.keys"]
        slots = (keys >= 0).nonzero().squeeze(1)
        lo, hi = lay.table_offsets[f], lay.table_offsets[f] + lay.feature_buckets[f]
        assert set((keys[slots] + lo).tolist()) == set(seen[(seen > lo) & (seen < hi)].tolist())
        if id_shards > 1:  # id x holds a row that a 2-rank row-wise plan puts on rank x mod 2
            owner = (1 + t.fallback_rows + slots + f) % 2  # local row l of feature f: (l + f) mod W
            assert torch.equal(owner, keys[slots] % 2)
        rows = phys.table_offsets[f] + 1 + t.fallback_rows + slots
        ids = lay.table_offsets[f] + keys[slots]
        for key in ("emb.weight", "emb.adagrad_sum"):
            assert torch.equal(inner[key][rows], exact[key][ids]), key
    assert torch.equal(
        torch.cat([p.flatten() for p in model.dense_half.parameters()]),
        torch.cat([p.flatten() for p in ref.dense_half.parameters()]),
    )


def _run(model, case: Case, steps: range, prefetch: bool, opt=None) -> list[float]:
    """Training steps on small batches (3 episodes), prefetching the next one or not."""
    opt = opt or build_optimizers(case.optim_cfg(), model)
    losses = []
    for s in steps:
        batch = global_batch(s, 1, None)
        sparse = model.embeddings.lookup(batch)
        if prefetch:
            model.embeddings.prefetch(global_batch(s + 1, 1, None))
        loss, _ = outer_loss(model, sparse, batch, case.meta_cfg(), None)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _rows(model) -> dict[str, torch.Tensor]:
    state = model.embeddings.state_dict()
    return {k: v.clone() for k, v in state.items() if not k.startswith(("cache.", "sharding."))}


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_resumed_run_equals_the_uninterrupted_one(prefetch: bool) -> None:
    case = Case("wide_deep", "fomaml")
    full = dynamic_model(case, TIGHT)
    expected = _run(full, case, range(8), prefetch)
    first = dynamic_model(case, TIGHT)
    opt = build_optimizers(case.optim_cfg(), first)
    losses = _run(first, case, range(4), prefetch, opt)
    # The checkpoint (after a prefetch of step 4 when prefetching), loaded into a fresh model.
    state = {k: v.clone() for k, v in first.embeddings.state_dict().items()}
    dense, opt_state = first.state_dict(), opt.state_dict()
    resumed = dynamic_model(case, TIGHT)
    resumed.load_state_dict(dense)
    resumed.embeddings.load_state_dict(state)
    opt2 = build_optimizers(case.optim_cfg(), resumed)
    opt2.load_state_dict(opt_state)
    losses += _run(resumed, case, range(4, 8), prefetch, opt2)
    assert losses == expected
    a, b = _rows(full), _rows(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_state_without_maps_is_refused_with_the_reason() -> None:
    model = dynamic_model(Case("dlrm", "plain"), TIGHT)
    state = model.embeddings.inner.state_dict()
    with pytest.raises(ValueError, match="no dynamic-table maps"):
        model.embeddings.load_state_dict(state)


def test_a_run_with_dynamic_tables_counts_its_decisions(tmp_path) -> None:
    """The training loop with dynamic tables (a count threshold on ``user``, LFU on a small ``ad``
    table): admissions, evictions and fallbacks in ``metrics.jsonl``."""
    data = write_episodes(tmp_path / "day1")
    dynamic = (
        'parallel.dynamic=[{feature = "user", capacity = 30, admit_count = 2}, '
        '{feature = "ad", capacity = 6, fallback_rows = 2, eviction = "lfu"}]'
    )
    extra = {"train.steps": 6, "eval.max_episodes": 8, "eval.splits": ["valid"]}
    overrides = [*tiny_overrides(data, tmp_path / "run", **extra), dynamic]
    trainer = Trainer(load_trainer_config("debug", overrides)).build()
    trainer.fit()
    coll = trainer.model.embeddings
    assert isinstance(coll, DynamicEmbeddingCollection)
    assert coll.inner.total_rows == 1 + 1 + 30 + 1 + 2 + 6 + 31  # user, ad dynamic; tags hashed
    train = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert sum(r["dynamic.admissions"] for r in train) > 0
    assert sum(r["dynamic.evictions"] for r in train) > 0
    assert sum(r["dynamic.fallback_ids"] for r in train) > 0
    assert 0 < train[-1]["dynamic.rows_used"] <= 36


def test_des_over_dynamic_rows_trains_like_the_row_exchange() -> None:
    """DES (one rank) computes the operators' partial sums from the translated rows: the same
    training as the plain dynamic collection, to float rounding; the same maps exactly."""
    case = Case("deepfm", "fomaml", adapt="head")
    env = ParallelEnv.single_process(torch.device("cpu"))
    plain = dynamic_model(case, TIGHT)
    des = dynamic_model(case, TIGHT, env, ParallelConfig(des="on"))
    des.embeddings.inner.use_des(build_des(des, des.embeddings.inner, "on", case.meta_cfg()))
    opt, des_opt = (
        build_optimizers(case.optim_cfg(), plain),
        build_optimizers(case.optim_cfg(), des),
    )
    for s in range(5):
        batch = global_batch(s, 1, None)
        loss = train_step(plain, opt, batch, case.meta_cfg(), None)
        assert train_step(des, des_opt, batch, case.meta_cfg(), env) == pytest.approx(loss, 1e-12)
    assert des.embeddings.cache_stats()["dynamic.admissions"] > 0
    got, want = _rows(des), _rows(plain)
    for key, value in want.items():
        if key.startswith("dynamic."):
            assert torch.equal(got[key], value), key
        else:
            torch.testing.assert_close(got[key], value, rtol=1e-12, atol=1e-14)


@torch.no_grad()
def _scores(model, steps: range) -> list[torch.Tensor]:
    out = []
    for s in steps:
        batch = global_batch(s, 1, None)
        out.append(model(model.embeddings.read(batch), batch.dense))
    return out


def _reloaded(case: Case, tables, source, id_shards: int):
    model = dynamic_model(case, tables, id_shards=id_shards)
    model.load_state_dict(source.state_dict())
    model.embeddings.load_state_dict(source.embeddings.state_dict())
    return model


def test_a_checkpoint_loads_with_another_number_of_id_shards_and_scores_alike() -> None:
    """1 id shard -> 2 -> 1 (a checkpoint of 1 rank loaded at 2 ranks, and back; one process
    here, the spawned test does it at 2 ranks): each admitted id moves to a slot of its new shard
    with its row and Adagrad state, so every sample scores exactly as before."""
    case = Case("deepfm", "fomaml")
    model = dynamic_model(case, ROOMY)
    _run(model, case, range(STEPS), prefetch=False)
    two = _reloaded(case, ROOMY, model, 2)
    back = _reloaded(case, ROOMY, two, 1)
    expected = _scores(model, range(STEPS))
    for other in (two, back):
        for got, want in zip(_scores(other, range(STEPS)), expected, strict=True):
            assert torch.equal(got, want)
    before, after = model.embeddings.state_dict(), two.embeddings.state_dict()
    lay, phys = layout(), physical_layout(layout(), ROOMY)
    for t in ROOMY:
        f = lay.feature_names.index(t.feature)
        keys, moved = before[f"dynamic.{t.feature}.keys"], after[f"dynamic.{t.feature}.keys"]
        old, new = (keys >= 0).nonzero().squeeze(1), (moved >= 0).nonzero().squeeze(1)
        assert torch.equal((1 + t.fallback_rows + new + f) % 2, moved[new] % 2)  # owner's rows
        o, n = keys[old].argsort(), moved[new].argsort()  # the same ids, matched
        assert torch.equal(keys[old][o], moved[new][n])
        base = phys.table_offsets[f] + 1 + t.fallback_rows
        for key in ("emb.weight", "emb.adagrad_sum", "linear.weight"):
            assert torch.equal(before[key][base + old[o]], after[key][base + new[n]]), key


def test_a_shard_with_too_many_ids_keeps_the_most_recently_seen() -> None:
    """Loaded with more id shards, a shard whose ids outnumber its slots keeps the most recently
    seen of them (the others fall back, as if evicted)."""
    case, tables = Case("dlrm", "plain"), (DynamicTableConfig(feature="ad", capacity=8),)
    model = dynamic_model(case, tables)
    _run(model, case, range(6), prefetch=False)
    state = model.embeddings.state_dict()
    keys, last = state["dynamic.ad.keys"], state["dynamic.ad.last_seen"]
    moved = _reloaded(case, tables, model, 2).embeddings.state_dict()["dynamic.ad.keys"]
    dropped = 0
    for parity in (0, 1):
        ids = keys[(keys >= 0) & (keys % 2 == parity)]
        recency = last[(keys >= 0) & (keys % 2 == parity)]
        kept = moved[(moved >= 0) & (moved % 2 == parity)]
        order = torch.argsort(-recency, stable=True)[:4]  # 4 slots per shard
        assert sorted(kept.tolist()) == sorted(ids[order].tolist())
        dropped += ids.numel() - kept.numel()
    assert dropped > 0  # the stream put more than 4 admitted ids of one parity in the table


def test_the_benchmark_reports_no_collision_within_capacity_and_the_map_cost() -> None:
    """``bench/dynamic_tables.py`` on a tiny stream: zero collisions among admitted ids, rows
    held within the capacity, the throughput ratio and the map's share of the step reported."""
    from bench.dynamic_tables import run

    out = run(capacity=40, fallback=4, steps=12, zipf=1.05, drift=5, seed=0, fields=0, small=True)
    assert out["collisions"]["dynamic_admitted_ids_sharing_a_row_any_step"] == 0
    assert out["collisions"]["hashed_seen_ids_sharing_a_row"] > 0
    assert 0 < out["memory"]["dynamic_rows_used_max"] <= 40 and out["memory"]["within_capacity"]
    counters = out["dynamic_counters_total"]
    assert counters["dynamic.admissions"] > 0 and counters["dynamic.fallback_ids"] > 0
    t = out["throughput"]
    assert (
        t["ratio_dynamic_vs_hashed"]
        == t["hashed_step_cpu_s_median"] / t["dynamic_step_cpu_s_median"]
    )
    assert 0 < t["dynamic_map_cpu_s_median"] < t["dynamic_step_cpu_s_median"]


def test_a_table_wise_dynamic_table_is_refused_with_the_reason() -> None:
    """Sharded by id, a rank holds the map of its ids and their rows: a table placed whole on one
    rank cannot be. (Rank 0 of 2 is built without a process group: no collective runs.)"""
    from trainer.parallel.comm import Collectives
    from trainer.parallel.plan import build_sharding_plan
    from trainer.parallel.sharded_embeddings import ShardedEmbeddingCollection

    case, tables = Case("dlrm", "plain"), (DynamicTableConfig(feature="user", capacity=8),)
    phys = physical_layout(layout(), tables)
    parallel = ParallelConfig(table_wise=("user",))
    plan = build_sharding_plan(phys, 2, case.model_cfg(), parallel, DTYPE)
    inner = ShardedEmbeddingCollection(plan, Collectives(0, 2), phys.slot_feature, dtype=DTYPE)
    with pytest.raises(ValueError, match=r"must be sharded row_wise.*parallel\.table_wise"):
        DynamicEmbeddingCollection(
            inner, layout(), tables, init_std=0.1, seed=SEED, comm=inner.comm
        )
