"""The sharded collection without processes: initialisation equal to the plain collection at every
world size, world-size-1 behaviour bit-identical to the plain collection, state and resharding."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.trainer.meta_fixtures import make_layout, random_batch
from trainer import embeddings
from trainer.embeddings import PlainEmbeddingCollection
from trainer.meta import MetaConfig, outer_loss
from trainer.models import ModelConfig, build_model
from trainer.optim import OptimConfig, build_optimizers
from trainer.parallel.comm import Collectives
from trainer.parallel.plan import ParallelConfig, build_sharding_plan
from trainer.parallel.reshard import merge_shards, reshard_states
from trainer.parallel.sharded_embeddings import ShardedEmbeddingCollection, shard_of_full

FEATURES = [("user", 41, 1), ("ad", 23, 1), ("hour", 7, 1), ("tags", 13, 3)]


def _layout():
    return make_layout(FEATURES, dense_width=2)


def _plan(world_size: int, arch: str = "deepfm", **cfg):
    return build_sharding_plan(
        _layout(), world_size, ModelConfig(arch=arch, embedding_dim=4), ParallelConfig(**cfg)
    )


def _plain(linear: bool = True, dtype=torch.float32, seed: int = 3) -> PlainEmbeddingCollection:
    lay = _layout()
    return PlainEmbeddingCollection(
        lay.table_offsets, lay.total_rows, 4, lay.slot_feature, linear=linear, init_std=0.1,
        seed=seed, dtype=dtype,
    )  # fmt: skip


def _batch(ids: torch.Tensor) -> SimpleNamespace:
    """A lookup's input with one sample reading the first rows (6 slots)."""
    return SimpleNamespace(ids=ids, inverse=torch.zeros(1, 1, 6, dtype=torch.int64))


def _shards(plan, dtype=torch.float32, seed: int = 3) -> list[ShardedEmbeddingCollection]:
    """Every rank's shard, built in this process (no collective runs in the constructor)."""
    return [
        ShardedEmbeddingCollection(
            plan,
            Collectives(r, plan.world_size),
            _layout().slot_feature,
            init_std=0.1,
            seed=seed,
            dtype=dtype,
        )
        for r in range(plan.world_size)
    ]


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_rows", [16, 32, 1 << 16])
def test_shards_hold_exactly_the_plain_initial_rows(world_size, dtype, chunk_rows, monkeypatch):
    # Small chunks exercise the chunked draw (several chunks + a merged remainder) on a small table.
    monkeypatch.setattr(embeddings, "INIT_CHUNK_ROWS", chunk_rows)
    plan = _plan(world_size, table_wise=("hour",))
    full = merge_shards([s.state_dict() for s in _shards(plan, dtype)])
    plain = _plain(dtype=dtype).state_dict()
    assert set(full) == set(plain)
    for key, value in plain.items():
        assert torch.equal(full[key], value), key


def test_world_size_1_trains_bit_identically_to_the_plain_collection() -> None:
    lay = _layout()
    cfg = ModelConfig(arch="wide_deep", embedding_dim=4, mlp=(8,), embedding_init_std=0.1)
    plan = build_sharding_plan(lay, 1, cfg)
    coll = ShardedEmbeddingCollection(
        plan, Collectives(0, 1), lay.slot_feature, init_std=0.1, seed=3
    )
    models = [build_model(cfg, lay, embeddings=e, seed=0) for e in (_plain(), coll)]
    opts = [build_optimizers(OptimConfig(dense_lr=0.01, sparse_lr=0.3), m) for m in models]
    meta = MetaConfig(mode="maml", adapt="dense+emb")
    for step in range(3):
        batch = random_batch(lay, 5, seed=step)
        for model, opt in zip(models, opts, strict=True):
            loss, _ = outer_loss(model, model.embeddings.lookup(batch), batch, meta)
            loss.backward()
            opt.step()
    plain_state, sharded_state = models[0].embeddings.state_dict(), coll.state_dict()
    for key, value in plain_state.items():
        assert torch.equal(sharded_state[key], value), key
    assert (plain_state["emb.adagrad_sum"] > 0).any()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_lookup_returns_autograd_leaves_and_null_rows_are_not_trainable() -> None:
    plan = _plan(1)
    coll = _shards(plan)[0]
    ids = torch.tensor([0, 5, 41, 60, 71, 72])  # 0, 41, 71: null rows of user, ad, tags
    sparse = coll.lookup(_batch(ids))
    rows = coll.rows
    assert rows.emb.is_leaf and rows.emb.requires_grad and rows.linear.requires_grad
    assert coll.is_null(ids).tolist() == [True, False, True, False, True, False]
    plain = _plain()
    want = plain.lookup(_batch(ids))
    assert torch.equal(rows.emb.detach(), plain.rows.emb.detach())
    assert torch.equal(sparse.fields, want.fields) and torch.equal(sparse.lr, want.lr)


