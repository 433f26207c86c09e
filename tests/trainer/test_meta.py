"""Meta learning: the batched (vmap) meta-gradient equals an unbatched per-task computation written
independently with ``torch.autograd.grad`` loops, both match central finite differences, and MAML
actually learns to adapt on data with per-task signal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tests.trainer.meta_fixtures import batch_from_local_ids, make_layout, random_batch
from trainer.lowrank import adapted_linear
from trainer.meta import MetaConfig, adapt, outer_loss, predict
from trainer.models import ModelConfig, build_model
from trainer.models.common import relu as model_relu
from trainer.sparse import LookedUpRows, SparseOut

LAYOUT = make_layout(
    [("user", 7, 1), ("ad", 6, 1), ("tags", 5, 2)], dense_width=2, k_support=4, q_query=3
)


def tiny_model(arch: str, label: str = "click", seed: int = 0):
    cfg = ModelConfig(
        arch=arch, embedding_dim=3, mlp=(5, 4), bottom_mlp=(4,), label=label, embedding_init_std=0.3
    )
    model = build_model(cfg, LAYOUT, seed=seed)
    model.embeddings.to(dtype=torch.float64)
    # Non-zero linear rows so that the first-order terms carry gradient paths too.
    if model.embeddings.has_linear:
        w = model.embeddings.store.weights["linear"]
        w.copy_(
            torch.randn(w.shape, generator=torch.Generator().manual_seed(5), dtype=w.dtype) * 0.3
        )
        w[model.embeddings.store.null] = 0.0
    return model.double()


def lookup(model, batch):
    """The training lookup: the pooled ``SparseOut`` and the rows (autograd leaves) behind it."""
    sparse = model.embeddings.lookup(batch)
    return sparse, model.embeddings.rows


# ---------------------------------------------------------------------------------------------
# The independent reference: one task at a time, naive pooling, autograd.grad(create_graph=...).


def _ref_fields(model, batch, t, pos, emb, lin, copies):
    """Field embeddings and linear sums of sample ``pos`` of episode ``t``, pooled by hand."""
    slot_feature = LAYOUT.slot_feature.tolist()
    fields, linear = [], 0.0
    for f in range(LAYOUT.num_features):
        acc = torch.zeros(emb.shape[1], dtype=emb.dtype)
        for s, sf in enumerate(slot_feature):
            if sf != f:
                continue
            u = int(batch.inverse[t, pos, s])
            acc = acc + (copies["emb"][u] if u in copies["emb"] else emb[u])
        fields.append(acc)
    for s in range(len(slot_feature)):
        u = int(batch.inverse[t, pos, s])
        if lin is not None:
            linear = linear + (copies["linear"][u] if u in copies["linear"] else lin[u, 0])
    return torch.stack(fields), (torch.as_tensor(linear) if lin is not None else None)


def _ref_loss(model, params, batch, t, positions, labels, emb, lin, copies):
    if not positions:
        return None
    losses = []
    for pos in positions:
        fields, linear = _ref_fields(model, batch, t, pos, emb, lin, copies)
        dense = batch.dense[t, pos].double()
        sparse = SparseOut(fields=fields[None], lr=None if linear is None else linear[None])
        logit = functional_call(model.dense_half, params, (sparse, dense[None]))
        losses.append(F.binary_cross_entropy_with_logits(logit[0], labels[t, pos]))
    return torch.stack(losses).mean()


def reference_outer_loss(model, emb, lin, batch, cfg, frozen=None):
    """Mean over valid episodes of the query loss after adaptation, one task at a time.

    ``frozen``: for FOMAML finite differences, a dict filled with (when empty) or replaying (when
    filled) the inner gradients, so the loss becomes a function with the inner gradients fixed.
    """
    label = model.cfg.label
    labels = (batch.click if label == "click" else batch.conversion.clamp_min(0)).double()
    known = (
        torch.ones_like(batch.click, dtype=torch.bool)
        if label == "click"
        else batch.conversion >= 0
    )
    K = batch.k_support
    names = model.adapted_names(cfg.adapt)
    base = dict(model.dense_half.named_parameters())
    null_ids = set(LAYOUT.table_offsets)
    total, count = 0.0, 0
    for t in range(batch.inverse.shape[0]):
        if not bool(batch.episode_mask[t]):
            continue
        count += 1
        support = [p for p in range(int(batch.n_support[t])) if known[t, p]]
        query = [K + j for j in range(int(batch.n_query[t])) if known[t, K + j]]
        params = dict(base)
        copies = {"emb": {}, "linear": {}}
        if cfg.adapt == "dense+emb":
            for u in torch.unique(batch.inverse[t]).tolist():
                if int(batch.ids[u]) in null_ids:
                    continue  # null rows are fixed at zero: never copied, never adapted
                copies["emb"][u] = emb[u]
                if lin is not None:
                    copies["linear"][u] = lin[u, 0]
        for step in range(cfg.inner_steps):
            keys = [("p", n) for n in names] + [
                (tab, u) for tab in ("emb", "linear") for u in copies[tab]
            ]
            values = [params[n] if kind == "p" else copies[kind][n] for kind, n in keys]
            loss = _ref_loss(model, params, batch, t, support, labels, emb, lin, copies)
            if frozen is not None and (t, step) in frozen:
                grads = frozen[(t, step)]
            elif loss is None:
                grads = [torch.zeros_like(v) for v in values]
            else:
                grads = torch.autograd.grad(
                    loss, values, create_graph=cfg.mode == "maml", allow_unused=True
                )
                grads = [
                    torch.zeros_like(v) if g is None else g
                    for g, v in zip(grads, values, strict=True)
                ]
            if frozen is not None and (t, step) not in frozen:
                frozen[(t, step)] = [g.detach() for g in grads]
            for (kind, n), v, g in zip(keys, values, grads, strict=True):
                if kind == "p":
                    params[n] = v - cfg.inner_lr * g
                else:
                    copies[kind][n] = v - cfg.inner_lr * g
        qloss = _ref_loss(model, params, batch, t, query, labels, emb, lin, copies)
        total = total + (0.0 if qloss is None else qloss)
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------


def _batched(model, batch, cfg, emb=None, lin=None):
    sparse, rows = lookup(model, batch)
    if emb is not None:
        sparse = model.embeddings.pooling(emb, lin, batch.inverse)
        rows = LookedUpRows(batch.ids, emb, lin)
    loss, stats = outer_loss(model, sparse, batch, cfg)
    return loss, stats, rows


@pytest.mark.parametrize("arch", ["dlrm", "deepfm", "wide_deep", "melu"])
@pytest.mark.parametrize("mode", ["maml", "fomaml"])
@pytest.mark.parametrize("adapt_mode", ["head", "dense", "dense+emb"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_batched_meta_gradient_equals_per_task_loop(arch, mode, adapt_mode, inner_steps):
    model = tiny_model(arch)
    batch = random_batch(LAYOUT, 4, seed=1)  # short episodes and a padding episode
    assert not bool(batch.episode_mask[-1]) and int(batch.n_support[0]) < batch.k_support
    cfg = MetaConfig(mode=mode, inner_steps=inner_steps, inner_lr=0.3, adapt=adapt_mode)

    loss, _, rows = _batched(model, batch, cfg)
    params = list(model.dense_half.parameters())
    leaves = [rows.emb] + ([rows.linear] if rows.linear is not None else [])
    got = torch.autograd.grad(loss, params + leaves, allow_unused=True)

    _, ref_rows = lookup(model, batch)
    ref = reference_outer_loss(model, ref_rows.emb, ref_rows.linear, batch, cfg)
    ref_leaves = [ref_rows.emb] + ([ref_rows.linear] if ref_rows.linear is not None else [])
    want = torch.autograd.grad(ref, params + ref_leaves, allow_unused=True)

    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    for (name, _), g, w in zip(model.dense_half.named_parameters(), got, want, strict=False):
        g = torch.zeros_like(_) if g is None else g
        w = torch.zeros_like(_) if w is None else w
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=f"dense grad {name}")
    for g, w in zip(got[len(params) :], want[len(params) :], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg="row gradients")


def test_maml_differs_from_fomaml_and_conversion_label_masks_unknowns():
    model = tiny_model("deepfm", label="conversion")
    batch = random_batch(LAYOUT, 4, seed=2)
    grads = {}
    for mode in ("maml", "fomaml"):
        cfg = MetaConfig(mode=mode, inner_steps=1, inner_lr=0.5, adapt="dense+emb")
        loss, _, rows = _batched(model, batch, cfg)
        grads[mode] = torch.autograd.grad(loss, [rows.emb, *model.dense_half.parameters()])
        _, ref_rows = lookup(model, batch)
        ref = reference_outer_loss(model, ref_rows.emb, ref_rows.linear, batch, cfg)
        torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    diff = max(
        (a - b).abs().max().item() for a, b in zip(grads["maml"], grads["fomaml"], strict=True)
    )
    assert diff > 1e-6  # the second-order term is really there


def test_the_low_rank_hooks_live_only_during_the_inner_loop_and_adapted_forward():
    """``trainer.lowrank`` installs forward hooks on the adapted layers for the block only: after
    a meta step, an adaptation and a prediction no hook is left and the plain forward is plain."""
    model = tiny_model("melu")
    batch = random_batch(LAYOUT, 4, seed=5)
    cfg = MetaConfig(mode="maml", inner_steps=2, inner_lr=0.3, adapt="dense")
    sparse = model.embeddings.lookup(batch)
    loss, _ = outer_loss(model, sparse, batch, cfg)
    adapted = predict(model, sparse, batch, adapt(model, sparse, batch, cfg))
    assert not any(m._forward_hooks for m in model.dense_half.modules())
    plain = predict(model, sparse, batch)
    assert not torch.allclose(adapted, plain)  # the adaptation was applied while it was active
    loss.backward()
    assert all(p.grad is not None for p in model.dense_half.parameters())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("learned_step", [False, True])
def test_adapted_linear_equals_the_recorded_expression_to_second_order(bias, learned_step):
    """``trainer.lowrank.adapted_linear`` (its backward written out) equals autograd's recording
    of ``x W + c + (s (x a^T [+ 1])) b``: values, gradients and the gradients of a function of
    those gradients (what MAML's later inner steps differentiate), float64, to 1e-10."""
    gen = torch.Generator().manual_seed(3)

    def leaf(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    x, w, a, b = leaf(3, 5, 6), leaf(6, 4), leaf(3, 2, 6), leaf(3, 2, 4)
    c = leaf(4) if bias else None
    step = leaf(()) if learned_step else 0.3
    weights = leaf(3, 5, 4)  # a fixed direction for a scalar output
    inputs = [t for t in (x, w, c, a, b, step) if isinstance(t, torch.Tensor)]

    def recorded():
        g = torch.bmm(x, a.transpose(-1, -2))
        return torch.baddbmm(F.linear(x, w.t(), c), (g + 1.0 if bias else g) * step, b)

    def written_out():
        y = F.linear(x, w.t(), c).detach()
        return adapted_linear(y, x, w, c, a, b, step)

    def first_and_second(fn):
        out = fn()
        grads = torch.autograd.grad((out * weights).sum(), inputs, create_graph=True)
        second = torch.autograd.grad(
            sum((g * g).sum() for g in grads), inputs, allow_unused=True, materialize_grads=True
        )
        return out, grads, second

    got, want = first_and_second(written_out), first_and_second(recorded)
    for g, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g, w_, rtol=1e-10, atol=1e-12)


def test_model_relu_equals_torch_relu_to_third_order():
    """``trainer.models.common.relu`` (no zero tensor for ReLU'' in MAML's second-order pass)
    has F.relu's values and derivatives at negative, zero and positive inputs, float64: the
    gradient of a function of the input gradient with respect to a downstream weight (MAML's
    second-order term), and first, second and third order in the input."""
    x0 = torch.tensor([[-1.5, 0.0, 0.7], [2.0, -0.0, -3.0]], dtype=torch.float64)
    v = torch.tensor([[0.3, -1.2, 2.0], [0.5, 1.0, -0.4]], dtype=torch.float64)

    def derivatives(fn):
        x, w = x0.clone().requires_grad_(), (v + 1.0).requires_grad_()
        (gx,) = torch.autograd.grad((fn(x) * w).sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad((gx * v).sum(), w)
        (g,) = torch.autograd.grad((fn(x) ** 2 * v).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad((g**3).sum(), x, create_graph=True)
        (ggg,) = torch.autograd.grad((gg * v).sum(), x)
        return fn(x0), gx, gw, g, gg, ggg

    for got, want in zip(derivatives(model_relu), derivatives(F.relu), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _flat_params(model):
    return list(model.dense_half.parameters())


@pytest.mark.parametrize("mode", ["maml", "fomaml"])
@pytest.mark.parametrize(
    "arch,adapt_mode", [("deepfm", "dense+emb"), ("dlrm", "dense"), ("melu", "head")]
)
def test_meta_gradient_matches_finite_differences(mode, arch, adapt_mode):
    model = tiny_model(arch)
    batch = random_batch(LAYOUT, 3, seed=3)
    cfg = MetaConfig(mode=mode, inner_steps=2, inner_lr=0.3, adapt=adapt_mode)
    _, base = lookup(model, batch)
    emb0 = base.emb.detach().clone().requires_grad_()  # leaves: the reference differentiates copies
    lin0 = None if base.linear is None else base.linear.detach().clone().requires_grad_()

    loss, _, rows = _batched(model, batch, cfg)
    leaves = [rows.emb] + ([rows.linear] if rows.linear is not None else [])
    analytic = torch.autograd.grad(loss, _flat_params(model) + leaves)

    frozen = {} if mode == "fomaml" else None
    if frozen is not None:  # record the inner gradients at the base point
        reference_outer_loss(model, emb0, lin0, batch, cfg, frozen)

    def f() -> float:
        return float(reference_outer_loss(model, emb0, lin0, batch, cfg, frozen).detach())

    tensors = _flat_params(model) + [emb0] + ([lin0] if lin0 is not None else [])
    eps = 1e-6
    for tensor, g in zip(tensors, analytic, strict=True):
        flat, gflat = tensor.data.view(-1), g.reshape(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            up = f()
            flat[i] = old - eps
            down = f()
            flat[i] = old
            fd = (up - down) / (2 * eps)
            assert math.isclose(gflat[i].item(), fd, rel_tol=1e-5, abs_tol=1e-8), (
                i,
                gflat[i].item(),
                fd,
            )


def test_null_rows_never_adapt_and_padding_episodes_contribute_nothing():
    model = tiny_model("deepfm")
    batch = random_batch(LAYOUT, 4, seed=4)
    cfg = MetaConfig(mode="maml", inner_steps=2, inner_lr=0.5, adapt="dense+emb")
    adapted = adapt(model, model.embeddings.read(batch), batch, cfg)
    null_pos = model.embeddings.is_null(batch.ids)
    tr, trm = batch.task_rows, batch.task_rows_mask
    is_null_row = null_pos[tr] | ~trm
    assert is_null_row.any()
    assert adapted.rows["emb"][is_null_row].abs().max() == 0
    assert adapted.rows["linear"][is_null_row].abs().max() == 0

    # Garbage in the padding episode changes nothing.
    loss, _, rows = _batched(model, batch, cfg)
    g = torch.autograd.grad(loss, [rows.emb, *model.dense_half.parameters()])
    other = random_batch(LAYOUT, 4, seed=4)
    other.dense[-1] = 100.0
    other.click[-1] = 1.0
    loss2, _, rows2 = _batched(model, other, cfg)
    g2 = torch.autograd.grad(loss2, [rows2.emb, *model.dense_half.parameters()])
    torch.testing.assert_close(loss, loss2)
    for a, b in zip(g, g2, strict=True):
        torch.testing.assert_close(a, b)


def test_normalizer_scales_the_sum_over_episodes():
    model = tiny_model("melu")
    batch = random_batch(LAYOUT, 4, seed=6)
    cfg = MetaConfig(mode="fomaml")
    sparse = model.embeddings.lookup(batch)
    loss, stats = outer_loss(model, sparse, batch, cfg)
    loss12, _ = outer_loss(model, sparse, batch, cfg, normalizer=12.0)
    assert int(stats.episodes) == 3
    torch.testing.assert_close(loss12 * 12, loss * 3)


def test_plain_loss_is_the_per_episode_mean_over_support_and_query():
    model = tiny_model("dlrm")
    batch = random_batch(LAYOUT, 4, seed=7)
    sparse = model.embeddings.lookup(batch)
    loss, _stats = outer_loss(model, sparse, batch, MetaConfig(mode="plain"))
    logits = model(sparse, batch.dense.double())
    per = F.binary_cross_entropy_with_logits(logits, batch.click.double(), reduction="none")
    m = batch.sample_mask
    want = torch.stack([per[t][m[t]].mean() for t in range(4) if batch.episode_mask[t]]).mean()
    torch.testing.assert_close(loss, want)
    # predict() without adaptation = the model on query positions
    K = batch.k_support
    torch.testing.assert_close(predict(model, sparse, batch), logits[:, K:])


@pytest.mark.parametrize("adapt_mode", ["head", "dense", "dense+emb"])
def test_predict_after_adapt_matches_per_task_finetuning(adapt_mode):
    model = tiny_model("wide_deep")
    batch = random_batch(LAYOUT, 4, seed=8)
    cfg = MetaConfig(mode="plain", inner_steps=2, inner_lr=0.4, adapt=adapt_mode)
    sparse, rows = lookup(model, batch)
    logits = predict(model, sparse, batch, adapt(model, sparse, batch, cfg))
    # The adapted query loss equals the reference's (FOMAML and MAML agree on the forward value).
    labels = batch.click.double()[:, batch.k_support :]
    per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    qm = batch.query_mask & batch.episode_mask[:, None]
    ours = torch.stack([per[t][qm[t]].mean() for t in range(4) if batch.episode_mask[t]]).mean()
    ref = reference_outer_loss(
        model,
        rows.emb,
        rows.linear,
        batch,
        MetaConfig(mode="fomaml", inner_steps=2, inner_lr=0.4, adapt=adapt_mode),
    )
    torch.testing.assert_close(ours, ref.detach())


# ---------------------------------------------------------------------------------------------
# Does MAML learn to adapt? Per-task signal that only the support set reveals.

TASK_LAYOUT = make_layout([("item", 41, 1), ("ctx", 5, 1)], dense_width=0, k_support=16, q_query=16)


def task_batch(num_episodes: int, gen: torch.Generator):
    """``logit = 2.5 * s_t * e(item) + b_t``: ``s_t = ±1`` and ``b_t`` are unknown per task."""
    T, N = num_episodes, 32
    item = torch.randint(1, 41, (T, N), generator=gen)
    ctx = torch.randint(1, 5, (T, N), generator=gen)
    effect = torch.linspace(-1, 1, 41)[item]
    sign = torch.randint(0, 2, (T, 1), generator=gen).float() * 2 - 1
    bias = torch.randn(T, 1, generator=gen) * 0.5
    click = (torch.rand(T, N, generator=gen) < torch.sigmoid(2.5 * sign * effect + bias)).float()
    local = torch.stack([item, ctx], -1)
    full = torch.full((T,), 16)
    return batch_from_local_ids(
        TASK_LAYOUT,
        local,
        torch.zeros(T, N, 0),
        click,
        click.clone(),
        full,
        full,
        torch.ones(T, dtype=torch.bool),
        task_local=False,
    )


def test_maml_learns_to_adapt_on_tasks_with_per_task_signal():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = ModelConfig(arch="melu", embedding_dim=4, mlp=(16,), embedding_init_std=0.1)
    model = build_model(cfg, TASK_LAYOUT, seed=0)
    meta = MetaConfig(mode="maml", inner_steps=1, inner_lr=1.0, adapt="dense")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        batch = task_batch(16, gen)
        sparse = model.embeddings.lookup(batch)
        loss, _ = outer_loss(model, sparse, batch, meta)
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


def test_optimizer_step_updates_dense_and_rows_and_configs_load():
    from trainer.config_loader import build
    from trainer.optim import OptimConfig, build_optimizers

    meta = build(MetaConfig, {"mode": "fomaml", "inner_steps": 2, "adapt": "dense+emb"})
    ocfg = build(
        OptimConfig,
        {"dense_lr": 0.01, "sparse_lr": 0.1, "betas": [0.8, 0.9], "grad_clip_norm": 1e-3},
    )
    assert ocfg.betas == (0.8, 0.9)
    with pytest.raises(ValueError, match="inner_steps"):
        MetaConfig(inner_steps=0)
    with pytest.raises(ValueError, match="dense_lr"):
        OptimConfig(dense_lr=0)

    model = tiny_model("deepfm")
    opt = build_optimizers(ocfg, model)
    batch = random_batch(LAYOUT, 4, seed=9)
    before = [p.detach().clone() for p in model.parameters()]
    table = model.embeddings.store.weights["emb"].clone()
    loss, _ = outer_loss(model, model.embeddings.lookup(batch), batch, meta)
    loss.backward()
    norm = opt.step()
    assert norm is not None and norm > 1e-3  # clipped
    assert all(p.grad is None for p in model.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    changed = (model.embeddings.store.weights["emb"] != table).any(1)
    touched = torch.zeros_like(changed)
    touched[batch.ids] = True
    assert changed.any() and not (changed & ~touched).any()  # only looked-up rows move
    assert not changed[list(LAYOUT.table_offsets)].any()  # null rows never
    state = opt.state_dict()
    opt2 = build_optimizers(ocfg, model)
    opt2.load_state_dict(state)
    assert opt2.dense.state_dict()["state"].keys() == state["dense"]["state"].keys()
