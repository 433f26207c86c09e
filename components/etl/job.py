"""The Meta-IO offline stage as one job: extract -> transform -> load.

Run it any of these ways; the code path is the same:

    metarec etl --input data/raw --output data/episodes --start 2026-11-01T00 --end 2026-11-02T00
    spark-submit components/etl/job.py --input s3://logs/raw --output s3://ml/episodes ...
    python -c "from components.etl import EtlConfig, run_etl; run_etl(EtlConfig(...))"

Under ``spark-submit`` the master and resources come from spark-submit; otherwise the job starts
Spark ``local[*]`` (``--master`` or ``$METAREC_SPARK_MASTER`` to change it).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # Run as a file by spark-submit: make the repository's packages importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dataclasses import dataclass, field
from typing import Any

from components.etl import extract, load, rows, splits
from components.etl.config import EtlConfig, iso
from components.etl.storage_errors import storage_error
from trainer.data.contract import (
    QUARANTINE_DIR,
    SCHEMA_VERSION,
    Manifest,
    content_hash,
)

log = logging.getLogger("components.etl")

JOB_CONF = {
    # The chunk aggregate reads rows already sorted by chunk: aggregate them in that order.
    "spark.sql.execution.replaceHashWithSortAgg": "true",
    # The JVM does not JIT-compile methods over 8000 bytes of bytecode; Spark's default limit
    # lets whole-stage codegen emit bigger ones for the wide parse/encode and episode-building
    # projections, which then run interpreted (measured: 2-3x slower). At 8000, Spark splits them.
    "spark.sql.codegen.hugeMethodLimit": "8000",
}


@dataclass
class EtlResult:
    """What a run wrote and what it cost (also in the manifest, except the timings)."""

    output: str
    """The interval's output folder (local path or URI)."""
    manifest: Manifest
    rows_read: int
    rows_kept: int
    rows_quarantined: int
    reasons: dict[str, int]
    """Quarantined rows per reason code."""
    episodes: dict[str, int]
    """Episodes per split."""
    seconds: float
    """Wall time from listing the input to the manifest in place."""
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        per_split = ", ".join(f"{s} {n}" for s, n in self.episodes.items())
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.reasons.items())) or "none"
        return (
            f"{self.output}: {self.rows_read} rows read -> {self.rows_kept} in episodes "
            f"({per_split}), {self.rows_quarantined} quarantined ({reasons}); "
            f"{self.seconds:.1f} s, {self.rows_per_second:,.0f} rows/s"
        )


# What each stage writes, for the one-line error of a full disk or a refused write.
_DOING = {
    "transform": "caching the transform (Spark's scratch space, spark.local.dir) for",
    "write episodes": "writing the episode files to",
    "write quarantine": "writing the quarantine files to",
    "manifest": "writing the manifest and checksums to",
    "swap": "moving the new version into place at",
}


