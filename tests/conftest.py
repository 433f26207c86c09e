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


def _start_spark():
    from components.etl.session import build_spark

    return build_spark(
        "metarec-tests",
        master="local[2]",
        conf={"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"},
    )


_early_spark: dict = {}
"""``thread`` starting the session, then its ``session`` or the ``error`` it raised."""


def pytest_collection_finish(session):
    """Start the JVM in the background once this process knows it will run Spark tests: its
    start-up (~5-9 s) overlaps the tests that come first; the ``spark`` fixture waits for it."""
    import threading

    def start() -> None:
        try:
            _early_spark["session"] = _start_spark()
        except BaseException as e:  # raised again by the fixture, in the test that needs it
            _early_spark["error"] = e

    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("spark") for item in session.items):
        _early_spark["thread"] = threading.Thread(target=start, name="spark-start", daemon=True)
        _early_spark["thread"].start()


@pytest.fixture(scope="session")
def spark():
    """A local[2] SparkSession shared by every Spark test (a start costs ~5-9 s and ~1 GB)."""
    if "thread" in _early_spark:
        _early_spark["thread"].join()
    if "error" in _early_spark:
        raise _early_spark["error"]
    session = _early_spark.get("session") or _start_spark()
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real samples whose licences forbid committing them; skip where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"licensed sample data not found at {SHARED_DATA} (it is never committed)")
    return SHARED_DATA
