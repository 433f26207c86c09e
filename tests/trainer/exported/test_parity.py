"""DESIGN.md §5 oracle 5: the exported model scores episodes exactly as the trainer evaluated
them, without and after adaptation, from a one-process checkpoint and from a 2-rank (sharded) one.

The reference is the trainer's evaluation loop on the run's parameters in one process
(``runs.reference_scores``), itself checked against :meth:`Trainer.evaluate` and the run's
``eval.json``; the exported side is :func:`trainer.exported.evaluation.score_episodes` on the
loaded export (the ``torch.export`` graph for unadapted scores, the rebuilt model +
``meta.adapt`` for adapted ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer.exported.runs import RUN, reference_scores, run_eval
from trainer.data.reader import EpisodeReader
from trainer.exported import evaluate_exported, export_checkpoint, load_exported
from trainer.exported.evaluation import score_episodes

BATCH, LIMIT = RUN["data.batch_episodes"], RUN["eval.max_episodes"]
RUNS = {
    "single": ("single_run", {"eval.adapt_steps": 2, "eval.adapt_lr": 0.05}),
    "sharded": ("sharded_run", {}),
    "deepfm-dense+emb": (
        "deepfm_run",
        {"model.arch": "deepfm", "meta.mode": "fomaml", "meta.adapt": "dense+emb"},
    ),
}


def _metrics_close(got: dict, want: dict, abs_tol: float) -> None:
    for key in ("episodes", "tasks", "query_samples"):
        assert got[key] == want[key], key
    for when in ("before", "after"):
        for key, value in want[when].items():
            assert got[when][key] == pytest.approx(value, abs=abs_tol, nan_ok=True), (when, key)


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
@pytest.mark.parametrize("which", list(RUNS))
@pytest.mark.parametrize("split", ["valid", "test_cold"])
def test_exported_scores_equal_trainer_evaluation(which, split, episodes, tmp_path, request):
    fixture, extra = RUNS[which]
    run: Path = request.getfixturevalue(fixture)
    model = load_exported(export_checkpoint(run, tmp_path / "models").path)
    expected, trainer_eval = reference_scores(episodes, run, tmp_path / "ref", split, **extra)
    # the reference IS the evaluation: same metrics as Trainer.evaluate and the run's eval.json
    exported_metrics = evaluate_exported(model, str(episodes), (split,), BATCH, LIMIT)
    _metrics_close(trainer_eval, run_eval(run)[split], 1e-5 if which == "sharded" else 1e-9)

    got = score_episodes(model, str(episodes), split, BATCH, LIMIT)
    np.testing.assert_array_equal(got.labels, expected["labels"])
    assert len(got.labels) == trainer_eval["query_samples"] > 0
    # same operators, same batches: equal up to float rounding of reassociated sums (measured 0)
    np.testing.assert_allclose(got.before, expected["before"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.after, expected["after"], rtol=1e-6, atol=1e-6)
    assert not np.allclose(got.before, got.after)  # adaptation changed the scores
    _metrics_close(exported_metrics["splits"][split], trainer_eval, 1e-6)


@pytest.mark.parametrize("which", ["single", "deepfm-dense+emb"])
def test_graph_equals_rebuilt_model(which, episodes, tmp_path, request):
    """The torch.export graph (what a torch-only server runs) gives the rebuilt model's logits."""
    run: Path = request.getfixturevalue(RUNS[which][0])
    model = load_exported(export_checkpoint(run, tmp_path / "models").path)
    assert model.graph is not None
    with EpisodeReader(str(episodes), "valid", 16, shuffle=False, epochs=1, prefetch=0) as reader:
        for batch in reader:
            graph = model.episode_logits(batch, adapt=False)
            eager = model.episode_logits(batch, adapt=False, eager=True)
            torch.testing.assert_close(graph, eager, rtol=1e-6, atol=1e-6)


def test_serving_adaptation_is_the_evaluation_setting(single_run, tmp_path):
    """eval.adapt_steps / eval.adapt_lr override meta.* at evaluation; the export carries them."""
    model = load_exported(export_checkpoint(single_run, tmp_path / "models").path)
    assert (model.adaptation.inner_steps, model.adaptation.inner_lr) == (2, 0.05)
    assert model.adaptation.adapt == "dense"
