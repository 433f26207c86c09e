"""The model zoo: shapes, padding, the sparse operators (pooling, LR, FM, the first layer's field
part) against naive computations, config validation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.trainer.meta_fixtures import make_layout, random_batch
from trainer.embeddings import PlainEmbeddingCollection
from trainer.models import ARCHS, ModelConfig, build_model
from trainer.models.common import Linear
from trainer.models.dlrm import DotInteraction
from trainer.sparse import Pooling, SparseOut

LAYOUT = make_layout(
    [("user", 9, 1), ("ad", 7, 1), ("tags", 6, 3)], dense_width=2, k_support=3, q_query=2
)
NO_DENSE = make_layout([("user", 9, 1), ("ad", 7, 1)], dense_width=0, k_support=3, q_query=2)


def small(arch: str, **kw) -> ModelConfig:
    return ModelConfig(
        arch=arch, embedding_dim=4, mlp=(8, 6), bottom_mlp=(5,), embedding_init_std=0.5, **kw
    )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout", [LAYOUT, NO_DENSE], ids=["dense", "no-dense"])
def test_forward_shapes_and_parameters_are_dense_only(arch, layout):
    model = build_model(small(arch), layout, seed=0)
    batch = random_batch(layout, 5, seed=1)
    sparse = model.embeddings.lookup(batch)
    assert sparse.fields.shape == (5, 5, layout.num_features, 4)
    assert (sparse.lr is not None) == (arch in ("deepfm", "wide_deep"))
    logits = model(sparse, batch.dense)
    assert logits.shape == (5, 5) and torch.isfinite(logits).all()
    # The injected collection is not a submodule: Adam sees exactly the dense half.
    assert [id(p) for p in model.parameters()] == [id(p) for p in model.dense_half.parameters()]
    assert not any(k.startswith("embeddings") for k in model.state_dict())
    logits.sum().backward()
    rows = model.embeddings.rows
    assert rows.emb.grad is not None and all(p.grad is not None for p in model.parameters())


def test_build_is_deterministic_given_the_seed():
    a, b = (
        build_model(small("deepfm"), LAYOUT, seed=7),
        build_model(small("deepfm"), LAYOUT, seed=7),
    )
    c = build_model(small("deepfm"), LAYOUT, seed=8)
    for (n, p), (_, q), (_, _r) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), n
    assert not all(torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters(), strict=True))
    assert torch.equal(a.embeddings.store.weights["emb"], b.embeddings.store.weights["emb"])


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_slots_contribute_nothing(arch):
    """A multi-valued feature's padding slots read the zero null row: the order of values and the
    number of padding slots do not change the prediction, and the null row never moves."""
    model = build_model(small(arch), LAYOUT, seed=0)
    coll = model.embeddings
    tags = LAYOUT.table_offsets[2]
    ids = torch.tensor([3, 9 + 2, tags, tags + 4])  # user 3, ad 2, tags null and 4
    inverse = torch.tensor(
        [[[0, 1, 3, 2, 2]], [[0, 1, 2, 3, 2]], [[0, 1, 2, 2, 3]]]
    )  # (3 samples, 1, S)
    sparse = coll.lookup(SimpleNamespace(ids=ids, inverse=inverse))
    dense = torch.ones(3, 1, 2)
    logits = model(sparse, dense)
    torch.testing.assert_close(logits[0], logits[1])
    torch.testing.assert_close(logits[0], logits[2])
    logits.sum().backward()
    coll.apply_gradients(lr=1.0)
    assert coll.store.weights["emb"][tags].abs().sum() == 0


def test_pooling_and_lr_term_equal_a_naive_sum():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(10, 3, generator=g)
    lin = torch.randn(10, 1, generator=g)
    inverse = torch.randint(0, 10, (4, 2, 5), generator=g)
    pooling = Pooling(LAYOUT.slot_feature, LAYOUT.num_features)
    fields = pooling.fields(rows, inverse)
    for t in range(4):
        for n in range(2):
            want = torch.zeros(3, 3)
            for s, f in enumerate(LAYOUT.slot_feature.tolist()):
                want[f] += rows[inverse[t, n, s]]
            torch.testing.assert_close(fields[t, n], want)
            torch.testing.assert_close(
                pooling.lr(lin, inverse)[t, n], sum(lin[inverse[t, n, s], 0] for s in range(5))
            )


def test_fm_term_equals_the_sum_of_pairwise_dot_products():
    e = torch.randn(6, 5, 4, dtype=torch.float64)
    naive = torch.zeros(6, dtype=torch.float64)
    for i in range(5):
        for j in range(i + 1, 5):
            naive += (e[:, i] * e[:, j]).sum(-1)
    torch.testing.assert_close(SparseOut(fields=e).fm_term(), naive)
    # from the sums over fields of e_f and |e_f|^2 (what DES's owners send)
    sums = SparseOut(fm_sum=e.sum(1), fm_sq=(e * e).sum((1, 2)))
    torch.testing.assert_close(sums.fm_term(), naive)


def test_first_dense_layer_is_a_sum_of_per_field_partial_products():
    e = torch.randn(7, 3, 4, dtype=torch.float64)
    w = torch.randn(12, 5, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    layer = Linear(12, 5).double()
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    per_field = sum(e[:, f] @ w[f * 4 : (f + 1) * 4] for f in range(3)) + b
    torch.testing.assert_close(SparseOut(fields=e).first_layer(layer), per_field)
    torch.testing.assert_close(
        SparseOut(fields=e).first_layer(layer), torch.cat([e[:, f] for f in range(3)], 1) @ w + b
    )
    # from the field part computed elsewhere (h1 = concat(e) @ W, what DES's owners sum)
    torch.testing.assert_close(SparseOut(h1=(e.flatten(1) @ w,)).first_layer(layer), per_field)


def test_dlrm_interaction_takes_each_pair_once():
    x = torch.randn(2, 4, 3)
    out = DotInteraction(4)(x)
    want = [
        [(x[b, i] * x[b, j]).sum() for i in range(4) for j in range(i + 1, 4)] for b in range(2)
    ]
    torch.testing.assert_close(out, torch.tensor(want))


def test_adapted_names_select_the_head_or_all_dense_parameters():
    model = build_model(small("dlrm", head_layers=2), LAYOUT)
    assert model.adapted_names("head") == [
        "over_arch.layers.1.weight", "over_arch.layers.1.bias",
        "over_arch.layers.2.weight", "over_arch.layers.2.bias",
    ]  # fmt: skip
    assert set(model.adapted_names("dense")) == {n for n, _ in model.dense_half.named_parameters()}
    melu = build_model(small("melu", head_layers=3), LAYOUT)  # all decision layers, as MeLU
    assert melu.adapted_names("head")[:3] == [
        "decision.first.from_fields.weight", "decision.first.from_fields.bias",
        "decision.first.from_dense.weight",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="adapt 'all'"):
        model.adapted_names("all")


def test_conversion_label_and_config_validation_messages():
    with pytest.raises(ValueError, match=r"model.arch 'xdeepfm' is not one of dlrm, deepfm"):
        ModelConfig(arch="xdeepfm")
    with pytest.raises(ValueError, match=r"model.head_layers must be between 1 and 3"):
        ModelConfig(mlp=(8, 4), head_layers=4)
    with pytest.raises(ValueError, match=r"model.mlp must list at least one"):
        ModelConfig(mlp=())
    with pytest.raises(ValueError, match=r"model.label"):
        ModelConfig(label="purchase")
    with pytest.raises(ValueError, match="embedding_dim must be >= 1"):
        ModelConfig(embedding_dim=0)
    cfg = small("deepfm")
    with pytest.raises(ValueError, match=r"has dim 8, model.embedding_dim is 4"):
        build_model(
            cfg,
            LAYOUT,
            PlainEmbeddingCollection(LAYOUT.table_offsets, LAYOUT.total_rows, 8, linear=True),
        )
    with pytest.raises(ValueError, match="built for another manifest"):
        build_model(cfg, LAYOUT, PlainEmbeddingCollection([0], 5, 4, linear=True))
    with pytest.raises(ValueError, match="needs a collection with the 1-wide linear table"):
        build_model(
            cfg, LAYOUT, PlainEmbeddingCollection(LAYOUT.table_offsets, LAYOUT.total_rows, 4)
        )
    one = make_layout([("user", 9, 1)], dense_width=0)
    with pytest.raises(ValueError, match="at least two vectors"):
        build_model(small("dlrm"), one)


def test_config_lists_from_toml_become_tuples():
    cfg = ModelConfig(mlp=[32, 16], bottom_mlp=[8])
    assert cfg.mlp == (32, 16) and cfg.bottom_mlp == (8,)


def test_model_config_loads_through_the_config_loader():
    from trainer.config_loader import build

    cfg = build(ModelConfig, {"arch": "deepfm", "mlp": [64, 32], "label": "conversion"})
    assert cfg.mlp == (64, 32) and cfg.label == "conversion"
    with pytest.raises(ValueError, match="arch"):
        build(ModelConfig, {"arch": "fm"})
