"""Fixtures for the Meta-IO reader tests: small synthetic ETL outputs and a direct decoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainer.data.synthetic import write_synthetic_episodes

# Uneven row groups (7 episodes each, last ones shorter), several files, partial episodes, a
# multi-slot feature: the awkward cases in a few hundred episodes.
SMALL = dict(
    num_tasks=40,
    k_support=4,
    q_query=3,
    features=[("user", 50, 1), ("tags", 30, 2), ("hour", 11, 1)],
    dense_width=2,
    max_episodes_per_task=12,
    rows_per_group=7,
    num_buckets=3,
    partial_fraction=0.3,
    seed=3,
)


@pytest.fixture(scope="session")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("episodes") / "interval=small"
    write_synthetic_episodes(root, **SMALL)
    return root


@pytest.fixture
def small_copy(small_root, tmp_path) -> Path:
    """A private copy the test may corrupt."""
    dst = tmp_path / "copy"
    shutil.copytree(small_root, dst)
    return dst
