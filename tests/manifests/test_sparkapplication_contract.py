"""The SparkApplication contract: the rendered ETL run of a small corrupted interval, turned into
its driver's ``spark-submit`` (application file, arguments and settings as rendered, PVC -> a
local directory, a local master), writes exactly what ``run_etl`` writes for the same input:
the same files with the same rows, the same row accounting.

Not byte for byte, hence not the manifest's ``content_hash`` (a sha256 of the file bytes): Spark's
Parquet writer lists each column chunk's encodings in a hash-set order that changes from one JVM
to the next, so two JVMs never write the same bytes for the same rows (found by this test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.etl.config import EtlConfig
from components.launchers.local_spark import (
    IMAGE_FILES,
    driver_env,
    run_driver_locally,
    spark_submit_command,
)
from components.launchers.render_etl import EtlRunParams, render_etl_run
from tests.components.etl import rawdata

START, END = "2026-11-01T00", "2026-11-01T03"  # the three hours of rawdata.corrupted_interval
OPTIONS = {"k": rawdata.ETL_K, "q": rawdata.ETL_Q, "min-support": 2, "min-query": 2,
           "buckets": 4, "cold-fraction": 0.3, "valid-fraction": 0.2,
           "shuffle-partitions": 4}  # fmt: skip


def _app() -> dict:
    extra = tuple(w for key, value in OPTIONS.items() for w in (f"--{key}", str(value)))
    params = EtlRunParams(run_id="r1", input="/data/raw", output="/data/episodes", start=START,
                                       end=END, extra_args=extra)  # fmt: skip
    (app,) = render_etl_run(params)
    return app


def _files(output: Path) -> dict[str, Any]:
    """Every Parquet file of an ETL output (episodes and quarantine) -> its rows."""
    import pyarrow.parquet as pq

    return {str(p.relative_to(output)): pq.ParquetFile(p).read() for p in output.rglob("*.parquet")}


def _layout(files: list[dict[str, Any]]) -> list[tuple]:
    return [(f["path"], f["rows"], f["row_groups"], f["bytes"]) for f in files]


def test_the_driver_command_is_the_rendered_application(tmp_path: Path):
    app = _app()
    scratch = tmp_path / "scratch"
    volumes = {"metarec-data": str(tmp_path / "volume")}
    command = spark_submit_command(app, volumes=volumes, scratch=scratch)
    assert command[:5] == [command[0], "--master", "local[2]", "--name", app["metadata"]["name"]]
    assert command[0].endswith("pyspark/bin/spark-submit")
    main = command.index(str(IMAGE_FILES["/opt/metarec/etl_job.py"]))
    data = str(Path(volumes["metarec-data"]).resolve())
    assert command[main + 1 :] == [  # the arguments, /data mapped to the claim's directory
        a.replace("/data", data, 1) if a.startswith("/data/") else a
        for a in app["spec"]["arguments"]
    ]
    conf = dict(w.split("=", 1) for w in command[5:main] if w != "--conf")
    assert conf["spark.driver.memory"] == app["spec"]["driver"]["memory"]
    assert conf["spark.local.dir"] == str((scratch / "spark-local-dir-1").resolve())
    assert conf["spark.jars.ivy"] == str((scratch / "tmp").resolve()) + "/.ivy2"
    assert not [k for k in conf if k.startswith("spark.kubernetes.")]
    env = driver_env(app, python="/venv/bin/python", volumes=volumes, scratch=scratch)
    assert env["PYSPARK_PYTHON"] == env["PYSPARK_DRIVER_PYTHON"] == "/venv/bin/python"
    assert env["TMPDIR"] == str((scratch / "tmp").resolve())
    assert env["HOME"] == str((scratch / "work").resolve())


def test_the_image_ships_the_application_file_where_the_manifest_points():
    dockerfile = (Path(__file__).parents[2] / "components" / "Dockerfile").read_text()
    assert "/opt/metarec/etl_job.py" in dockerfile and "components.etl.job" in dockerfile
    assert _app()["spec"]["mainApplicationFile"] == "local:///opt/metarec/etl_job.py"


@pytest.mark.spark
@pytest.mark.multiprocess  # spark-submit: a second JVM
def test_the_rendered_driver_writes_what_the_local_etl_writes(spark, tmp_path: Path):
    from components.etl import run_etl

    volume = tmp_path / "volume"
    expected = rawdata.corrupted_interval(volume / "raw", "jsonl")
    log = tmp_path / "driver.log"
    code = run_driver_locally(_app(), {"metarec-data": str(volume)}, log_path=log, timeout_s=420)
    assert code == 0, log.read_text()[-4000:]
    (written,) = (volume / "episodes").glob("interval=*/_manifest.json")
    submitted = json.loads(written.read_text())

    config = EtlConfig(input=str(volume / "raw"), output=str(tmp_path / "local"), start=START,
                       end=END, k_support=rawdata.ETL_K, q_query=rawdata.ETL_Q, min_support=2,
                       min_query=2, num_buckets=4, cold_fraction=0.3, valid_fraction=0.2,
                       shuffle_partitions=4)  # fmt: skip
    local = run_etl(config, spark)
    assert Path(local.output).name == written.parent.name
    assert _layout(submitted["files"]) == _layout(local.manifest.files)
    assert submitted["splits"] == local.manifest.splits
    theirs, ours = _files(written.parent), _files(Path(local.output))
    assert sorted(theirs) == sorted(ours) and any(k.startswith("_quarantine/") for k in ours)
    assert all(theirs[k].equals(ours[k]) for k in ours), "the same files hold other rows"
    accounting = submitted["accounting"]
    assert (accounting["rows_read"], accounting["rows_kept"], accounting["rows_quarantined"]) == (
        local.rows_read,
        local.rows_kept,
        local.rows_quarantined,
    )
    assert accounting["rows_read"] == expected["_rows_read"]
    assert accounting["per_reason"] == local.reasons
    assert local.rows_quarantined > 0 and local.rows_kept > 0  # both paths were exercised
