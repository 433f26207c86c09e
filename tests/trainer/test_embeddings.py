"""The stacked embedding collection: lookup, row-wise Adagrad, null rows, state round-trip."""

from __future__ import annotations

import pytest
import torch

from trainer.embeddings import EmbeddingCollection

OFFSETS = [0, 5, 8]  # three features of 5, 3 and 4 rows
TOTAL = 12


def test_init_is_deterministic_and_null_rows_are_zero():
    a = EmbeddingCollection(OFFSETS, TOTAL, 4, linear=True, seed=3, init_std=0.5)
    b = EmbeddingCollection(OFFSETS, TOTAL, 4, linear=True, seed=3, init_std=0.5)
    c = EmbeddingCollection(OFFSETS, TOTAL, 4, linear=True, seed=4, init_std=0.5)
    assert torch.equal(a.weights["emb"], b.weights["emb"])
    assert not torch.equal(a.weights["emb"], c.weights["emb"])
    assert a.weights["emb"][OFFSETS].abs().sum() == 0
    assert a.weights["emb"][[1, 2, 6, 9]].abs().min() > 0
    assert a.weights["linear"].abs().sum() == 0  # logistic-regression start
    assert 0.3 < a.weights["emb"][~a.null_mask].std() < 0.7


def test_lookup_returns_leaf_rows_with_per_row_gradients():
    coll = EmbeddingCollection(OFFSETS, TOTAL, 3, linear=True, init_std=1.0)
    ids = torch.tensor([0, 2, 7, 11])
    rows = coll.lookup(ids)
    assert rows.emb.is_leaf and rows.emb.requires_grad and rows.linear.shape == (4, 1)
    assert torch.equal(rows.emb.detach(), coll.weights["emb"][ids])
    assert rows.trainable.tolist() == [False, True, True, True]
    (rows.emb.sum() * 2 + rows.linear.sum()).backward()
    assert torch.equal(rows.grads()["emb"], torch.full((4, 3), 2.0))
    # lookup is a copy: changing the table later does not change the looked-up rows
    coll.weights["emb"].zero_()
    assert rows.emb.abs().sum() > 0


def test_rowwise_adagrad_equals_a_hand_computed_update():
    coll = EmbeddingCollection(OFFSETS, TOTAL, 2, linear=True, init_std=1.0, adagrad_eps=1e-3)
    w0 = coll.weights["emb"].clone()
    ids = torch.tensor([1, 6, 8])  # row 8 is feature 2's null row
    g = torch.tensor([[3.0, 4.0], [1.0, -1.0], [5.0, 5.0]])
    lr = 0.1
    coll.apply_gradients(ids, {"emb": g, "linear": None}, lr)
    # row 1: acc = (9 + 16) / 2 = 12.5 ; row 6: acc = 1 ; row 8 is null: untouched
    expect = w0.clone()
    expect[1] -= lr * g[0] / (12.5**0.5 + 1e-3)
    expect[6] -= lr * g[1] / (1.0 + 1e-3)
    torch.testing.assert_close(coll.weights["emb"], expect)
    assert coll.accum["emb"][[1, 6, 8]].tolist() == [12.5, 1.0, 0.0]
    # second step accumulates
    coll.apply_gradients(ids[:1], {"emb": g[:1]}, lr)
    expect[1] -= lr * g[0] / (25.0**0.5 + 1e-3)
    torch.testing.assert_close(coll.weights["emb"], expect)
    assert coll.weights["linear"].abs().sum() == 0  # no gradient, no update


def test_padding_rows_stay_zero_under_training():
    coll = EmbeddingCollection(OFFSETS, TOTAL, 3, linear=True)
    ids = torch.arange(TOTAL)
    for _ in range(3):
        rows = coll.lookup(ids)
        (rows.emb.square().sum() + rows.emb.sum() + rows.linear.sum()).backward()
        coll.apply_gradients(ids, rows.grads(), lr=0.5)
    assert coll.weights["emb"][OFFSETS].abs().sum() == 0
    assert coll.weights["linear"][OFFSETS].abs().sum() == 0
    assert coll.accum["emb"][OFFSETS].abs().sum() == 0
    assert coll.weights["linear"][[1, 6, 9]].abs().min() > 0


def test_state_dict_round_trips_and_rejects_other_layouts(tmp_path):
    coll = EmbeddingCollection(OFFSETS, TOTAL, 3, linear=True, seed=1)
    ids = torch.tensor([1, 3, 9])
    rows = coll.lookup(ids)
    rows.emb.sum().backward()
    coll.apply_gradients(ids, rows.grads(), lr=0.1)
    path = tmp_path / "emb.pt"
    torch.save(coll.state_dict(), path)
    other = EmbeddingCollection(OFFSETS, TOTAL, 3, linear=True, seed=2)
    other.load_state_dict(torch.load(path, weights_only=True))
    for k, v in coll.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k

    with pytest.raises(ValueError, match="expects"):
        EmbeddingCollection(OFFSETS, TOTAL, 3, linear=False).load_state_dict(coll.state_dict())
    with pytest.raises(ValueError, match="embedding_dim differs"):
        EmbeddingCollection(OFFSETS, TOTAL, 4, linear=True).load_state_dict(coll.state_dict())
    with pytest.raises(ValueError, match="null rows"):
        EmbeddingCollection([0, 4, 8], TOTAL, 3, linear=True).load_state_dict(coll.state_dict())


def test_constructor_validation_is_clear():
    with pytest.raises(ValueError, match="table_offsets"):
        EmbeddingCollection([0, 20], 12, 4)
    with pytest.raises(ValueError, match="dim >= 1"):
        EmbeddingCollection([0], 12, 0)
    with pytest.raises(ValueError, match="no 'linear' table"):
        EmbeddingCollection([0], 12, 2).apply_gradients(
            torch.tensor([1]), {"linear": torch.ones(1, 1)}, 0.1
        )
