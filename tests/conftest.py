"""Shared fixtures: one SparkSession per test session, and the licensed sample data."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting for work steal the CPU of every other process of the
# suite (Spark's JVM, gloo ranks, subprocess trainers) on a small machine; sleeping ones do not.
# Set before any test imports torch, and inherited by every process a test starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Every JVM the suite starts (the session below, the CLIs tests run) lives seconds on small data:
# the C2 compiler's work never pays back there, and it took a third of the Spark tests' CPU time
# (measured: 86 -> 56 CPU-seconds for the ETL job, episode and raw-validation files). Spark's
# launcher adds SPARK_SUBMIT_OPTS to the driver JVM's command line; results are unaffected.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1")
# CPython 3.11 keeps one AST recursion counter for all threads (python/cpython#106905) and parses
# source to underline each traceback it formats: a traceback formatted in another thread (py4j's
# finalizer logging a retried connection reset, at INFO once Airflow's import set the root logger
# to INFO) fails a concurrent ast.parse with "SystemError: AST constructor recursion depth
# mismatch" (tests/test_suite_setup.py). Without column positions no traceback parses source.
# Applies to the xdist workers and the processes tests start; a PARALLEL= run must set it itself.
os.environ.setdefault("PYTHONNODEBUGRANGES", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FILE_COSTS = Path(__file__).with_name("file_costs.json")
"""Per test tier (the ``-m`` expression), seconds per test file (setup + call + teardown of the
tests the tier runs) from one recorded run of that tier."""


def _recorded_costs() -> dict[str, dict[str, float]]:
    return json.loads(FILE_COSTS.read_text())["seconds"] if FILE_COSTS.is_file() else {}


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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-file-costs",
        action="store_true",
        help=f"write each test file's seconds in this run's tier (-m) to {FILE_COSTS.name} "
        "(files not run keep theirs)",
    )


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(trylast=True)  # after ``-m`` deselection: the lead files are ones that run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a pytest-xdist worker, order the files longest first (their recorded seconds in
    ``file_costs.json`` for this tier, else for the largest recorded tier; an unrecorded file,
    which may be long, counts as the longest), keeping each file's tests in their order. With
    ``--dist loadfile --no-loadscope-reorder`` (the Makefile's) xdist hands files out in this
    order, so no long file starts last while the other worker sits idle. The two longest recorded
    files without Spark go first: the JVM starting in the background meanwhile
    (``pytest_collection_finish``) does not hold up either worker's first file."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    tiers = _recorded_costs()
    recorded = tiers.get(config.option.markexpr) or max(tiers.values(), key=len, default={})
    default = max(recorded.values(), default=0.0)
    first: dict[str, int] = {}
    spark_files: set[str] = set()
    for i, item in enumerate(items):
        first.setdefault(_file(item.nodeid), i)
        if item.get_closest_marker("spark"):
            spark_files.add(_file(item.nodeid))
    files = sorted(first, key=lambda f: (-recorded.get(f, default), first[f]))
    lead = [f for f in files if f in recorded and f not in spark_files][:2]
    rank = {f: i for i, f in enumerate(lead + [f for f in files if f not in lead])}
    items.sort(key=lambda item: rank[_file(item.nodeid)])


_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the controller, or a run without xdist
        file = _file(report.nodeid)
        _seconds[file] = _seconds.get(file, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if "PYTEST_XDIST_WORKER" in os.environ or not session.config.getoption("record_file_costs"):
        return
    from trainer.durable import write_json_atomic

    tiers = _recorded_costs()
    recorded = tiers.setdefault(session.config.option.markexpr, {})
    recorded.update({f: round(s, 1) for f, s in _seconds.items()})
    tiers = {tier: dict(sorted(files.items())) for tier, files in sorted(tiers.items())}
    about = "per -m tier, seconds per test file (--record-file-costs); conftest.py sorts by them"
    write_json_atomic(FILE_COSTS, {"about": about, "seconds": tiers})


def pytest_unconfigure(config: pytest.Config) -> None:
    """A worker's interpreter ends by collecting its whole heap (every library and the objects
    1,500 tests left), 2-4 s of a run's tail: exempt what exists now from that collection."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        gc.freeze()


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
