"""The trainer runs Meta-SGD, FiLM and MetaEmb end to end: a crash and resume equals the
uninterrupted run (the learned step sizes, the encoder and the generator are in the checkpoint,
with their Adam state), and the evaluation adapts with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.run_helpers import finite, tiny_config, write_episodes
from tests.trainer.test_trainer import Crash, _assert_same_state, _run
from trainer.exported.artifact import ExportError
from trainer.exported.export import export_checkpoint


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("methods") / "day1")


@pytest.mark.parametrize(
    "method",
    [
        {"meta.mode": "maml", "meta.learn_inner_lr": "parameter", "meta.adapt": "dense+emb"},
        {"meta.mode": "film", "model.arch": "deepfm"},
        {"meta.mode": "metaemb", "meta.metaemb_id": "ad", "meta.metaemb_attributes": ["user"]},
    ],
    ids=["metasgd", "film", "metaemb"],
)
def test_crash_and_resume_equals_uninterrupted_run(episodes: Path, tmp_path: Path, method) -> None:
    extra = {"train.steps": 6, "checkpoint.every": 3, "train.eval_every": 0, **method}
    reference = _run(tiny_config(episodes, tmp_path / "reference", **extra))
    own = {"film": "task_encoder.", "metaemb": "id_generator."}.get(
        method["meta.mode"], "inner_lrs."
    )
    assert any(k.startswith(own) for k in reference.model.state_dict())

    out = tmp_path / "interrupted"
    with pytest.raises(Crash):
        _run(tiny_config(episodes, out, **extra), crash_at=5)
    resumed = _run(tiny_config(episodes, out, **extra))
    assert min(resumed.seen) == 4  # continued after the step-3 checkpoint
    _assert_same_state(reference, resumed)

    cold = reference.evaluate()["test_cold"]
    assert finite(cold["after"]["auc"]) and finite(cold["after"]["logloss"])
    assert cold["after"]["logloss"] != cold["before"]["logloss"]  # the adaptation was applied
    # the exported model cannot carry the method yet: a clear refusal, nothing written
    with pytest.raises(ExportError, match="the exported model cannot carry"):
        export_checkpoint(tmp_path / "reference", tmp_path / "models", graph=False)
    assert not (tmp_path / "models").exists()
