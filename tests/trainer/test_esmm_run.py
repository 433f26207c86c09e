"""ESMM in the trainer loop and its evaluation: a tiny run trains both towers, and ``eval.json``'s
``heads`` equal the three ESMM metrics computed from an episode-by-episode reference forward
(CTR on every query sample, CVR on clicked samples with a known conversion, CTCVR = pCTR * pCVR
on the samples with a known conversion)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from tests.trainer.run_helpers import tiny_config, write_episodes
from trainer.data.reader import EpisodeReader
from trainer.evaluate import evaluate
from trainer.metrics import binary_metrics, ctcvr_logits, esmm_metrics
from trainer.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trainer:
    root = tmp_path_factory.mktemp("esmm")
    data = write_episodes(root / "data")
    overrides = {"train.steps": 6, "model.arch": "deepfm", "model.task": "esmm"}
    cfg = tiny_config(data, root / "run", **overrides, **{"meta.mode": "fomaml"})
    trainer = Trainer(cfg).build()
    start = {k: v.detach().clone() for k, v in trainer.model.dense_half.named_parameters()}
    trainer.fit()
    trainer.close()
    trainer.start_params = start  # type: ignore[attr-defined]
    return trainer


def _reference_before(model, cfg, split: str) -> dict[str, np.ndarray]:
    """Episode by episode, sample by sample: both heads at the shared parameters."""
    out: dict[str, list] = {k: [] for k in ("click", "conv", "ctr", "cvr", "task", "episode")}
    params = dict(model.dense_half.named_parameters())
    position = 0
    with EpisodeReader(cfg.data.path, split, 8, shuffle=False, epochs=1, prefetch=0) as reader:
        for batch in reader:
            K = batch.k_support
            sparse = model.embeddings.read(batch)
            for t in range(batch.num_episodes):
                if not batch.episode_mask[t]:
                    continue
                if position < cfg.eval.max_episodes:
                    for j in range(int(batch.n_query[t])):
                        one = sparse.apply(lambda x, t=t, j=K + j: x[t, j : j + 1])
                        with torch.no_grad():
                            logits = functional_call(
                                model.dense_half, params, (one, batch.dense[t, K + j][None])
                            )[0]
                        for key, v in (("click", batch.click[t, K + j]),
                                       ("conv", batch.conversion[t, K + j]),
                                       ("ctr", logits[0]), ("cvr", logits[1]),
                                       ("task", batch.task_ids[t]), ("episode", position)):  # fmt: skip
                            out[key].append(float(v))
                position += 1
    return {k: np.asarray(v) for k, v in out.items()}


def test_esmm_trains_both_towers_and_evaluation_reports_the_three_heads(trained):
    model = trained.model
    for tower in ("ctr.", "cvr."):
        moved = [
            not torch.equal(p, trained.start_params[n])
            for n, p in model.dense_half.named_parameters()
            if n.startswith(tower)
        ]
        assert moved and all(moved), tower

    result = evaluate(model, trained.cfg, trained.manifest, "test_cold")
    ref = _reference_before(model, trained.cfg, "test_cold")
    assert result["query_samples"] == len(ref["click"])
    want = esmm_metrics(
        ref["click"], ref["conv"], ref["ctr"], ref["cvr"], ref["task"].astype(np.int64),
        ref["episode"].astype(np.int64),
    )  # fmt: skip
    got = result["heads"]["before"]
    for head in ("ctr", "cvr", "ctcvr"):
        assert got[head]["samples"] == want[head]["samples"] > 0, head
        for metric in ("auc", "gauc", "logloss", "episode_gauc"):
            assert got[head][metric] == pytest.approx(want[head][metric], abs=1e-5), (head, metric)
    assert result["before"]["auc"] == got["ctr"]["auc"]  # the gate's metrics: the CTR head
    clicked = (ref["click"] > 0) & (ref["conv"] >= 0)
    assert got["cvr"]["samples"] == int(clicked.sum()) < len(ref["click"])
    assert result["heads"]["after"]["ctcvr"]["auc"] != got["ctcvr"]["auc"]  # adaptation moved it


def test_esmm_metrics_select_the_right_samples_and_score_the_product():
    g = np.random.default_rng(0)
    n = 400
    click = (g.random(n) < 0.4).astype(float)
    conv = np.where(g.random(n) < 0.2, -1.0, (g.random(n) < 0.5).astype(float))
    a, b = g.normal(size=n), g.normal(size=n)
    tasks, episodes = np.arange(n) % 7, np.arange(n) % 11
    got = esmm_metrics(click, conv, a, b, tasks, episodes)
    p = 1 / (1 + np.exp(-a)) / (1 + np.exp(-b))
    np.testing.assert_allclose(1 / (1 + np.exp(-ctcvr_logits(a, b))), p, rtol=1e-12)
    known, clicked = conv >= 0, (conv >= 0) & (click > 0)
    cases = {
        "ctr": (np.ones(n, bool), click, a),
        "cvr": (clicked, conv, b),
        "ctcvr": (known, click * conv, np.log(p / (1 - p))),
    }
    for head, (m, y, s) in cases.items():
        want = binary_metrics(y[m], s[m], tasks[m])
        assert got[head]["samples"] == int(m.sum())
        assert got[head]["auc"] == pytest.approx(want.auc, abs=1e-12)
        assert got[head]["logloss"] == pytest.approx(want.logloss, rel=1e-9)
    none = esmm_metrics(click[:3] * 0, conv[:3] * 0 - 1, a[:3], b[:3], tasks[:3], episodes[:3])
    assert none["cvr"] == {"samples": 0} and none["ctcvr"] == {"samples": 0}


def test_the_export_scores_both_heads_as_the_trainer(trained, tmp_path):
    """export = trainer for both heads: the exported graph and the scorer (unadapted and adapted
    per episode) give the trainer's [ctr, cvr] logits."""
    from trainer.exported import export_checkpoint, load_exported, score_samples
    from trainer.meta import adapt, predict

    result = export_checkpoint(trained.cfg.train.output_dir, tmp_path / "models")
    exported = load_exported(result.path)
    assert exported.graph is not None and exported.output_shape == (2,)
    model, meta = trained.model, trained.cfg.eval_meta()
    with EpisodeReader(trained.cfg.data.path, "test_cold", 8, shuffle=False, epochs=1) as reader:
        batch = next(iter(reader))
    sparse = model.embeddings.read(batch)
    want_before = predict(model, sparse, batch)
    want_after = predict(model, sparse, batch, adapt(model, sparse, batch, meta))
    got_before = exported.episode_logits(batch, adapt=False)
    got_after = exported.episode_logits(batch, adapt=True)
    assert got_before.shape == (*batch.query_mask.shape, 2)
    m = batch.query_mask & batch.episode_mask[:, None]
    torch.testing.assert_close(got_before[m], want_before[m], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_after[m], want_after[m], rtol=1e-6, atol=1e-6)
    assert (want_after - want_before)[m][:, 1].abs().max() > 1e-6  # the CVR head adapts too
    K = batch.k_support
    local = (batch.ids[batch.inverse[:, K:]] - exported.layout.slot_offsets)[m].numpy()
    scores = score_samples(exported, local, batch.dense[:, K:][m].numpy())
    np.testing.assert_allclose(scores, want_before[m].numpy(), rtol=1e-6, atol=1e-6)