def test_apply_gradients_needs_a_lookup_and_updates_only_tables_with_gradients() -> None:
    coll = _shards(_plan(1))[0]
    ids = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="needs a lookup first"):
        coll.apply_gradients(0.1)
    coll.lookup(_batch(ids))
    rows = coll.rows
    rows.emb.grad = torch.ones(3, 4)
    coll.apply_gradients(0.1)
    with pytest.raises(ValueError, match="needs a lookup first"):
        coll.apply_gradients(0.1)  # one lookup, one apply
    coll.lookup(_batch(ids))
    after = coll.rows
    assert torch.allclose(after.emb - rows.emb.detach(), torch.full((3, 4), -0.1), atol=1e-6)
    assert torch.equal(after.linear, rows.linear.detach())  # no gradient: no update


def test_shard_state_refuses_another_world_size_and_reshards_explicitly() -> None:
    plan2, plan1 = _plan(2), _plan(1)
    shards2 = _shards(plan2, seed=5)
    g = torch.Generator().manual_seed(0)
    for s in shards2:  # rows and optimizer state away from their initial values
        for table in (s.store.weights, s.store.accum):
            for t in table.values():
                t.add_(torch.rand(t.shape, generator=g))
    states2 = [s.state_dict() for s in shards2]
    single = _shards(plan1, seed=0)[0]
    with pytest.raises(ValueError, match=r"rank 0 of 2 .* this is rank 0 of 1 .*reshard"):
        single.load_state_dict(states2[0])
    (state1,) = reshard_states(states2, plan1)
    single.load_state_dict(state1)
    full = merge_shards(states2)
    for key, value in full.items():
        assert torch.equal(single.state_dict()[key], value), key
    # 2 -> 8 -> 2 ranks gives back the same shards
    back = reshard_states(reshard_states(states2, _plan(8)), plan2)
    for a, b in zip(back, states2, strict=True):
        for key in ("emb.weight", "linear.weight", "emb.adagrad_sum", "linear.adagrad_sum"):
            assert torch.equal(a[key], b[key])


def test_a_full_table_loads_into_a_shard_and_a_wrong_one_is_refused() -> None:
    plan = _plan(2)
    plain = _plain(seed=9)
    rank1 = _shards(plan)[1]
    rank1.load_state_dict(plain.state_dict())  # warm start from a single-process run
    assert torch.equal(rank1.store.weights["emb"], plain.store.weights["emb"][plan.owned_ids(1)])
    with pytest.raises(ValueError, match="another feature layout or embedding_dim"):
        shard_of_full(plan, 0, {"emb.weight": torch.zeros(10, 4)})
    with pytest.raises(ValueError, match="tables"):
        _shards(_plan(2, arch="dlrm"))[0].load_state_dict(plain.state_dict())  # no linear table
    with pytest.raises(ValueError, match="in rank order"):
        merge_shards([s.state_dict() for s in reversed(_shards(plan))])
