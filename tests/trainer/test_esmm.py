"""ESMM (``model.task = "esmm"``): the batched loss and its gradients (dense parameters and rows)
equal a hand-written per-task float64 reference (naive ``pCTR * pCVR`` cross-entropy, one task and
one sample at a time, ``torch.autograd.grad`` inner loop) for MAML, FOMAML and plain training; the
numerically stable CTCVR logit equals the naive one; MetaEmb's generator trained on the ESMM loss
equals the same per-task reference; configs refuse what ESMM does not support (FiLM)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from tests.trainer.meta_fixtures import make_layout, random_batch
from trainer.meta import MetaConfig, adapt, outer_loss, predict
from trainer.models import ModelConfig, build_model
from trainer.models.esmm import ctcvr_logit, labels, sample_loss
from trainer.sparse import SparseOut

LAYOUT = make_layout(
    [("user", 7, 1), ("ad", 6, 1), ("tags", 5, 2)], dense_width=2, k_support=4, q_query=3
)


def esmm_model(arch: str, seed: int = 0, meta: MetaConfig | None = None):
    cfg = ModelConfig(
        arch=arch, embedding_dim=3, mlp=(5, 4), bottom_mlp=(4,), embedding_init_std=0.3,
        task="esmm", head_layers=1,
    )  # fmt: skip
    model = build_model(cfg, LAYOUT, seed=seed, meta=meta)
    model.embeddings.to(dtype=torch.float64)
    if model.embeddings.has_linear:  # non-zero linear rows: first-order terms carry gradients
        w = model.embeddings.store.weights["linear"]
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(5), dtype=w.dtype))
        w[model.embeddings.store.null] = 0.0
    return model.double()


# ---------------------------------------------------------------------------------------------
# The reference: one task, one sample at a time; the ESMM loss written from its definition.


def _ref_sample_loss(logits: torch.Tensor, click: float, conversion: float) -> torch.Tensor:
    p_ctr, p_cvr = torch.sigmoid(logits[0]), torch.sigmoid(logits[1])
    loss = -(click * torch.log(p_ctr) + (1 - click) * torch.log(1 - p_ctr))
    if conversion >= 0:  # CTCVR over all impressions with a known conversion
        p, y = p_ctr * p_cvr, click * conversion
        loss = loss - (y * torch.log(p) + (1 - y) * torch.log(1 - p))
    return loss


def _ref_fields(batch, t, pos, emb, lin, copies):
    fields, linear = [], torch.zeros((), dtype=emb.dtype)
    slot_feature = LAYOUT.slot_feature.tolist()
    for f in range(LAYOUT.num_features):
        acc = torch.zeros(emb.shape[1], dtype=emb.dtype)
        for s, sf in enumerate(slot_feature):
            u = int(batch.inverse[t, pos, s])
            if sf == f:
                acc = acc + copies["emb"].get(u, emb[u])
            if sf == f and lin is not None:
                linear = linear + copies["linear"].get(u, lin[u, 0])
        fields.append(acc)
    return torch.stack(fields), (linear if lin is not None else None)


def _ref_loss(model, params, batch, t, positions, emb, lin, copies):
    if not positions:
        return None
    losses = []
    for pos in positions:
        fields, linear = _ref_fields(batch, t, pos, emb, lin, copies)
        sparse = SparseOut(fields=fields[None], lr=None if linear is None else linear[None])
        dense = batch.dense[t, pos].double()[None]
        logits = functional_call(model.dense_half, params, (sparse, dense))[0]
        c, v = float(batch.click[t, pos]), float(batch.conversion[t, pos])
        losses.append(_ref_sample_loss(logits, c, v))
    return torch.stack(losses).mean()


def reference_outer_loss(model, emb, lin, batch, cfg):
    K = batch.k_support
    names = model.adapted_names(cfg.adapt)
    base = dict(model.dense_half.named_parameters())
    null_ids = set(LAYOUT.table_offsets)
    total, count = 0.0, 0
    for t in range(batch.inverse.shape[0]):
        if not bool(batch.episode_mask[t]):
            continue
        count += 1
        support = list(range(int(batch.n_support[t])))
        query = [K + j for j in range(int(batch.n_query[t]))]
        copies = {"emb": {}, "linear": {}}
        if cfg.mode == "plain":
            total = total + _ref_loss(model, base, batch, t, support + query, emb, lin, copies)
            continue
        params = dict(base)
        if cfg.adapt == "dense+emb":
            for u in torch.unique(batch.inverse[t]).tolist():
                if int(batch.ids[u]) not in null_ids:
                    copies["emb"][u] = emb[u]
                    if lin is not None:
                        copies["linear"][u] = lin[u, 0]
        for _ in range(cfg.inner_steps):
            keys = [("p", n) for n in names] + [
                (k, u) for k in ("emb", "linear") for u in copies[k]
            ]
            values = [params[n] if kind == "p" else copies[kind][n] for kind, n in keys]
            loss = _ref_loss(model, params, batch, t, support, emb, lin, copies)
            grads = torch.autograd.grad(
                loss, values, create_graph=cfg.mode == "maml", allow_unused=True
            )
            for (kind, n), v, g in zip(keys, values, grads, strict=True):
                g = torch.zeros_like(v) if g is None else g
                if kind == "p":
                    params[n] = v - cfg.inner_lr * g
                else:
                    copies[kind][n] = v - cfg.inner_lr * g
        total = total + _ref_loss(model, params, batch, t, query, emb, lin, copies)
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------


def assert_matches_reference(model, named, batch, cfg, reference):
    """``outer_loss`` and its gradients (the ``named`` parameters and the embedding rows) equal
    ``reference(model, emb, linear, batch, cfg)``'s in float64; returns the gradients by name."""
    sparse = model.embeddings.lookup(batch)
    rows = model.embeddings.rows
    loss, _ = outer_loss(model, sparse, batch, cfg)
    params = [p for _, p in named]
    leaves = [rows.emb] + ([rows.linear] if rows.linear is not None else [])
    got = torch.autograd.grad(loss, params + leaves, allow_unused=True)

    model.embeddings.lookup(batch)
    ref_rows = model.embeddings.rows
    ref = reference(model, ref_rows.emb, ref_rows.linear, batch, cfg)
    ref_leaves = [ref_rows.emb] + ([ref_rows.linear] if ref_rows.linear is not None else [])
    want = torch.autograd.grad(ref, params + ref_leaves, allow_unused=True)

    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    names = [n for n, _ in named] + ["rows.emb", "rows.linear"]
    for name, p, g, w in zip(names, params + leaves, got, want, strict=False):
        g = torch.zeros_like(p) if g is None else g
        w = torch.zeros_like(p) if w is None else w
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")
    return dict(zip(names, got, strict=False))


