"""One answer to "can this checkpoint warm start (or resume) that run?"
(``run_state.checkpoint_problems``): the trainer refuses with it at start-up, and the training
step cold-starts with the same words."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.steps.config import DeliveryConfig
from components.steps.layout import Interval, RunLayout
from components.steps.training import choose_warm_start
from tests.trainer.run_helpers import FEATURES, tiny_config, tiny_overrides, write_episodes
from trainer.checkpoint import CheckpointError
from trainer.data.contract import load_manifest
from trainer.run_state import checkpoint_problems, find_checkpoint
from trainer.trainer import Trainer

DAY = Interval.parse("2026-11-01T00/1d")  # the synthetic episodes' interval
NEXT = Interval.parse("2026-11-02T00/1h")
WIDER = [("user", 211, 1), *FEATURES[1:]]  # another bucket count: another stacked table


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> tuple[DeliveryConfig, Path, Path]:
    """A run root whose champion v1 was trained on DAY; returns (its delivery config, its
    checkpoint, the root of the data dirs)."""
    from components.promotion import registry
    from trainer.exported.export import export_checkpoint

    tmp = tmp_path_factory.mktemp("warm")
    overrides = [o for o in tiny_overrides(tmp, tmp) if not o.startswith(("data.", "train.output"))]
    cfg = DeliveryConfig(run_root=str(tmp / "run"), trainer_overrides=overrides)
    layout = RunLayout.of(cfg.run_root)
    run = layout.train(DAY)
    trainer = Trainer(tiny_config(write_episodes(tmp / "day1"), run)).build()
    try:
        trainer.fit()
    finally:
        trainer.close()
    exported = export_checkpoint(run, layout.models_root, name=cfg.model_name, graph=False)
    registry.promote(layout.models_root, cfg.model_name, exported.version)
    return cfg, find_checkpoint(run), tmp


def _trainer_refusal(ckpt: Path, data: Path, out: Path, **extra) -> str:
    cfg = tiny_config(data, out, **{"checkpoint.warm_start": str(ckpt), **extra})
    with pytest.raises(ValueError, match="cannot warm start") as refused:
        Trainer(cfg).build().close()
    return str(refused.value)


def test_step_and_trainer_refuse_a_misfit_with_the_same_problems(champion, tmp_path) -> None:
    cfg, ckpt, root = champion
    wider = write_episodes(root / "day2-wider", seed=1, features=WIDER)
    problems = checkpoint_problems(
        ckpt, tiny_config(wider, tmp_path, **{"model.embedding_dim": 8}), load_manifest(str(wider))
    )
    assert problems == [
        "feature 'user' has buckets=101 in the checkpoint, 211 in this data",
        "model.embedding_dim is 4 in the checkpoint, 8 in this run",
    ]
    said = "; ".join(problems)

    step = choose_warm_start(
        DeliveryConfig(
            run_root=cfg.run_root,
            trainer_overrides=(*cfg.trainer_overrides, "model.embedding_dim=8"),
        ),
        NEXT,
        str(wider),
    )
    assert (step.checkpoint, step.champion) == (None, "v1")
    assert step.reason == f"champion v1 does not fit this run: {said}"

    refusal = _trainer_refusal(ckpt, wider, tmp_path / "run", **{"model.embedding_dim": 8})
    assert refusal.startswith(f"cannot warm start from {ckpt}: {said}. A warm start reuses")


def test_a_fitting_checkpoint_has_no_problems_and_both_use_it(champion, tmp_path) -> None:
    cfg, ckpt, root = champion
    day2 = write_episodes(root / "day2", seed=1)  # same feature spec, other samples
    manifest = load_manifest(str(day2))
    assert checkpoint_problems(ckpt, tiny_config(day2, tmp_path), manifest) == []
    (resume,) = checkpoint_problems(ckpt, tiny_config(day2, tmp_path), manifest, resume=True)
    assert resume.startswith("the data differs: the checkpoint trained on ")  # new data: warm only
    assert choose_warm_start(cfg, NEXT, str(day2)).checkpoint == str(ckpt)
    warm = tiny_config(day2, tmp_path / "run", **{"checkpoint.warm_start": str(ckpt)})
    trainer = Trainer(warm).build()
    trainer.close()
    assert trainer.step == 0
    assert int(trainer.optimizers.state_dict()["dense"]["state"][0]["step"]) == 4  # the champion's


def test_what_is_not_a_checkpoint_is_an_error_not_a_problem(champion, tmp_path) -> None:
    _, ckpt, root = champion
    day1 = root / "day1"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        checkpoint_problems(tmp_path, tiny_config(day1, tmp_path), load_manifest(str(day1)))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    meta = (ckpt / "meta.json").read_text().replace('"dense_features"', '"dense"')
    (foreign / "meta.json").write_text(meta)
    with pytest.raises(CheckpointError, match="not written by this trainer"):
        checkpoint_problems(foreign, tiny_config(day1, tmp_path), load_manifest(str(day1)))
