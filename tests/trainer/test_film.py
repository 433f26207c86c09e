"""FiLM (``meta.mode = "film"``): the batched outer loss and its gradients (dense layers, encoder,
embedding rows) equal a per-task computation written by hand (float64, 1e-9): the encoder applied
sample by sample with ``F.linear``, the modulation applied by hooks of the test's own; evaluation's
one-forward-pass adaptation gives the same query loss; an untrained encoder leaves the model as it
is; the encoder learns what the support set reveals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tests.trainer.meta_fixtures import random_batch
from tests.trainer.test_meta import LAYOUT, TASK_LAYOUT, _ref_fields, lookup, task_batch
from trainer.meta import MetaConfig, adapt, export_refusal, outer_loss, predict
from trainer.models import ModelConfig, build_model
from trainer.sparse import SparseOut

FILM = MetaConfig(mode="film", encoder_hidden=6)


def film_model(arch: str, randomize: bool = True):
    cfg = ModelConfig(
        arch=arch, embedding_dim=3, mlp=(5, 4), bottom_mlp=(4,), embedding_init_std=0.3
    )
    model = build_model(cfg, LAYOUT, seed=0, meta=FILM)
    model.embeddings.to(dtype=torch.float64)
    model = model.double()
    if randomize:  # the last map starts at zero (no modulation): make it modulate
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in model.task_encoder.to_film.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return model


def reference_film_loss(model, emb, lin, batch):
    """Per task: encode each real support sample by hand, average, map to gamma/beta, then the
    query loss with every modulated layer's output scaled and shifted (hooks written here)."""
    enc = model.task_encoder
    labels = batch.click.double()
    K = batch.k_support
    none = {"emb": {}, "linear": {}}
    total, count = 0.0, 0
    for t in range(batch.inverse.shape[0]):
        if not bool(batch.episode_mask[t]):
            continue
        count += 1
        hs = []
        for pos in range(int(batch.n_support[t])):
            fields, _ = _ref_fields(model, batch, t, pos, emb, lin, none)
            x = torch.cat([fields.reshape(-1), batch.dense[t, pos].double(), labels[t, pos][None]])
            hs.append(F.relu(F.linear(x, enc.embed.weight, enc.embed.bias)))
        pooled = torch.stack(hs).mean(0)
        out = F.linear(pooled, enc.to_film.weight, enc.to_film.bias)
        handles, start = [], 0
        for name, width in model.modulated_layers().items():
            gamma, beta = out[start : start + width], out[start + width : start + 2 * width]
            start += 2 * width
            module = model.dense_half.get_submodule(name)
            handles.append(
                module.register_forward_hook(
                    lambda m, a, y, gamma=gamma, beta=beta: y * (1 + gamma) + beta
                )
            )
        losses = []
        try:
            for j in range(int(batch.n_query[t])):
                fields, linear = _ref_fields(model, batch, t, K + j, emb, lin, none)
                sparse = SparseOut(fields=fields[None], lr=None if linear is None else linear[None])
                logit = functional_call(
                    model.dense_half,
                    dict(model.dense_half.named_parameters()),
                    (sparse, batch.dense[t, K + j].double()[None]),
                )
                losses.append(F.binary_cross_entropy_with_logits(logit[0], labels[t, K + j]))
        finally:
            for h in handles:
                h.remove()
        total = total + torch.stack(losses).mean()
    return total / max(count, 1)


@pytest.mark.parametrize("arch", ["dlrm", "deepfm", "wide_deep", "melu"])
def test_film_gradients_equal_the_per_task_computation(arch):
    model = film_model(arch)
    batch = random_batch(LAYOUT, 4, seed=1)  # short episodes and a padding episode
    params = list(model.parameters())  # dense half + the encoder
    sparse, rows = lookup(model, batch)
    loss, stats = outer_loss(model, sparse, batch, FILM)
    leaves = [rows.emb] + ([rows.linear] if rows.linear is not None else [])
    got = torch.autograd.grad(loss, params + leaves, allow_unused=True)

    _, ref_rows = lookup(model, batch)
    ref = reference_film_loss(model, ref_rows.emb, ref_rows.linear, batch)
    ref_leaves = [ref_rows.emb] + ([ref_rows.linear] if ref_rows.linear is not None else [])
    want = torch.autograd.grad(ref, params + ref_leaves, allow_unused=True)

    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    names = [n for n, _ in model.named_parameters()] + ["rows.emb", "rows.linear"]
    for name, p, g, w in zip(names, params + leaves, got, want, strict=False):
        g = torch.zeros_like(p) if g is None else g
        w = torch.zeros_like(p) if w is None else w
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")
    embed_grad = got[[n for n, _ in model.named_parameters()].index("task_encoder.embed.weight")]
    assert embed_grad.abs().max() > 0  # the encoder is trained by the outer loss
    # evaluation: adaptation is the encoder's forward pass, and predicts the same query loss
    logits = predict(model, sparse, batch, adapt(model, sparse, batch, MetaConfig(mode="film")))
    per = F.binary_cross_entropy_with_logits(
        logits, batch.click.double()[:, batch.k_support :], reduction="none"
    )
    qm = batch.query_mask & batch.episode_mask[:, None]
    ours = torch.stack([per[t][qm[t]].mean() for t in range(4) if batch.episode_mask[t]]).mean()
    torch.testing.assert_close(ours, ref.detach())
    assert float(stats.query_loss) == pytest.approx(ref.item(), rel=1e-9)


def test_an_untrained_encoder_leaves_the_model_unchanged_and_export_refuses():
    model = film_model("deepfm", randomize=False)
    batch = random_batch(LAYOUT, 4, seed=2)
    sparse = model.embeddings.read(batch)
    K = batch.k_support
    plain = model(sparse.side(slice(K, None)), batch.dense[:, K:].double())
    adapted = predict(model, sparse, batch, adapt(model, sparse, batch, FILM))
    torch.testing.assert_close(adapted, plain)
    torch.testing.assert_close(predict(model, sparse, batch), plain)
    assert "support-set encoder" in export_refusal(FILM)
    assert any(k.startswith("task_encoder.") for k in model.state_dict())
    no_encoder = build_model(model.cfg, LAYOUT, seed=0)
    with pytest.raises(ValueError, match="needs the model's support-set encoder"):
        outer_loss(no_encoder, no_encoder.embeddings.lookup(batch), batch, FILM)


@pytest.fixture
def one_thread():
    """Hundreds of tiny steps: one intra-op thread (several only contend on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_film_learns_what_the_support_set_reveals(one_thread):
    """Tasks differ by an unknown sign and bias that only the support labels reveal: after
    training, the encoded support set lowers the query loss against no support."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = ModelConfig(arch="melu", embedding_dim=4, mlp=(16,), embedding_init_std=0.1)
    meta = MetaConfig(mode="film", encoder_hidden=16)
    model = build_model(cfg, TASK_LAYOUT, seed=0, meta=meta)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # the encoder's last map starts at zero: slower to start than MAML
        batch = task_batch(16, gen)
        loss, _ = outer_loss(model, model.embeddings.lookup(batch), batch, meta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.embeddings.apply_gradients(lr=0.05)

    test = task_batch(256, torch.Generator().manual_seed(123))
    sparse = model.embeddings.read(test)
    y = test.click[:, test.k_support :]
    before = F.binary_cross_entropy_with_logits(predict(model, sparse, test), y).item()
    after = F.binary_cross_entropy_with_logits(
        predict(model, sparse, test, adapt(model, sparse, test, meta)), y
    ).item()
    assert after < before - 0.08, (before, after)