@pytest.mark.parametrize(
    ("arch", "mode", "adapt_mode"),
    [
        ("deepfm", "maml", "dense+emb"),
        ("dlrm", "maml", "head"),
        ("wide_deep", "fomaml", "dense"),
        ("melu", "fomaml", "dense+emb"),
        ("deepfm", "plain", "dense"),
    ],
)
def test_esmm_loss_and_gradients_equal_the_per_task_reference(arch, mode, adapt_mode):
    model = esmm_model(arch)
    # short episodes, a padding episode, unknown conversions
    batch = random_batch(LAYOUT, 4, seed=3)
    assert bool((batch.conversion < 0).any()) and bool((batch.click * batch.conversion > 0).any())
    cfg = MetaConfig(mode=mode, inner_steps=2, inner_lr=0.3, adapt=adapt_mode)

    named = list(model.dense_half.named_parameters())
    grad = assert_matches_reference(model, named, batch, cfg, reference_outer_loss)
    # both towers get gradients (the CVR tower only through the CTCVR loss)
    for tower in ("ctr.", "cvr."):
        assert any(
            g is not None and g.abs().sum() > 0 for n, g in grad.items() if n.startswith(tower)
        )


def reference_metaemb_loss(model, emb, lin, batch, cfg):
    """Per task (as ``tests/trainer/test_metaemb.py``'s reference, with the ESMM loss): the plain
    loss on the model's own rows, plus, with the model held fixed, the cold-phase support loss at
    the generated id embedding (from the mean of the support samples' attribute fields) and the
    query loss after ``inner_steps`` warm-up steps on it."""
    gen = model.id_generator
    names = list(LAYOUT.feature_names)
    f_id, f_attr = names.index(cfg.metaemb_id), [names.index(n) for n in cfg.metaemb_attributes]
    K, none = batch.k_support, {"emb": {}, "linear": {}}
    params = dict(model.dense_half.named_parameters())
    fixed = {k: v.detach() for k, v in params.items()}
    total, count = 0.0, 0
    for t in range(batch.inverse.shape[0]):
        if not bool(batch.episode_mask[t]):
            continue
        count += 1
        support = list(range(int(batch.n_support[t])))
        query = [K + j for j in range(int(batch.n_query[t]))]
        plain = _ref_loss(model, params, batch, t, support + query, emb, lin, none)
        samples = {p: _ref_fields(batch, t, p, emb, lin, none) for p in support + query}
        x = torch.stack([samples[p][0][f_attr].reshape(-1) for p in support]).detach().mean(0)
        e = gen.out(torch.relu(gen.hidden(x)))

        def phase(e, positions, t=t, samples=samples):
            losses = []
            for p in positions:
                fields, linear = samples[p]
                fields = fields.detach().clone()
                fields[f_id] = e
                lr = None if linear is None else linear.detach()[None]
                sparse = SparseOut(fields=fields[None], lr=lr)
                logits = functional_call(
                    model.dense_half, fixed, (sparse, batch.dense[t, p].double()[None])
                )[0]
                c, v = float(batch.click[t, p]), float(batch.conversion[t, p])
                losses.append(_ref_sample_loss(logits, c, v))
            return torch.stack(losses).mean()

        cold = phase(e, support)
        for _ in range(cfg.inner_steps):
            (g,) = torch.autograd.grad(phase(e, support), e, create_graph=True)
            e = e - cfg.inner_lr * g
        a = cfg.metaemb_alpha
        total = total + plain + a * cold + (1 - a) * phase(e, query)
    return total / max(count, 1)


