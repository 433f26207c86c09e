"""One writer per interval (issue 18, item 2): two runs of one interval at once end with one whole
version and a clear message for the one that came second; leftovers of dead runs are cleaned.

Before the lock, the second run's staging setup deleted the first run's staging folder (the first
then failed with a misleading "no episode could be formed"), or the first, swapping last, moved
the second's finished version to ``_trash`` and failed: the interval was gone.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.reliability import etl_runs

pytestmark = pytest.mark.spark


def _lock_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _assert_whole(output: Path, rows: int) -> None:
    """The interval's version is complete: its manifest lists exactly the files on disk, with
    their sha256, and every row read is kept or quarantined."""
    from trainer.data.contract import load_manifest

    manifest = load_manifest(str(output))
    listed = {f["path"]: f["sha256"] for f in manifest.files}
    on_disk = {
        str(p.relative_to(output)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in output.glob("split=*/bucket=*/*.parquet")
    }
    assert listed == on_disk and listed
    acc = manifest.accounting
    assert acc["rows_read"] == rows == acc["rows_kept"] + acc["rows_quarantined"]


def test_a_second_run_of_a_busy_interval_stops_and_the_first_finishes_whole(
    spark, tmp_path
) -> None:
    from components.etl import run_etl
    from components.etl.lock import IntervalBusy

    raw, out = tmp_path / "raw", tmp_path / "episodes"
    rows = etl_runs.write_raw(raw)
    config = etl_runs.config(raw, out)
    lock = out / "_staging" / f"{config.interval_id}.lock"
    first = subprocess.Popen(etl_runs.etl_command(raw, out), cwd=etl_runs.REPO,
                             env=etl_runs.environment(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while _lock_owner(lock).get("pid") != first.pid:  # the first run holds the interval
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        with pytest.raises(IntervalBusy) as busy:  # this process's run comes second
            run_etl(config, spark)
        stdout, stderr = first.communicate(timeout=240)
    finally:
        first.kill()
    message = str(busy.value)
    assert f"interval {config.interval_id} is being written by another ETL run" in message
    assert f"pid {first.pid} on host " in message and str(lock) in message
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["rows_read"] == rows
    _assert_whole(out / config.interval_id, rows)
    assert not any((out / "_staging").iterdir())  # no staging folder, no lock left


def test_leftovers_of_dead_runs_are_removed_and_other_intervals_left_alone(spark, tmp_path) -> None:
    from components.etl import run_etl

    raw, out = tmp_path / "raw", tmp_path / "episodes"
    rows = etl_runs.write_raw(raw)
    config = etl_runs.config(raw, out)
    staging, trash = out / "_staging", out / "_trash"
    stale = staging / f"{config.interval_id}.0123456789ab"
    (stale / "split=train" / "bucket=00000").mkdir(parents=True)
    (stale / "split=train" / "bucket=00000" / "part-00000.parquet").write_bytes(b"half")
    # a killed run's lock file: nobody holds its flock any more, whatever it says
    (staging / f"{config.interval_id}.lock").write_text('{"pid": 1, "host": "gone"}')
    (trash / f"{config.interval_id}.ba9876543210").mkdir(parents=True)  # killed inside a swap
    other = staging / "interval=20261102T00-20261102T01.aaaaaaaaaaaa"  # another interval's run
    other.mkdir()
    result = run_etl(config, spark)
    assert result.rows_read == rows == result.rows_kept + result.rows_quarantined
    _assert_whole(Path(result.output), rows)
    assert sorted(p.name for p in staging.iterdir()) == [other.name]
    assert not any(trash.iterdir())