class _Stages:
    """Wall time per stage, logged as it goes and named in the Spark UI."""

    def __init__(self, spark) -> None:
        self.spark, self.seconds, self._t = spark, {}, None
        self._name: str | None = None

    def start(self, name: str) -> None:
        self.stop()
        self._name, self._t = name, time.monotonic()
        log.info("stage %s ...", name)
        with contextlib.suppress(
            Exception
        ):  # Spark Connect has no SparkContext; the label is optional
            self.spark.sparkContext.setJobDescription(f"metarec etl: {name}")

    @property
    def current(self) -> str | None:
        """The stage running now (None between stages)."""
        return self._name

    def stop(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = round(time.monotonic() - self._t, 3)
            log.info("stage %s done in %.1f s", self._name, self.seconds[self._name])
            self._name = None


def run_etl(config: EtlConfig, spark=None) -> EtlResult:
    """Run the ETL for ``config``'s interval; see the package docstring for the layout.

    Args:
        config: what to read, how to cut episodes, where to write.
        spark: a SparkSession; default :func:`components.etl.session.build_spark`.

    Raises:
        ValueError / FileNotFoundError: bad input (missing partitions, empty interval, corrupt
            Parquet, no episode possible) — the message says what to do. The previous output of
            the interval, if any, is left untouched.
        IntervalBusy: another run of the interval is writing it (``components.etl.lock``).
        StorageError: a full disk or a refused write, in one line naming the path and what was
            being written (``components.etl.storage_errors``); both are ValueErrors.
    """
    from pyspark import StorageLevel
    from pyspark.sql import Observation

    from components.etl import transform as tr
    from components.etl.session import build_spark

    t0 = time.monotonic()
    listing = extract.list_input(config)
    log.info(
        "interval %s: %d %s files (%.1f MB)%s", config.interval_id, len(listing.files), listing.fmt,
        listing.total_bytes / 1e6,
        f", {len(listing.missing_hours)} hours missing" if listing.missing_hours else "",
    )  # fmt: skip
    spark = spark or build_spark("metarec-etl")
    stages = _Stages(spark)
    stages.seconds["list"] = round(time.monotonic() - t0, 3)
    # One writer per interval: a concurrent run of it stops here (IntervalBusy), touching nothing.
    try:
        staging = load.open_staging(config.output, config.interval_id)
    except Exception as e:
        if err := storage_error(e, "creating the staging folder under", config.output):
            raise err from e
        raise
    overrides = {**JOB_CONF, "spark.sql.shuffle.partitions": str(config.shuffle_partitions)}
    previous = {k: spark.conf.get(k, None) for k in overrides}
    frame = None
    try:
        for k, v in overrides.items():
            spark.conf.set(k, v)
        observation = Observation("metarec_etl_rows")
        raw = rows.read_raw(spark, listing)
        # DISK_ONLY: cached blocks in the heap took execution memory from the episode window,
        # whose sorter then spilled in many small files and ran out of heap reading them back
        # (10M rows, 1 GB heap); the cache is read twice, sequentially, so disk costs little.
        frame = tr.transform(raw, listing.fmt, config, observation)
        frame = frame.persist(StorageLevel.DISK_ONLY)
        stages.start("transform")  # computes the transform once, into the cache both writes read
        chunks = frame.count()
        log.info("transform done: %d chunk rows cached", chunks)
        stages.start("write episodes")
        load.write_parquet(
            tr.episodes_of(frame).sortWithinPartitions("split", "bucket", "task_key", "episode"),
            staging.uri,
            config.row_group_bytes,
            partition_by=("split", "bucket"),
            plain_lists=load.PLAIN_LISTS,
        )
        stages.start("write quarantine")
        load.write_parquet(
            tr.quarantine_of(frame).sortWithinPartitions(
                "reason", "source_file", "event_id", "raw"
            ),
            extract.join(staging.uri, QUARANTINE_DIR),
            config.row_group_bytes,
        )
        stages.start("manifest")
        manifest = _finish(spark, staging, config, listing, observation, frame)
        stages.start("swap")
        final = load.swap_into_place(staging)
        stages.stop()
    except BaseException as e:
        doing = _DOING.get(stages.current or "", "writing")
        where = staging.final if stages.current == "swap" else staging.path
        stages.stop()
        load.discard(staging)
        if isinstance(e, Exception) and (err := storage_error(e, doing, where)):
            raise err from e  # one line naming the path, not the JVM's stack
        raise
    finally:
        staging.release()
        if frame is not None:
            frame.unpersist()
        for k, v in previous.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)
    acc = manifest.accounting
    result = EtlResult(
        output=final
        if "://" not in config.output
        else config.output.rstrip("/") + "/" + config.interval_id,
        manifest=manifest,
        rows_read=acc["rows_read"],
        rows_kept=acc["rows_kept"],
        rows_quarantined=acc["rows_quarantined"],
        reasons=dict(acc["per_reason"]),
        episodes={s: counts["episodes"] for s, counts in manifest.splits.items()},
        seconds=round(time.monotonic() - t0, 3),
        stage_seconds=stages.seconds,
    )
    log.info("%s", result.summary())
    return result


def _observed(observation, rows_written: int) -> dict[str, int]:
    """Rows read and blank lines, as Spark observed them while reading.

    When nothing at all reached the shuffle, Spark's adaptive execution drops the (empty) read
    stage from the final plan and the observation with it; rows read is then 0 by definition.
    """
    try:
        return {k: int(v) for k, v in observation.get.items()}
    except Exception:
        if rows_written:
            raise
        return {"rows_read": 0, "blank_lines": 0}


def _check_not_empty(
    config: EtlConfig, listing, frame, rows_read: int, episodes: int, reasons
) -> None:
    from pyspark.sql import functions as F

    if rows_read == 0:
        raise ValueError(
            f"{config.input}: the interval [{config.start:%Y-%m-%dT%H}, {config.end:%Y-%m-%dT%H}) "
            f"is empty: its {len(listing.files)} {listing.fmt} files hold no rows"
        )
    if episodes == 0:
        largest = frame.agg(F.max(F.when(F.col("_ok"), F.col("_task_rows")))).collect()[0][0]
        quarantined = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
        need = config.min_support + config.min_query
        raise ValueError(
            f"no episode could be formed from the {rows_read} rows of {config.interval_id} "
            f"(quarantined: {quarantined}). The largest task ({config.task_key}) has "
            f"{largest or 0} valid rows; an episode needs at least min_support + "
            f"min_query = {need} (K={config.k_support}, Q={config.q_query}). Lower --k/--q and "
            "--min-support/--min-query, pick another --task-key, or process a longer interval."
        )


