"""MetaEmb (``meta.mode = "metaemb"``): the batched loss and its gradients (dense layers,
generator, embedding rows) equal a per-task computation written by hand (float64, 1e-9): the plain
loss on the model's own rows plus, with the model held fixed, the cold-phase support loss at the
generated id embedding and the query loss after the warm-up step; evaluation's generation and
warm-up give the same query loss; configs refuse what cannot work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tests.trainer.meta_fixtures import random_batch
from tests.trainer.test_meta import LAYOUT, _ref_fields, lookup
from trainer.meta import MetaConfig, adapt, export_refusal, outer_loss, predict
from trainer.models import ModelConfig, build_model
from trainer.sparse import SparseOut

ID, ATTRS = "ad", ("user", "tags")


def metaemb_cfg(**changes) -> MetaConfig:
    values = {"mode": "metaemb", "metaemb_id": ID, "metaemb_attributes": ATTRS,
              "metaemb_alpha": 0.3, "inner_steps": 2, "inner_lr": 0.4, "encoder_hidden": 5}  # fmt: skip
    return MetaConfig(**{**values, **changes})


def metaemb_model(arch: str, meta: MetaConfig):
    cfg = ModelConfig(
        arch=arch, embedding_dim=3, mlp=(5, 4), bottom_mlp=(4,), embedding_init_std=0.3
    )
    model = build_model(cfg, LAYOUT, seed=0, meta=meta)
    model.embeddings.to(dtype=torch.float64)
    return model.double()


def _logit(model, params, fields, linear, dense):
    sparse = SparseOut(fields=fields[None], lr=None if linear is None else linear[None])
    return functional_call(model.dense_half, params, (sparse, dense[None]))[0]


def reference_loss(model, emb, lin, batch, cfg, warmed=None):
    """Per task: the plain loss over its support and query samples; the generator's input (the
    mean of the support samples' attribute fields), the cold-phase support loss and ``inner_steps``
    warm-up steps on the generated embedding with the model's parameters and rows detached, the
    query loss after them. ``warmed``: filled with each task's query loss after the warm-up."""
    gen = model.id_generator
    names = list(LAYOUT.feature_names)
    f_id, f_attr = names.index(ID), [names.index(n) for n in ATTRS]
    y = batch.click.double()
    K = batch.k_support
    none = {"emb": {}, "linear": {}}
    params = dict(model.dense_half.named_parameters())
    fixed = {k: v.detach() for k, v in params.items()}
    total, count = 0.0, 0
    for t in range(batch.inverse.shape[0]):
        if not bool(batch.episode_mask[t]):
            continue
        count += 1
        support = list(range(int(batch.n_support[t])))
        query = [K + j for j in range(int(batch.n_query[t]))]
        samples = {p: _ref_fields(model, batch, t, p, emb, lin, none) for p in support + query}
        plain = torch.stack(
            [
                F.binary_cross_entropy_with_logits(
                    _logit(model, params, *samples[p], batch.dense[t, p].double()), y[t, p]
                )
                for p in support + query
            ]
        ).mean()
        x = torch.stack([samples[p][0][f_attr].reshape(-1) for p in support]).detach().mean(0)
        e = F.linear(F.relu(F.linear(x, gen.hidden.weight, gen.hidden.bias)), gen.out.weight)
        e = e + gen.out.bias

        def phase(e, positions, t=t, samples=samples):
            losses = []
            for p in positions:
                fields, linear = samples[p]
                fields = fields.detach().clone()
                fields[f_id] = e
                lin_p = None if linear is None else linear.detach()
                logit = _logit(model, fixed, fields, lin_p, batch.dense[t, p].double())
                losses.append(F.binary_cross_entropy_with_logits(logit, y[t, p]))
            return torch.stack(losses).mean()

        cold = phase(e, support)
        for _ in range(cfg.inner_steps):
            (g,) = torch.autograd.grad(phase(e, support), e, create_graph=True)
            e = e - cfg.inner_lr * g
        warm = phase(e, query)
        if warmed is not None:
            warmed.append(warm.detach())
        a = cfg.metaemb_alpha
        total = total + plain + a * cold + (1 - a) * warm
    return total / max(count, 1)


