"""The plain embedding collection and its row storage: lookup, row-wise Adagrad, null rows, pooling,
state round-trip."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from trainer.embeddings import PlainEmbeddingCollection

OFFSETS = [0, 5, 8]  # three features of 5, 3 and 4 rows
TOTAL = 12


def _batch(ids: torch.Tensor, inverse: torch.Tensor | None = None) -> SimpleNamespace:
    """A lookup's input: ``ids`` and one sample per episode reading the first rows (S = 3)."""
    if inverse is None:
        inverse = torch.zeros(1, 1, len(OFFSETS), dtype=torch.int64)
    return SimpleNamespace(ids=ids, inverse=inverse)


def test_init_is_deterministic_and_null_rows_are_zero():
    a = PlainEmbeddingCollection(OFFSETS, TOTAL, 4, linear=True, seed=3, init_std=0.5)
    b = PlainEmbeddingCollection(OFFSETS, TOTAL, 4, linear=True, seed=3, init_std=0.5)
    c = PlainEmbeddingCollection(OFFSETS, TOTAL, 4, linear=True, seed=4, init_std=0.5)
    w = a.store.weights
    assert torch.equal(w["emb"], b.store.weights["emb"])
    assert not torch.equal(w["emb"], c.store.weights["emb"])
    assert w["emb"][OFFSETS].abs().sum() == 0
    assert w["emb"][[1, 2, 6, 9]].abs().min() > 0
    assert w["linear"].abs().sum() == 0  # logistic-regression start
    assert 0.3 < w["emb"][~a.store.null].std() < 0.7


def test_lookup_returns_leaf_rows_with_per_row_gradients():
    coll = PlainEmbeddingCollection(OFFSETS, TOTAL, 3, linear=True, init_std=1.0)
    ids = torch.tensor([0, 2, 7, 11])
    coll.lookup(_batch(ids))
    rows = coll.rows
    assert rows.emb.is_leaf and rows.emb.requires_grad and rows.linear.shape == (4, 1)
    assert torch.equal(rows.emb.detach(), coll.store.weights["emb"][ids])
    assert coll.is_null(ids).tolist() == [True, False, False, False]
    (rows.emb.sum() * 2 + rows.linear.sum()).backward()
    assert torch.equal(rows.grads()["emb"], torch.full((4, 3), 2.0))
    # lookup is a copy: changing the table later does not change the looked-up rows
    coll.store.weights["emb"].zero_()
    assert rows.emb.abs().sum() > 0


def test_lookup_pools_fields_and_the_lr_term():
    coll = PlainEmbeddingCollection(
        OFFSETS, TOTAL, 2, [0, 1, 1], linear=True, init_std=1.0
    )  # feature 1 has two slots
    coll.store.weights["linear"].copy_(torch.arange(TOTAL, dtype=torch.float32)[:, None])
    ids = torch.tensor([1, 5, 6, 7])
    inverse = torch.tensor([[[0, 2, 3], [0, 1, 1]]])  # (1 episode, 2 samples, 3 slots)
    out = coll.lookup(_batch(ids, inverse))
    emb = coll.store.weights["emb"]
    zero = torch.zeros(2)  # feature 2 has no slot here
    torch.testing.assert_close(out.fields[0, 0], torch.stack([emb[1], emb[6] + emb[7], zero]))
    torch.testing.assert_close(out.fields[0, 1], torch.stack([emb[1], emb[5] + emb[5], zero]))
    assert out.lr.tolist() == [[1.0 + 6 + 7, 1.0 + 5 + 5]]
    assert out.fm_sum is None and out.h1 is None


def test_rowwise_adagrad_equals_a_hand_computed_update():
    coll = PlainEmbeddingCollection(OFFSETS, TOTAL, 2, linear=True, init_std=1.0, adagrad_eps=1e-3)
    w0 = coll.store.weights["emb"].clone()
    ids = torch.tensor([1, 6, 8])  # row 8 is feature 2's null row
    g = torch.tensor([[3.0, 4.0], [1.0, -1.0], [5.0, 5.0]])
    lr = 0.1
    coll.lookup(_batch(ids))
    coll.rows.emb.grad = g
    coll.apply_gradients(lr)  # the leaves' gradients (linear: none)
    # row 1: acc = (9 + 16) / 2 = 12.5 ; row 6: acc = 1 ; row 8 is null: untouched
    expect = w0.clone()
    expect[1] -= lr * g[0] / (12.5**0.5 + 1e-3)
    expect[6] -= lr * g[1] / (1.0 + 1e-3)
    torch.testing.assert_close(coll.store.weights["emb"], expect)
    assert coll.store.accum["emb"][[1, 6, 8]].tolist() == [12.5, 1.0, 0.0]
    # second step accumulates
    coll.store.update(ids[:1], {"emb": g[:1]}, lr)
    expect[1] -= lr * g[0] / (25.0**0.5 + 1e-3)
    torch.testing.assert_close(coll.store.weights["emb"], expect)
    assert coll.store.weights["linear"].abs().sum() == 0  # no gradient, no update


def test_padding_rows_stay_zero_under_training():
    coll = PlainEmbeddingCollection(OFFSETS, TOTAL, 3, linear=True)
    ids = torch.arange(TOTAL)
    for _ in range(3):
        coll.lookup(_batch(ids))
        rows = coll.rows
        (rows.emb.square().sum() + rows.emb.sum() + rows.linear.sum()).backward()
        coll.apply_gradients(lr=0.5)
    w, acc = coll.store.weights, coll.store.accum
    assert w["emb"][OFFSETS].abs().sum() == 0
    assert w["linear"][OFFSETS].abs().sum() == 0
    assert acc["emb"][OFFSETS].abs().sum() == 0
    assert w["linear"][[1, 6, 9]].abs().min() > 0


def test_state_dict_round_trips_and_rejects_other_layouts(tmp_path):
    coll = PlainEmbeddingCollection(OFFSETS, TOTAL, 3, linear=True, seed=1)
    ids = torch.tensor([1, 3, 9])
    coll.lookup(_batch(ids))
    coll.rows.emb.sum().backward()
    coll.apply_gradients(lr=0.1)
    path = tmp_path / "emb.pt"
    torch.save(coll.state_dict(), path)
    other = PlainEmbeddingCollection(OFFSETS, TOTAL, 3, linear=True, seed=2)
    other.load_state_dict(torch.load(path, weights_only=True))
    for k, v in coll.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k

    with pytest.raises(ValueError, match="expects"):
        PlainEmbeddingCollection(OFFSETS, TOTAL, 3).load_state_dict(coll.state_dict())
    with pytest.raises(ValueError, match="embedding_dim differs"):
        PlainEmbeddingCollection(OFFSETS, TOTAL, 4, linear=True).load_state_dict(coll.state_dict())
    with pytest.raises(ValueError, match="null rows"):
        PlainEmbeddingCollection([0, 4, 8], TOTAL, 3, linear=True).load_state_dict(
            coll.state_dict()
        )


def test_constructor_and_apply_validation_is_clear():
    with pytest.raises(ValueError, match="table_offsets"):
        PlainEmbeddingCollection([0, 20], 12, 4)
    with pytest.raises(ValueError, match="dim >= 1"):
        PlainEmbeddingCollection([0], 12, 0)
    coll = PlainEmbeddingCollection([0], 12, 2)
    with pytest.raises(ValueError, match="no 'linear' table"):
        coll.store.update(torch.tensor([1]), {"linear": torch.ones(1, 1)}, 0.1)
    with pytest.raises(ValueError, match="needs a lookup first"):
        coll.apply_gradients(0.1)
