"""A small registry to serve: a tiny run's step 2 exported in full (v1, the champion) and its step
4 as a delta on it (v2, promoted by the tests that swap)."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.promotion import registry
from tests.trainer.exported.runs import train
from tests.trainer.run_helpers import write_episodes
from trainer.exported import export_checkpoint

NAME = "click-dlrm"


@pytest.fixture(scope="session")
def served_registry(tmp_path_factory) -> Path:
    """``<root>/click-dlrm`` with v1 (full, champion) and v2 (a delta on v1). Read-only: a test
    that changes it copies it first."""
    base = tmp_path_factory.mktemp("serve")
    run = train(write_episodes(base / "episodes"), base / "run")
    root = base / "models"
    for step in ("step-00000002", "step-00000004"):
        export_checkpoint(run / "checkpoints" / step, root, name=NAME, delta=True)
    registry.promote(root, NAME, "v1", reason="test")
    return root / NAME
