"""Evaluation equals a task-by-task reference; limits, label masks and empty splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tests.trainer.run_helpers import tiny_config, write_episodes
from trainer.config import TrainerConfig
from trainer.data.contract import load_manifest
from trainer.data.reader import EpisodeReader
from trainer.evaluate import evaluate, evaluation_share
from trainer.metrics import binary_metrics, grouped_auc
from trainer.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trainer:
    """A DeepFM (it has the linear table) after 10 MAML steps on the small synthetic interval."""
    root = tmp_path_factory.mktemp("eval")
    data = write_episodes(root / "data")
    cfg = tiny_config(data, root / "run", **{"train.steps": 10, "model.arch": "deepfm"})
    trainer = Trainer(cfg).build()
    trainer.fit()
    trainer.close()
    return trainer


def _reference(model, cfg: TrainerConfig, split: str, steps: int, lr: float) -> tuple:
    """Episode by episode: predict the query set, then take ``steps`` explicit SGD steps on a copy
    of every dense parameter (adapt = dense) and predict again. No vmap, no low-rank trick."""
    labels, before, after, groups, episodes = [], [], [], [], []
    reader = EpisodeReader(cfg.data.path, split, 8, shuffle=False, epochs=1, prefetch=0)
    for batch in reader:
        K = batch.k_support
        sparse = model.embeddings.read(batch)  # pooled rows, no gradient
        for t in range(batch.num_episodes):
            if not batch.episode_mask[t]:
                continue
            ns, nq = int(batch.n_support[t]), int(batch.n_query[t])
            s_sp = sparse.apply(lambda x, t=t, ns=ns: x[t, :ns])
            q_sp = sparse.apply(lambda x, t=t, q=slice(K, K + nq): x[t, q])
            s_args = (s_sp, batch.dense[t, :ns])
            q_args = (q_sp, batch.dense[t, K : K + nq])
            params = {k: v.detach().clone() for k, v in model.dense_half.named_parameters()}
            with torch.no_grad():
                before.append(functional_call(model.dense_half, params, q_args).numpy())
            for _ in range(steps):
                params = {k: v.requires_grad_() for k, v in params.items()}
                logits = functional_call(model.dense_half, params, s_args)
                loss = F.binary_cross_entropy_with_logits(logits, batch.click[t, :ns])
                grads = torch.autograd.grad(loss, list(params.values()))
                params = {
                    k: (v - lr * g).detach()
                    for (k, v), g in zip(params.items(), grads, strict=True)
                }
            with torch.no_grad():
                after.append(functional_call(model.dense_half, params, q_args).numpy())
            labels.append(batch.click[t, K : K + nq].numpy())
            groups.append(np.full(nq, int(batch.task_ids[t])))
            episodes.append(np.full(nq, len(episodes)))
    return tuple(np.concatenate(x) for x in (labels, before, after, groups, episodes))


@pytest.mark.parametrize("steps", [1, 2])
def test_evaluate_equals_a_task_by_task_reference(trained: Trainer, steps: int) -> None:
    cfg = trained.cfg
    cfg.eval.adapt_steps, cfg.eval.adapt_lr, cfg.eval.max_episodes = steps, 0.3, 0
    result = evaluate(trained.model, cfg, trained.manifest, "test_cold")
    y, s0, s1, g, e = _reference(trained.model, cfg, "test_cold", steps, 0.3)
    assert result["episodes"] == trained.manifest.splits["test_cold"]["episodes"]
    assert result["query_samples"] == len(y) and result["tasks"] == len(np.unique(g))
    assert result["adapt"] == {"adapt": "dense", "steps": steps, "lr": 0.3}
    for when, scores in (("before", s0), ("after", s1)):
        expected = binary_metrics(y, scores, g).to_dict()
        expected["episode_gauc"] = grouped_auc(y, scores, e)[0]
        assert result[when].keys() == expected.keys()
        for key, value in expected.items():
            assert result[when][key] == pytest.approx(value, abs=2e-5), (when, key)
    assert result["after"]["auc"] != result["before"]["auc"]  # adaptation changed the scores
    assert result["auc_lift"] == pytest.approx(result["after"]["auc"] - result["before"]["auc"])


def test_max_episodes_limits_the_evaluated_episodes(trained: Trainer) -> None:
    cfg = trained.cfg
    cfg.eval.max_episodes, cfg.eval.adapt_steps = 21, 1  # not a multiple of the batch (16)
    result = evaluate(trained.model, cfg, trained.manifest, "valid")
    assert result["episodes"] == 21
    reader = EpisodeReader(cfg.data.path, "valid", 21, shuffle=False, epochs=1, prefetch=0)
    first = next(iter(reader))
    assert result["query_samples"] == int(first.n_query.sum())


def test_conversion_label_scores_only_known_labels(tmp_path: Path) -> None:
    data = write_episodes(tmp_path / "data")
    cfg = tiny_config(
        data, tmp_path / "run", **{"model.label": "conversion", "eval.max_episodes": 0}
    )
    trainer = Trainer(cfg).build()
    trainer.close()
    result = evaluate(trainer.model, cfg, trainer.manifest, "test_cold")
    manifest = load_manifest(str(data))
    K = manifest.k_support
    known = 0
    for f in manifest.files_of("test_cold"):
        table = pq.read_table(data / f["path"], columns=["n_query", "conversion"]).to_pylist()
        known += sum(sum(c >= 0 for c in r["conversion"][K : K + r["n_query"]]) for r in table)
    total = manifest.splits["test_cold"]["samples"] - sum(
        r["n_support"]
        for f in manifest.files_of("test_cold")
        for r in pq.read_table(data / f["path"], columns=["n_support"]).to_pylist()
    )
    assert 0 < known < total  # the data has tasks without conversion labels
    assert result["query_samples"] == known


def test_a_split_without_episodes_is_skipped(tmp_path: Path) -> None:
    data = write_episodes(tmp_path / "data", splits=("train", "valid"))
    cfg = tiny_config(data, tmp_path / "run")
    trainer = Trainer(cfg).build()
    try:
        results = trainer.fit()
    finally:
        trainer.close()
    assert results["test_cold"] == {
        "split": "test_cold",
        "episodes": 0,
        "skipped": "the split has no episodes",
    }
    assert results["valid"]["episodes"] > 0


def _task_stream(reader: EpisodeReader) -> list[int]:
    """Task ids of a reader's real episodes, in the order it yields them."""
    return [t for b in reader for t in b.task_ids[b.episode_mask].tolist()]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_the_evaluated_episodes_are_the_first_in_file_order_at_any_world_size(
    trained: Trainer, world_size: int
) -> None:
    """Each rank's share is a prefix of its own stream; together they are the first ``limit``
    episodes of the split; every rank computes the same batch count and total."""
    path = trained.cfg.data.path
    in_file_order = _task_stream(EpisodeReader(path, "valid", 4, shuffle=False, epochs=1))
    for limit in (1, 21, len(in_file_order) + 5):
        readers = [
            EpisodeReader(path, "valid", 4, rank=r, world_size=world_size, shuffle=False, epochs=1)
            for r in range(world_size)
        ]
        shares = [evaluation_share(reader, limit) for reader in readers]
        assert len({(steps, total) for _, steps, total in shares}) == 1
        _, steps, total = shares[0]
        assert total == min(limit, len(in_file_order))
        assert steps == max(-(-len(p) // 4) for p, _, _ in shares) <= readers[0].steps_per_epoch
        merged = np.sort(np.concatenate([p for p, _, _ in shares]))
        assert merged.tolist() == list(range(total))
        for reader, (positions, _, _) in zip(readers, shares, strict=True):
            own = _task_stream(reader)[: len(positions)]
            assert own == [in_file_order[p] for p in positions]


# ---------------------------------------------------------------------------------------------
# Evaluation under DES: the rows are read without substitution, so every eval.adapt works and
# the result equals the run without DES (the training itself equals it to rounding).


def _fit(data: Path, out: Path, **extra) -> dict:
    trainer = Trainer(tiny_config(data, out, **{"eval.max_episodes": 32, **extra})).build()
    try:
        trainer.fit()
    finally:
        trainer.close()
    return json.loads((out / "eval.json").read_text())


def _assert_same_evaluation(des: dict, plain: dict) -> None:
    assert des["splits"].keys() == plain["splits"].keys()
    for split, want in plain["splits"].items():
        got = des["splits"][split]
        assert got["episodes"] == want["episodes"] > 0
        assert got["adapt"] == want["adapt"]
        for when in ("before", "after"):
            for key, value in want[when].items():
                assert got[when][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (split, when)


@pytest.fixture(scope="module")
def des_data(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("des_eval") / "data")


@pytest.mark.parametrize(
    "arch,des", [("dlrm", "auto"), ("deepfm", "on"), ("wide_deep", "on"), ("melu", "on")]
)
def test_evaluation_under_des_equals_evaluation_without_it(
    des_data: Path, tmp_path: Path, arch: str, des: str
) -> None:
    """Training substitutes every operator that applies (meta.mode=plain admits all; DLRM keeps
    the row exchange); evaluation adapts the dense layers, the first one included."""
    extra = {"model.arch": arch, "meta.mode": "plain", "eval.adapt": "dense"}
    plain = _fit(des_data, tmp_path / "plain", **extra)
    substituted = _fit(des_data, tmp_path / "des", **extra, **{"parallel.des": des})
    _assert_same_evaluation(substituted, plain)


@pytest.mark.parametrize(
    "extra",
    [
        {"model.arch": "wide_deep", "meta.mode": "plain"},  # default eval.adapt: dense (KeyError)
        {
            "model.arch": "deepfm",
            "meta.mode": "fomaml",
            "meta.adapt": "head",
            "eval.adapt": "dense+emb",
        },  # (TypeError)
    ],
    ids=["wide_deep-plain", "deepfm-head-eval-dense+emb"],
)
def test_the_reported_des_evaluation_crashes_are_fixed(
    des_data: Path, tmp_path: Path, extra: dict
) -> None:
    """Issue 13 item 3: these runs trained under DES and then crashed in evaluation, leaving no
    ``eval.json``; evaluation now reads the rows exactly and adapts what ``eval.adapt`` says."""
    plain = _fit(des_data, tmp_path / "plain", **extra)
    substituted = _fit(des_data, tmp_path / "des", **extra, **{"parallel.des": "on"})
    _assert_same_evaluation(substituted, plain)
