"""Meta-SGD (``meta.learn_inner_lr``): the batched meta-gradient, including the gradient of the
learned step sizes, equals an unbatched per-task computation written with ``torch.autograd.grad``
loops (float64, 1e-9); evaluation adapts with the learned step sizes; configs refuse what cannot
work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.trainer.meta_fixtures import random_batch
from tests.trainer.test_meta import LAYOUT, _ref_loss, lookup
from trainer.config import TrainerConfig
from trainer.config_loader import build
from trainer.meta import MetaConfig, adapt, export_refusal, outer_loss, predict
from trainer.models import ModelConfig, build_model


def metasgd_model(arch: str, meta: MetaConfig, seed: int = 0):
    cfg = ModelConfig(
        arch=arch, embedding_dim=3, mlp=(5, 4), bottom_mlp=(4,), embedding_init_std=0.3
    )
    model = build_model(cfg, LAYOUT, seed=seed, meta=meta)
    model.embeddings.to(dtype=torch.float64)
    if model.embeddings.has_linear:
        w = model.embeddings.store.weights["linear"]
        w.copy_(
            torch.randn(w.shape, generator=torch.Generator().manual_seed(5), dtype=w.dtype) * 0.3
        )
        w[model.embeddings.store.null] = 0.0
    model = model.double()
    # Step sizes that differ per layer and per entry, so a mix-up of two cannot pass.
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.inner_lrs.parameters():
            p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=g, dtype=p.dtype))
    return model


def reference_loss(model, emb, lin, batch, cfg, lrs):
    """Mean over valid episodes of the query loss after ``inner_steps`` steps of
    ``theta - lr * grad`` with ``lrs[name]`` per parameter (and ``lrs["emb"]``/``["linear"]`` for
    the task-local rows), one task at a time."""
    labels = batch.click.double()
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
        params = dict(base)
        copies = {"emb": {}, "linear": {}}
        if cfg.adapt == "dense+emb":
            for u in torch.unique(batch.inverse[t]).tolist():
                if int(batch.ids[u]) not in null_ids:
                    copies["emb"][u] = emb[u]
                    if lin is not None:
                        copies["linear"][u] = lin[u, 0]
        for _ in range(cfg.inner_steps):
            keys = [("p", n) for n in names] + [
                (tab, u) for tab in ("emb", "linear") for u in copies[tab]
            ]
            values = [params[n] if kind == "p" else copies[kind][n] for kind, n in keys]
            loss = _ref_loss(model, params, batch, t, support, labels, emb, lin, copies)
            grads = torch.autograd.grad(
                loss, values, create_graph=cfg.mode == "maml", allow_unused=True
            )
            if cfg.mode == "fomaml":
                grads = [None if g is None else g.detach() for g in grads]
            for (kind, n), v, g in zip(keys, values, grads, strict=True):
                g = torch.zeros_like(v) if g is None else g
                if kind == "p":
                    params[n] = v - lrs[n] * g
                else:
                    lr = lrs[kind]
                    copies[kind][n] = v - (lr.reshape(()) if kind == "linear" else lr) * g
        total = total + _ref_loss(model, params, batch, t, query, labels, emb, lin, copies)
    return total / max(count, 1)


def _named_lrs(model, cfg):
    """Reference step sizes by parameter name, read from the model's parameters directly."""
    per = cfg.learn_inner_lr == "parameter"
    lrs = {}
    for layer in model.adapted_layers(cfg.adapt):
        for pname, _ in model.dense_half.get_submodule(layer).named_parameters():
            key = f"{layer}.{pname}" if per else layer
            lrs[f"{layer}.{pname}"] = model.inner_lrs.lrs[key.replace(".", "/")]
    for table in ("emb", "linear"):
        if table in model.inner_lrs.lrs:
            lrs[table] = model.inner_lrs.lrs[table]
    return lrs


