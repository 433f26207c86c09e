"""The delivery's evaluation step scores each model once: the gate's metrics and the challenger's
ROC curve and confusion matrix come from the same scores, and equal an independent computation
from the exported model's query scores (``score_episodes``)."""

from __future__ import annotations

import numpy as np
import pytest

import trainer.exported.evaluation as evaluation
from components.steps.config import DeliveryConfig
from components.steps.data import EtlStepResult
from components.steps.delivery import ExportStepResult, evaluate_step
from components.steps.layout import Interval, RunLayout
from tests.trainer.exported.runs import RUN
from trainer.data.contract import load_manifest
from trainer.exported import evaluate_exported, export_checkpoint, load_exported

BATCH, LIMIT = RUN["data.batch_episodes"], RUN["eval.max_episodes"]


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC by counting every (positive, negative) pair, ties one half (quadratic; tiny data)."""
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def test_evaluate_scored_is_evaluate_exported_plus_its_scores(single_run, episodes, tmp_path):
    model = load_exported(export_checkpoint(single_run, tmp_path / "models").path)
    result, scores = evaluation.evaluate_scored(model, str(episodes), ("valid",), BATCH, LIMIT)
    assert result == evaluate_exported(model, str(episodes), ("valid",), BATCH, LIMIT)
    want = evaluation.score_episodes(model, str(episodes), "valid", BATCH, LIMIT)
    got = scores["valid"]
    for key in ("labels", "before", "after", "task_ids", "episodes"):
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key))
    for when in ("before", "after"):
        assert result["splits"]["valid"][when]["auc"] == pytest.approx(
            _pairwise_auc(want.labels, getattr(want, when)), abs=1e-12
        )


def test_evaluate_step_scores_the_challenger_once(single_run, episodes, tmp_path, monkeypatch):
    cfg = DeliveryConfig.from_dict(
        {
            "run_root": str(tmp_path / "run"),
            "gate": {"metric": "valid.after.auc", "batch_episodes": BATCH, "max_episodes": LIMIT},
        }
    )
    models = RunLayout.of(cfg.run_root).models_root
    r = export_checkpoint(single_run, models, name=cfg.model_name, manifest=str(episodes))
    exported = ExportStepResult(str(r.path), r.name, r.version, r.created)
    manifest = load_manifest(str(episodes))
    etl = EtlStepResult(str(episodes), manifest.content_hash, 0, 0, 0, {})
    calls = []
    real = evaluation.score_episodes
    monkeypatch.setattr(
        evaluation, "score_episodes", lambda *a, **k: calls.append(a[2]) or real(*a, **k)
    )

    result = evaluate_step(cfg, Interval.parse("2026-11-01T00/1h"), exported, etl)
    assert calls == ["valid"]  # one model (no champion yet), scored once

    s = real(load_exported(r.path), str(episodes), "valid", BATCH, LIMIT)
    assert result.challenger_value == pytest.approx(_pairwise_auc(s.labels, s.after), abs=1e-12)
    probs = 1.0 / (1.0 + np.exp(-s.after.astype(np.float64)))
    y = s.labels.astype(np.int64)
    assert 2 <= len(result.roc["thresholds"]) <= 50
    for t, tpr, fpr in zip(*(result.roc[k] for k in ("thresholds", "tpr", "fpr")), strict=True):
        assert tpr == (probs[y == 1] >= t).mean() and fpr == (probs[y == 0] >= t).mean()
    assert (
        result.roc["thresholds"][0] == probs.max() and result.roc["thresholds"][-1] == probs.min()
    )
    confusion = [[int(((y == c) & ((probs >= 0.5) == p)).sum()) for p in (0, 1)] for c in (0, 1)]
    assert result.confusion == confusion and sum(map(sum, confusion)) == len(y)