@pytest.mark.parametrize("arch", ["deepfm", "melu"])
def test_metaemb_with_esmm_equals_the_per_task_reference(arch):
    cfg = MetaConfig(mode="metaemb", metaemb_id="ad", metaemb_attributes=("user", "tags"),
                     metaemb_alpha=0.3, inner_steps=2, inner_lr=0.4, encoder_hidden=5)  # fmt: skip
    model = esmm_model(arch, meta=cfg)
    batch = random_batch(LAYOUT, 4, seed=3)
    named = list(model.named_parameters())  # both towers + the generator
    grad = assert_matches_reference(model, named, batch, cfg, reference_metaemb_loss)
    assert grad["id_generator.hidden.weight"].abs().max() > 0  # the generator is trained
    sparse = model.embeddings.lookup(batch)
    after = predict(model, sparse, batch, adapt(model, sparse, batch, cfg))
    assert after.shape == (4, LAYOUT.q_query, 2)


def test_ctcvr_logit_and_loss_equal_the_naive_formulas_and_stay_finite():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 2, generator=g, dtype=torch.float64) * 4
    p = torch.sigmoid(logits[:, 0]) * torch.sigmoid(logits[:, 1])
    torch.testing.assert_close(torch.sigmoid(ctcvr_logit(logits)), p, rtol=1e-12, atol=0)
    click = (torch.rand(200, generator=g) < 0.5).double()
    conv = torch.where(torch.rand(200, generator=g) < 0.2, -1.0, (torch.rand(200) < 0.5).double())
    got = sample_loss(logits, labels(click, conv, torch.float64))
    want = torch.stack(
        [
            _ref_sample_loss(x, float(c), float(v))
            for x, c, v in zip(logits, click, conv, strict=True)
        ]
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    extreme = torch.tensor([[40.0, 40.0], [-40.0, -40.0], [40.0, -40.0]], requires_grad=True)
    loss = sample_loss(extreme, torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])).sum()
    (grad,) = torch.autograd.grad(loss, extreme)
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())


def test_predict_returns_both_heads_and_adaptation_moves_them():
    model = esmm_model("deepfm")
    batch = random_batch(LAYOUT, 3, seed=4)
    sparse = model.embeddings.read(batch)
    cfg = MetaConfig(mode="maml", inner_steps=1, inner_lr=0.5, adapt="dense")
    before = predict(model, sparse, batch)
    after = predict(model, sparse, batch, adapt(model, sparse, batch, cfg))
    assert before.shape == after.shape == (3, LAYOUT.q_query, 2)
    assert (after - before)[..., 0].abs().max() > 1e-6
    assert (after - before)[..., 1].abs().max() > 1e-6


def test_configs_refuse_what_esmm_does_not_support():
    from trainer.config import DataConfig, TrainerConfig
    from trainer.parallel.plan import ParallelConfig

    with pytest.raises(ValueError, match=r"leave model.label = 'click'"):
        ModelConfig(task="esmm", label="conversion")
    with pytest.raises(ValueError, match=r"model.task 'cvr' is not one of"):
        ModelConfig(task="cvr")  # type: ignore[arg-type]
    esmm, data = ModelConfig(task="esmm"), DataConfig(path="/data")
    with pytest.raises(ValueError, match=r"meta.mode = 'film': FiLM's support-set encoder"):
        TrainerConfig(data=data, model=esmm, meta=MetaConfig(mode="film"))
    metaemb = MetaConfig(mode="metaemb", metaemb_id="ad_id", metaemb_attributes=("ad_brand",))
    TrainerConfig(data=data, model=esmm, meta=metaemb)  # the generator trains on the ESMM loss
    TrainerConfig(data=data, model=esmm, parallel=ParallelConfig(des="on"))  # DES: per tower
    TrainerConfig(data=data, model=esmm, meta=MetaConfig(mode="fomaml"))


def test_the_clicked_conversion_label_trains_and_scores_on_clicked_samples_only():
    """ESMM's baseline: the CVR model on clicked samples equals the conversion model on data
    whose unclicked samples have an unknown conversion."""
    from trainer.evaluate import query_labels

    cfg = MetaConfig(mode="maml", inner_steps=1, inner_lr=0.3, adapt="dense")
    batch = random_batch(LAYOUT, 4, seed=5)
    masked = random_batch(LAYOUT, 4, seed=5)
    masked.conversion = torch.where(masked.click > 0, masked.conversion, -1.0)
    losses, scored = [], []
    for label, b in (("clicked_conversion", batch), ("conversion", masked)):
        model = build_model(ModelConfig(arch="melu", mlp=(5, 4), label=label), LAYOUT, seed=0)
        losses.append(outer_loss(model, model.embeddings.lookup(b), b, cfg)[0])
        scored.append(query_labels(model, b))
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    (y0, m0), (y1, m1) = scored
    assert torch.equal(m0, m1) and torch.equal(y0[m0], y1[m1])
    assert 0 < int(scored[0][1].sum()) < int((batch.query_mask & batch.episode_mask[:, None]).sum())