def _calibrated_reference(model, cfg, split: str) -> dict[str, np.ndarray]:
    """Episode by episode: both heads at the shared parameters, each shifted by the documented
    calibration-only offset of its own support rate (CTR: clicks of the real support samples;
    CVR: conversions of the clicked support samples with a known conversion), 10 pseudo-samples
    at the rate over all the evaluated episodes."""
    eps = []
    with EpisodeReader(cfg.data.path, split, 8, shuffle=False, epochs=1, prefetch=0) as reader:
        for batch in reader:
            K, sparse = batch.k_support, model.embeddings.read(batch)
            for t in range(batch.num_episodes):
                if not batch.episode_mask[t] or len(eps) == cfg.eval.max_episodes:
                    continue
                ns, nq = int(batch.n_support[t]), int(batch.n_query[t])
                q = slice(K, K + nq)
                with torch.no_grad():
                    logits = model(sparse.apply(lambda x, t=t, q=q: x[t, q]), batch.dense[t, q])
                s_click, s_conv = batch.click[t, :ns], batch.conversion[t, :ns]
                clicked = (s_click > 0) & (s_conv >= 0)
                eps.append({
                    "k": (float(s_click.sum()), float(s_conv[clicked].sum())),
                    "n": (ns, int(clicked.sum())), "logits": logits.double().numpy(),
                    "click": batch.click[t, q].numpy(), "conv": batch.conversion[t, q].numpy(),
                    "task": np.full(nq, int(batch.task_ids[t])), "episode": np.full(nq, len(eps)),
                })  # fmt: skip
    for head in (0, 1):
        rate = sum(e["k"][head] for e in eps) / sum(e["n"][head] for e in eps)
        for e in eps:
            shrunk = (e["k"][head] + 10.0 * rate) / (e["n"][head] + 10.0)
            e["logits"][:, head] += math.log(shrunk / (1 - shrunk)) - math.log(rate / (1 - rate))
    out = {k: np.concatenate([e[k] for e in eps]) for k in ("click", "conv", "task", "episode")}
    out["logits"] = np.concatenate([e["logits"] for e in eps])
    return out


