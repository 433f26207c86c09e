"""A full disk or a refused write in the ETL is one line naming the path and what was being written
(issue 18, "full disks"), not the JVM's stack of hundreds of lines: run on a REAL full filesystem
and a REAL read-only one (a small tmpfs, mounted here when this user may; skipped otherwise), plus
the recognition of the JVM's words on a Java trace captured from such a run."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from components.etl.storage_errors import StorageError, storage_error
from tests.reliability import etl_runs


@pytest.fixture
def mount(tmp_path):
    """``mount(options)`` -> a fresh tmpfs folder mounted with ``options``; unmounted after."""
    mounted: list[Path] = []

    def make(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root/CAP_SYS_ADMIN): "
                        f"{proc.stderr.strip()}")  # fmt: skip
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 600, text
    return text


@pytest.mark.spark
@pytest.mark.slow  # the default tier checks the JVM text (below) and the job's wiring (read-only)
def test_a_full_disk_is_one_line_naming_the_path(spark, tmp_path, mount) -> None:
    from components.etl import run_etl

    raw = tmp_path / "raw"
    etl_runs.write_raw(raw)
    out = mount("size=16k") / "episodes"  # room for the lock, not for the episodes
    config = etl_runs.config(raw, out)
    with pytest.raises(StorageError) as e:
        run_etl(config, spark)
    text = _one_line(e.value)
    assert text.startswith(
        f"no space left on device while writing the episode files to {out}/_staging/"
        f"{config.interval_id}."
    ), text
    assert "free space there or write elsewhere (--output)" in text
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, ValueError)  # the CLI's one line
    assert not any((out / "_staging").iterdir()) and not (out / config.interval_id).exists()


@pytest.mark.spark
def test_a_read_only_output_is_one_line_naming_the_path(spark, tmp_path, mount) -> None:
    from components.etl import run_etl

    raw = tmp_path / "raw"
    etl_runs.write_raw(raw)
    out = mount("ro,size=64k")
    with pytest.raises(StorageError) as e:
        run_etl(etl_runs.config(raw, out), spark)
    text = _one_line(e.value)
    assert text.startswith(f"read-only file system while creating the staging folder under {out}")
    assert e.value.errno == errno.EROFS


# The lines that matter of a Py4JJavaError raised by a real run on a full tmpfs (118 lines).
JAVA_FULL_DISK = """An error occurred while calling o123.parquet.
: org.apache.spark.SparkException: [TASK_WRITE_FAILED] Task failed while writing rows to file:/data/out/_staging/interval=x.1/.spark-staging-5f50. SQLSTATE: 58030
\tat org.apache.spark.sql.errors.QueryExecutionErrors$.taskFailedWhileWritingRowsError(QueryExecutionErrors.scala:823)
Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device
Caused by: java.io.IOException: No space left on device
"""
JAVA_DENIED = """: java.io.FileNotFoundException: /data/out/_staging/x/part-00000.parquet (Permission denied)
\tat java.base/java.io.FileOutputStream.open0(Native Method)
"""


def test_the_jvm_words_are_recognised_and_other_errors_left_alone() -> None:
    full = storage_error(RuntimeError(JAVA_FULL_DISK), "writing the episode files to", "/data/o")
    assert full is not None and full.errno == errno.ENOSPC
    assert _one_line(full).startswith("no space left on device while writing the episode files")
    denied = storage_error(RuntimeError(JAVA_DENIED), "writing the episode files to", "/data/o")
    assert denied is not None and denied.errno == errno.EACCES
    assert "(at /data/out/_staging/x/part-00000.parquet)" in _one_line(denied)
    wrapped = ValueError("the manifest could not be written")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded", "/data/o/_manifest.json")
    quota = storage_error(wrapped, "writing the manifest and checksums to", "/data/o")
    assert quota is not None and "(at /data/o/_manifest.json)" in str(quota)
    assert storage_error(ValueError("no episode could be formed"), "writing", "/o") is None