@pytest.mark.parametrize(
    "arch,mode,adapt_mode,granularity",
    [
        ("deepfm", "maml", "dense+emb", "parameter"),
        ("dlrm", "maml", "dense", "layer"),
        ("melu", "fomaml", "dense+emb", "layer"),
        ("wide_deep", "fomaml", "head", "parameter"),
        ("dlrm", "maml", "head", "parameter"),
        ("wide_deep", "maml", "dense+emb", "layer"),
    ],
)
def test_metasgd_gradients_equal_the_per_task_loop(arch, mode, adapt_mode, granularity):
    cfg = MetaConfig(
        mode=mode, inner_steps=2, inner_lr=0.3, adapt=adapt_mode, learn_inner_lr=granularity
    )
    model = metasgd_model(arch, cfg)
    batch = random_batch(LAYOUT, 4, seed=1)  # short episodes and a padding episode
    params = list(model.parameters())  # dense half + the step sizes
    assert any(p is q for p in params for q in model.inner_lrs.parameters())

    sparse, rows = lookup(model, batch)
    loss, _ = outer_loss(model, sparse, batch, cfg)
    leaves = [rows.emb] + ([rows.linear] if rows.linear is not None else [])
    got = torch.autograd.grad(loss, params + leaves, allow_unused=True)

    _, ref_rows = lookup(model, batch)
    ref_leaves = [ref_rows.emb] + ([ref_rows.linear] if ref_rows.linear is not None else [])
    ref = reference_loss(model, ref_rows.emb, ref_rows.linear, batch, cfg, _named_lrs(model, cfg))
    want = torch.autograd.grad(ref, params + ref_leaves, allow_unused=True)

    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    names = [n for n, _ in model.named_parameters()] + ["rows.emb", "rows.linear"]
    for name, p, g, w in zip(names, params + leaves, got, want, strict=False):
        g = torch.zeros_like(p) if g is None else g
        w = torch.zeros_like(p) if w is None else w
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")
    lr_grads = [
        g for p, g in zip(params, got, strict=False) if p in set(model.inner_lrs.parameters())
    ]
    assert lr_grads and all(g is not None and g.abs().max() > 0 for g in lr_grads)


@pytest.mark.parametrize("granularity", ["layer", "parameter"])
def test_evaluation_adapts_with_the_learned_step_sizes(granularity):
    cfg = MetaConfig(
        mode="maml", inner_steps=2, inner_lr=0.3, adapt="dense+emb", learn_inner_lr=granularity
    )
    model = metasgd_model("deepfm", cfg)
    batch = random_batch(LAYOUT, 4, seed=8)
    sparse, rows = lookup(model, batch)
    logits = predict(model, sparse, batch, adapt(model, sparse, batch, cfg))
    per = F.binary_cross_entropy_with_logits(
        logits, batch.click.double()[:, batch.k_support :], reduction="none"
    )
    qm = batch.query_mask & batch.episode_mask[:, None]
    ours = torch.stack([per[t][qm[t]].mean() for t in range(4) if batch.episode_mask[t]]).mean()
    ref = reference_loss(model, rows.emb, rows.linear, batch, cfg, _named_lrs(model, cfg))
    torch.testing.assert_close(ours, ref.detach())
    # a fixed step size gives other predictions: the learned ones were used
    fixed = MetaConfig(mode="maml", inner_steps=2, inner_lr=0.3, adapt="dense+emb")
    other = predict(model, sparse, batch, adapt(model, sparse, batch, fixed))
    assert not torch.allclose(other, logits)


def test_configs_and_refusals(tmp_path):
    with pytest.raises(ValueError, match="has no inner loop"):
        MetaConfig(mode="plain", learn_inner_lr="layer")
    with pytest.raises(ValueError, match="learn_inner_lr 'per'"):
        MetaConfig(learn_inner_lr="per")
    cfg = MetaConfig(mode="fomaml", adapt="dense", learn_inner_lr="layer")
    model = metasgd_model("melu", cfg)
    batch = random_batch(LAYOUT, 3, seed=2)
    sparse = model.embeddings.read(batch)
    with pytest.raises(ValueError, match="learned step sizes for exactly that setting"):
        adapt(model, sparse, batch, MetaConfig(adapt="head", learn_inner_lr="layer"))
    assert "learned inner step sizes" in export_refusal(cfg)
    assert export_refusal(MetaConfig()) is None

    run = build(
        TrainerConfig,
        {"data": {"path": str(tmp_path)}, "meta": {"mode": "maml", "learn_inner_lr": "parameter"}},
    )
    assert run.eval_meta().learn_inner_lr == "parameter"
    run.eval.adapt_lr = 0.05  # a set step size is plain fine-tuning
    assert run.eval_meta().learn_inner_lr == "off"
    # the step sizes are model parameters: in the state dict (checkpoints) and for Adam
    assert any(k.startswith("inner_lrs.") for k in model.state_dict())