def test_metarec_evaluate_scores_the_three_heads_of_a_checkpoint_and_its_export(trained, tmp_path):
    """``metarec evaluate`` on an ESMM run: the checkpoint and its export give the same rows (all
    three heads); the episode level at the run's setting is ``eval.json`` (its ``heads``, CTR in
    ``metrics``); the calibration-only row equals each head shifted by its own per-task offset."""
    from trainer.evaluation import Settings, evaluate_model, load_model
    from trainer.evaluation.command import format_table
    from trainer.exported import export_checkpoint

    cfg, root = trained.cfg, trained.cfg.data.path
    meta = cfg.eval_meta()
    settings = Settings(steps=(meta.inner_steps,), lrs=(meta.inner_lr,), scopes=(meta.adapt,),
                        tune_split="valid", batch_episodes=8, max_episodes=cfg.eval.max_episodes)  # fmt: skip
    export = export_checkpoint(cfg.train.output_dir, tmp_path / "models").path
    ck, ex = (
        evaluate_model(load_model(path, root), root, "test_cold", settings)
        for path in (cfg.train.output_dir, export)
    )
    assert ck["model"]["task"] == ex["model"]["task"] == "esmm"
    assert len(ck["rows"]) == len(ex["rows"]) == 1 + 2 * 4
    for a, b in zip(ck["rows"], ex["rows"], strict=True):
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6, nan_ok=True), a["row"]
        for head in ("ctr", "cvr", "ctcvr"):
            assert a["heads"][head]["samples"] > 0
            assert a["heads"][head] == pytest.approx(b["heads"][head], abs=1e-6, nan_ok=True)
        assert a["metrics"]["auc"] == a["heads"]["ctr"]["auc"]  # the CTR head is the primary
    rows = {(r["row"], r["level"]): r for r in ck["rows"]}
    want = evaluate(trained.model, cfg, trained.manifest, "test_cold")
    for key, when in ((("no adaptation", "-"), "before"), (("grid", "episode"), "after")):
        for head in ("ctr", "cvr", "ctcvr"):
            got, ref = rows[key]["heads"][head], want["heads"][when][head]
            assert got == pytest.approx(ref, abs=1e-6, nan_ok=True), (key, head)
    ref = _calibrated_reference(trained.model, cfg, "test_cold")
    calibrated = esmm_metrics(ref["click"], ref["conv"], ref["logits"][:, 0], ref["logits"][:, 1],
                              ref["task"], ref["episode"])  # fmt: skip
    got = rows[("calibration only", "episode")]["heads"]
    for head in ("ctr", "cvr", "ctcvr"):
        assert got[head] == pytest.approx(calibrated[head], abs=1e-9, nan_ok=True), head
    assert got["cvr"]["auc"] != pytest.approx(rows[("no adaptation", "-")]["heads"]["cvr"]["auc"])
    table = format_table(ck)
    assert "ESMM: CTR head" in table and "ctcvrAUC" in table


