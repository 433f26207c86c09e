"""Evaluation equals a task-by-task reference; limits, label masks and empty splits."""

from __future__ import annotations

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
        rows = model.embeddings.lookup(batch.ids)
        rows = type(rows)(rows.emb.detach(), rows.linear.detach(), rows.trainable)
        for t in range(batch.num_episodes):
            if not batch.episode_mask[t]:
                continue
            ns, nq = int(batch.n_support[t]), int(batch.n_query[t])
            s_in, q_in = batch.inverse[t, :ns], batch.inverse[t, K : K + nq]
            s_sf, q_sf = model.sparse_features(rows, s_in), model.sparse_features(rows, q_in)
            s_args = (s_sf.fields, s_sf.linear, batch.dense[t, :ns])
            q_args = (q_sf.fields, q_sf.linear, batch.dense[t, K : K + nq])
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