def _finish(spark, staging, config: EtlConfig, listing, observation, frame) -> Manifest:
    """Tidy the written files, count what they hold, check the accounting, write the manifest."""
    import pyarrow as pa

    from components.etl.transform import hash_contract as hash_contract_of

    episode_files = load.describe_files(
        staging, load.tidy(staging, "", one_per_folder=True), hash_rows=True
    )
    quarantine_files = load.describe_files(
        staging, load.tidy(staging, QUARANTINE_DIR, one_per_folder=False)
    )
    counted = load.episode_stats(staging, episode_files, config.k_support)
    reasons = load.quarantine_reasons(staging, quarantine_files)
    episodes = sum(s["episodes"] for s in counted["splits"].values())
    kept = sum(s["samples"] for s in counted["splits"].values())
    quarantined = sum(f.rows for f in quarantine_files)
    metrics = _observed(observation, kept + quarantined)
    rows_read, blank = metrics["rows_read"], metrics["blank_lines"]
    _check_not_empty(config, listing, frame, rows_read, episodes, reasons)
    # The accounting invariant, on what is on disk: every row read is in an episode file or in
    # the quarantine files, exactly once.
    problems = []
    if rows_read != kept + quarantined:
        problems.append(f"rows read {rows_read} != kept {kept} + quarantined {quarantined}")
    if sum(reasons.values()) != quarantined:
        problems.append("per-reason counts do not add up to the quarantined rows")
    if sum(f.rows for f in episode_files) != episodes:
        problems.append("episode file footers disagree with their rows")
    if listing.parquet_rows is not None and listing.parquet_rows != rows_read:
        problems.append(
            f"Parquet footers count {listing.parquet_rows} rows, Spark read {rows_read}"
        )
    if problems:
        raise AssertionError("ETL accounting failed (a bug, please report): " + "; ".join(problems))
    stats = {"reasons": reasons, "splits": counted["splits"], "min_t": counted["min_t"],
             "max_t": counted["max_t"]}  # fmt: skip

    load.write_json(staging, f"{QUARANTINE_DIR}/{load.REASONS_NAME}", stats["reasons"])
    hash_contract = hash_contract_of(config.num_buckets)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        interval={"id": config.interval_id, "start": iso(config.start), "end": iso(config.end)},
        task_key=config.task_key,
        k_support=config.k_support,
        q_query=config.q_query,
        min_support=config.min_support,
        min_query=config.min_query,
        hash=hash_contract,
        features=config.feature_specs(),
        dense_features=config.dense_specs(),
        splits=stats["splits"],
        files=[f.entry() for f in episode_files],
        content_hash=content_hash([f.entry() for f in episode_files]),
        time_range=_time_range(stats),
        accounting={
            "rows_read": rows_read,
            "rows_kept": kept,
            "rows_quarantined": quarantined,
            "per_reason": reasons,
            "blank_lines_skipped": blank,
            "input": {
                "uri": listing.uri,
                "format": listing.fmt,
                "files": len(listing.files),
                "bytes": listing.total_bytes,
                "missing_hours": listing.missing_hours,
                "ignored_files": listing.ignored_files,
            },
            "quarantine": {"dir": QUARANTINE_DIR, "files": [f.entry() for f in quarantine_files]},
        },
        split_rule=splits.describe_rule(config, splits.read_cold_tasks(config.cold_tasks)),
        producer={
            "name": "components.etl",
            "metarec": _version(),
            "spark": spark.version,
            "pyarrow": pa.__version__,
            "config": config.describe(),
        },
    )
    load.write_json(staging, "_manifest.json", manifest.to_json())
    return manifest


def _time_range(stats: dict[str, Any]) -> dict[str, str]:
    from datetime import UTC, datetime

    if stats["min_t"] is None:
        return {}
    lo, hi = int(stats["min_t"]), int(stats["max_t"])
    return {
        "min_event_time": iso(datetime.fromtimestamp(lo / 1000, UTC)),
        "max_event_time": iso(datetime.fromtimestamp(hi / 1000, UTC)),
        "min_event_time_ms": str(lo),
        "max_event_time_ms": str(hi),
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metarec")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``spark-submit components/etl/job.py ...``: ``metarec etl`` with the same
    options (the command line lives in ``components/etl/command.py``, which imports this module)."""
    from components.cli import main as metarec

    return metarec(["etl", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