def test_the_model_host_answers_both_heads_of_an_esmm_export(trained, tmp_path):
    """The server's scoring path in process (the loopback test below is ``slow``): the response
    tensors of an ESMM export are the scorer's CTR head, pCTR x pCVR and the CVR logit."""
    from components.serve.host import ModelHost, ScoreRequest
    from trainer.exported import export_checkpoint, score_samples

    result = export_checkpoint(trained.cfg.train.output_dir, tmp_path / "models")
    host = ModelHost(result.path)
    exported = host.start().model
    layout, gen = exported.layout, np.random.default_rng(0)
    buckets = np.asarray([layout.feature_buckets[f] for f in layout.slot_feature.tolist()])
    sparse = (gen.random((50, layout.sparse_width)) * buckets).astype(np.int64)
    dense = gen.random((50, layout.dense_width)).astype(np.float32)
    out = host.score(ScoreRequest(sparse, dense)).outputs()
    want = score_samples(exported, sparse, dense).astype(np.float64)
    p = 1 / (1 + np.exp(-want))
    np.testing.assert_array_equal(out["logit"], want[:, 0].astype(np.float32))
    np.testing.assert_array_equal(out["cvr_logit"], want[:, 1].astype(np.float32))
    np.testing.assert_allclose(out["score"], p[:, 0], rtol=1e-6)
    np.testing.assert_allclose(out["ctcvr_score"], p[:, 0] * p[:, 1], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_the_server_answers_both_heads_of_an_esmm_export(trained, tmp_path):
    """``python -m components.serve`` on loopback: ``score``/``logit`` are the CTR head, plus
    ``ctcvr_score`` (pCTR x pCVR) and ``cvr_logit``, equal to the exported scorer's, unadapted
    and adapted on a task's support events; the metadata lists the extra outputs."""
    import httpx

    from components.serve.loopback import LocalServer
    from trainer.exported import export_checkpoint, load_exported, score_samples
    from trainer.exported.scoring import SupportSet, score_tasks

    result = export_checkpoint(trained.cfg.train.output_dir, tmp_path / "models")
    exported = load_exported(result.path)
    layout, gen = exported.layout, np.random.default_rng(0)
    buckets = np.asarray([layout.feature_buckets[f] for f in layout.slot_feature.tolist()])
    K = layout.k_support
    sparse = (gen.random((100 + K, layout.sparse_width)) * buckets).astype(np.int64)
    dense = gen.random((100 + K, layout.dense_width)).astype(np.float32)
    (sparse, s_sparse), (dense, s_dense) = np.split(sparse, [100]), np.split(dense, [100])
    click = (np.arange(K) % 2).astype(np.float32)
    support = SupportSet(s_sparse, s_dense, click, click * (np.arange(K) % 4 == 1))
    wire = {"support_sparse": s_sparse, "support_dense": s_dense, "support_click": click,
            "support_conversion": support.conversion}  # fmt: skip
    want = score_samples(exported, sparse, dense)
    want_adapted, _ = score_tasks(exported, sparse, dense, np.full(100, "c-7"), {"c-7": support})
    with LocalServer(result.path, tmp_path / "server.log") as server, httpx.Client() as client:
        meta = client.get(f"{server.url}/v2/models/{server.name}").json()
        got = server.infer(sparse, dense, client)
        adapted = server.infer(sparse, dense, client, task="c-7", task_version="1", support=wire)
    assert {"ctcvr_score", "cvr_logit"} <= {o["name"] for o in meta["outputs"]}
    assert not got["adapted"] and adapted["adapted"]
    for answer, logits in ((got, want), (adapted, want_adapted)):
        np.testing.assert_allclose(answer["logit"], logits[:, 0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(answer["cvr_logit"], logits[:, 1], rtol=1e-6, atol=1e-6)
        p = 1 / (1 + np.exp(-logits.astype(np.float64)))
        np.testing.assert_allclose(answer["score"], p[:, 0], rtol=1e-5)
        np.testing.assert_allclose(answer["ctcvr_score"], p[:, 0] * p[:, 1], rtol=1e-5)
    assert np.abs(want_adapted - want).max() > 1e-6


def test_the_esmm_bench_scores_as_the_trainer_evaluation(trained):
    """``bench/esmm.py`` scores by the trainer's evaluation path: ESMM's rows equal ``eval.json``'s
    heads of the same episodes, and the baseline's CTR / CVR heads equal the evaluation of the
    CTR model and of the clicked-only CVR model (whose label masks what the CVR head scores)."""
    import dataclasses

    from bench import esmm as bench
    from trainer.data.batch import FeatureLayout
    from trainer.models import build_model

    cfg, manifest = trained.cfg, trained.manifest
    layout = FeatureLayout.from_manifest(manifest)
    models = {"esmm": trained.model}
    for name, label in (("ctr", "click"), ("cvr_clicked", "clicked_conversion")):
        model_cfg = dataclasses.replace(cfg.model, task="ctr", label=label)
        models[name] = build_model(model_cfg, layout, seed=len(name))
    scores = bench.score(models, cfg.eval_meta(), cfg.data.path, "test_cold", 64)
    table = bench.compare(scores)
    heads = evaluate(trained.model, cfg, manifest, "test_cold")["heads"]
    for setting, when in (("no adaptation", "before"), ("adapted", "after")):
        for head in bench.HEADS:
            got, want = table["esmm"][setting][head], heads[when][head]
            assert got["samples"] == want["samples"]
            assert got["auc"] == pytest.approx(want["auc"], abs=1e-6), (setting, head)
        for name, head in (("ctr", "ctr"), ("cvr_clicked", "cvr")):
            plain = evaluate(models[name], cfg, manifest, "test_cold")[when]
            got = table["baseline"][setting][head]
            assert got["samples"] == plain["samples"], (setting, name)
            assert got["auc"] == pytest.approx(plain["auc"], abs=1e-6), (setting, name)