@pytest.mark.parametrize("arch", ["dlrm", "deepfm", "wide_deep", "melu"])
def test_metaemb_gradients_equal_the_per_task_computation(arch):
    cfg = metaemb_cfg()
    model = metaemb_model(arch, cfg)
    batch = random_batch(LAYOUT, 4, seed=1)  # short episodes and a padding episode
    params = list(model.parameters())  # dense half + the generator
    sparse, rows = lookup(model, batch)
    loss, _ = outer_loss(model, sparse, batch, cfg)
    leaves = [rows.emb] + ([rows.linear] if rows.linear is not None else [])
    got = torch.autograd.grad(loss, params + leaves, allow_unused=True)

    _, ref_rows = lookup(model, batch)
    warmed = []
    ref = reference_loss(model, ref_rows.emb, ref_rows.linear, batch, cfg, warmed)
    ref_leaves = [ref_rows.emb] + ([ref_rows.linear] if ref_rows.linear is not None else [])
    want = torch.autograd.grad(ref, params + ref_leaves, allow_unused=True)

    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    names = [n for n, _ in model.named_parameters()] + ["rows.emb", "rows.linear"]
    for name, p, g, w in zip(names, params + leaves, got, want, strict=False):
        g = torch.zeros_like(p) if g is None else g
        w = torch.zeros_like(p) if w is None else w
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")
    gen_grad = got[[n for n, _ in model.named_parameters()].index("id_generator.hidden.weight")]
    assert gen_grad.abs().max() > 0  # the generator is trained

    # evaluation: generate from the support set, warm up on it, score the query set
    logits = predict(model, sparse, batch, adapt(model, sparse, batch, cfg))
    per = F.binary_cross_entropy_with_logits(
        logits, batch.click.double()[:, batch.k_support :], reduction="none"
    )
    qm = batch.query_mask & batch.episode_mask[:, None]
    ours = torch.stack([per[t][qm[t]].mean() for t in range(4) if batch.episode_mask[t]])
    torch.testing.assert_close(ours, torch.stack(warmed))


def test_without_adaptation_the_id_embedding_comes_from_the_query_attributes_only():
    cfg = metaemb_cfg()
    model = metaemb_model("deepfm", cfg)
    batch = random_batch(LAYOUT, 4, seed=3)
    sparse = model.embeddings.read(batch)
    cold = predict(model, sparse, batch)
    flipped = random_batch(LAYOUT, 4, seed=3)
    flipped.click = 1 - flipped.click  # labels are not read without adaptation
    torch.testing.assert_close(predict(model, model.embeddings.read(flipped), flipped), cold)
    K = batch.k_support
    plain = model(sparse.side(slice(K, None)), batch.dense[:, K:].double())
    assert not torch.allclose(cold, plain)  # the id's own row was replaced


def test_configs_and_refusals():
    with pytest.raises(ValueError, match=r"needs meta\.metaemb_id"):
        MetaConfig(mode="metaemb", metaemb_attributes=("user",))
    with pytest.raises(ValueError, match=r"needs meta\.metaemb_id"):
        MetaConfig(mode="metaemb", metaemb_id="ad", metaemb_attributes=("ad",))
    with pytest.raises(ValueError, match=r"\['campaign'\], which are not sparse features"):
        metaemb_model("melu", metaemb_cfg(metaemb_id="campaign"))
    with pytest.raises(ValueError, match="metaemb_alpha"):
        metaemb_cfg(metaemb_alpha=1.5)
    assert "id-embedding generator" in export_refusal(metaemb_cfg())
    model = metaemb_model("melu", metaemb_cfg())
    assert any(k.startswith("id_generator.") for k in model.state_dict())
