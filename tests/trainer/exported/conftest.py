"""Session fixtures: small synthetic episodes and trained runs (one process, and 2 ranks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.exported.runs import train
from tests.trainer.run_helpers import write_episodes


@pytest.fixture(scope="session")
def episodes(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("serving-data") / "interval")


@pytest.fixture(scope="session")
def single_run(episodes: Path, tmp_path_factory) -> Path:
    """DLRM, MAML adapting the dense layers; evaluation adapts with 2 steps of lr 0.05."""
    out = tmp_path_factory.mktemp("serving-single") / "run"
    return train(episodes, out, **{"eval.adapt_steps": 2, "eval.adapt_lr": 0.05})


@pytest.fixture(scope="session")
def sharded_run(episodes: Path, tmp_path_factory) -> Path:
    """The same model on 2 ranks: embedding rows sharded, one checkpoint shard per rank."""
    out = tmp_path_factory.mktemp("serving-sharded") / "run"
    return train(episodes, out, world_size=2)


@pytest.fixture(scope="session")
def deepfm_run(episodes: Path, tmp_path_factory) -> Path:
    """DeepFM (a linear table beside the embeddings), FOMAML adapting dense layers + task-local
    embedding rows."""
    out = tmp_path_factory.mktemp("serving-deepfm") / "run"
    extra = {"model.arch": "deepfm", "meta.mode": "fomaml", "meta.adapt": "dense+emb"}
    return train(episodes, out, **extra)
