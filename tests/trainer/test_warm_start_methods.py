"""Warm-starting a method run (Meta-SGD, FiLM, MetaEmb) from a plain or MAML checkpoint: the
paper's workflow (plain pretraining, then the method). Every key the checkpoint has is loaded
strictly; only the method's own new parameters (step sizes, encoder, generator) keep their
initial values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.run_helpers import tiny_config, write_episodes
from trainer.trainer import Trainer

METHODS = {
    "metasgd": ({"meta.mode": "maml", "meta.learn_inner_lr": "layer"}, "inner_lrs."),
    "film": ({"meta.mode": "film"}, "task_encoder."),
    "metaemb": (
        {"meta.mode": "metaemb", "meta.metaemb_id": "ad", "meta.metaemb_attributes": ["user"]},
        "id_generator.",
    ),
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A plain run's output directory and its dense state."""
    tmp = tmp_path_factory.mktemp("warm-methods")
    trainer = Trainer(tiny_config(write_episodes(tmp / "day1"), tmp / "plain",
                                  **{"meta.mode": "plain"})).build()  # fmt: skip
    try:
        trainer.fit()
        state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    finally:
        trainer.close()
    return tmp, state


def _built(cfg) -> dict[str, torch.Tensor]:
    trainer = Trainer(cfg).build()
    try:
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}
    finally:
        trainer.close()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_method_warm_starts_from_a_plain_checkpoint(pretrained, tmp_path, method) -> None:
    tmp, plain = pretrained
    overrides, prefix = METHODS[method]
    fresh = _built(tiny_config(tmp / "day1", tmp_path / "fresh", **overrides))
    warm = _built(tiny_config(tmp / "day1", tmp_path / "warm", **overrides,
                              **{"checkpoint.warm_start": str(tmp / "plain")}))  # fmt: skip
    new = {k for k in warm if k.startswith(prefix)}
    assert new and set(warm) == set(plain) | new
    for k in plain:  # every key of the checkpoint is the checkpoint's
        assert torch.equal(warm[k], plain[k]), k
    for k in new:  # the method's own parameters: their initial values (same seed)
        assert torch.equal(warm[k], fresh[k]), k


def test_a_checkpoint_with_parameters_the_run_lacks_is_refused(pretrained, tmp_path) -> None:
    """Only the run's missing method keys are lenient: a MetaEmb checkpoint cannot warm start a
    plain run (its generator would be dropped silently)."""
    tmp, _ = pretrained
    overrides, _ = METHODS["metaemb"]
    trainer = Trainer(tiny_config(tmp / "day1", tmp_path / "metaemb", **overrides,
                                  **{"train.steps": 1})).build()  # fmt: skip
    try:
        trainer.fit()
    finally:
        trainer.close()
    cfg = tiny_config(tmp / "day1", tmp_path / "plain", **{"meta.mode": "plain",
                      "checkpoint.warm_start": str(tmp_path / "metaemb")})  # fmt: skip
    with pytest.raises(ValueError, match=r"cannot warm start .* has not \(id_generator\)"):
        Trainer(cfg).build().close()
