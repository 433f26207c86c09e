"""Shared fixtures: one SparkSession per test session, and the licensed sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting for work steal the CPU of every other process of the
# suite (Spark's JVM, gloo ranks, subprocess trainers) on a small machine; sleeping ones do not.
# Set before any test imports torch, and inherited by every process a test starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def spark():
    """A local[2] SparkSession shared by every Spark test (a start costs ~5-9 s and ~1 GB)."""
    from components.etl.session import build_spark

    session = build_spark(
        "metarec-tests",
        master="local[2]",
        conf={"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"},
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real samples whose licences forbid committing them; skip where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"licensed sample data not found at {SHARED_DATA} (it is never committed)")
    return SHARED_DATA
