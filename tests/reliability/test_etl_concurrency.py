"""Two runs of one interval at once, then a rerun in another JVM (issue 18, items 1 and 2).

One writer per interval: of two runs at once, the second stops with a clear message and touches
nothing; the first ends with one whole version and removes what dead runs left. Before the lock,
the second run's staging setup deleted the first run's staging folder (the first then failed with
a misleading "no episode could be formed"), or the first, swapping last, moved the second's
finished version to ``_trash`` and failed: the interval was gone.

Byte-identical reruns across JVMs: the first run is a fresh ``metarec etl`` process, the rerun
this test session's JVM. parquet-mr writes each column chunk's encodings in an order that changes
with every JVM; before ``components.etl.footer`` pinned it, such a rerun changed every episode
file's sha256 and the manifest's ``content_hash``, and the checkpoints trained on the first run
were refused. (One test, so the default tier starts one extra JVM for both properties.)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.reliability import etl_runs

pytestmark = [pytest.mark.spark, pytest.mark.multiprocess]  # a `metarec etl` process: a second JVM


def _lock_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


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
    assert acc["rows_quarantined"] == 1 and acc["quarantine"]["files"]


def _plant_dead_runs(out: Path, interval_id: str) -> Path:
    """What killed runs leave: a staging folder with a partial file, their lock file (nobody
    holds its flock any more, whatever it says) and a previous version in ``_trash`` (killed
    inside the swap); plus a live-looking staging folder of ANOTHER interval (returned)."""
    staging = out / "_staging"
    stale = staging / f"{interval_id}.0123456789ab" / "split=train" / "bucket=00000"
    stale.mkdir(parents=True)
    (stale / "part-00000.parquet").write_bytes(b"half")
    (staging / f"{interval_id}.lock").write_text('{"pid": 1, "host": "gone"}')
    (out / "_trash" / f"{interval_id}.ba9876543210").mkdir(parents=True)
    other = staging / "interval=20261102T00-20261102T01.aaaaaaaaaaaa"
    other.mkdir()
    return other


def test_two_runs_at_once_then_a_rerun_in_another_jvm(spark, tmp_path) -> None:
    from components.etl import run_etl
    from components.etl.lock import IntervalBusy
    from trainer.data.contract import data_sha256

    raw, out = tmp_path / "raw", tmp_path / "episodes"
    rows = etl_runs.write_raw(raw)
    config = etl_runs.config(raw, out)
    other = _plant_dead_runs(out, config.interval_id)
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
    output = Path(json.loads(stdout)["output"])
    _assert_whole(output, rows)
    # the dead runs' leftovers are gone, the other interval's staging folder is not
    assert sorted(p.name for p in (out / "_staging").iterdir()) == [other.name]
    assert not any((out / "_trash").iterdir())

    before = _snapshot(output)
    again = run_etl(config, spark)  # a rerun in this JVM, another than the first run's
    assert Path(again.output) == output
    assert _snapshot(output) == before  # episodes, quarantine and manifest, byte for byte
    # the rows' digests do not depend on the writer: pyarrow's rewrite of Spark's file has them
    import pyarrow.parquet as pq

    entry = again.manifest.files[0]
    rewritten = tmp_path / "rewritten.parquet"
    pq.write_table(pq.read_table(output / entry["path"]), rewritten, compression="snappy")
    assert data_sha256(rewritten) == entry["data_sha256"]
