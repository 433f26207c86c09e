"""Finding and reading what the suites check: raw partitions, episode files, the previous interval.

Everything goes through ``pyarrow.fs`` (local paths, ``file://``, ``s3://``, ``hdfs://`` ...):
listing, footers and the episode files themselves (read with pyarrow, one file at a time); raw
logs are read by Spark. Errors that make a suite impossible to
run (no manifest, no files, unreadable Parquet) raise :class:`DataUnavailableError`, which the CLI
turns into exit code 2 with the message; problems *in* the data are left to the suites.

Raw partitions are listed by the ETL's own extract step (``components.etl.extract.list_input``:
the same rules for which files count, format detection and Parquet footer checks) and read by
:func:`read_raw` alone. It does not reuse the ETL's parsing: the suite needs the values as the
producer wrote them (nulls, wrong types, NaN), not the ETL's verdict on them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from components.raw_schema import RAW_FIELDS
from trainer.data.contract import (
    EPISODE_COLUMNS,
    MANIFEST_NAME,
    ContractError,
    Manifest,
    load_manifest,
)
from trainer.data.schema import check_episode_schema

_SPLIT_DIR = re.compile(r"(?:^|/)split=([^/]+)/")


class DataUnavailableError(ValueError):
    """The data to validate cannot be found or read, so no verdict is possible (exit code 2)."""


def filesystem(uri: str):
    """``(pyarrow FileSystem, path)``: the ETL's resolution (local paths made absolute, ``file://``)."""
    from components.etl.extract import filesystem as etl_filesystem

    return etl_filesystem(str(uri))


def _hidden(rel: str) -> bool:
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


@dataclass
class EpisodeFiles:
    """The Parquet files of an ETL output as found on storage, and what their footers say."""

    root: str
    paths: list[str]
    """Relative paths (``split=train/bucket=00000/part-00000.parquet``), sorted."""
    rows: dict[str, int] = field(default_factory=dict)
    schema_problems: list[str] = field(default_factory=list)
    layout_problems: list[str] = field(default_factory=list)

    def full_path(self, rel: str) -> str:
        return self.root.rstrip("/") + "/" + rel


def list_episode_files(root: str) -> EpisodeFiles:
    """List ``root``'s data files (underscore/dot paths skipped) and check each footer's schema.

    Raises:
        DataUnavailableError: ``root`` does not exist, holds no Parquet file, or a footer is
            unreadable (a corrupt file: named in the message).
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, base = filesystem(root)
    info = fs.get_file_info(base)
    if info.type != pafs.FileType.Directory:
        raise DataUnavailableError(f"{root}: no such directory — pass an ETL output directory")
    selector = pafs.FileSelector(base, recursive=True)
    rels = sorted(
        i.path[len(base.rstrip("/")) + 1 :]
        for i in fs.get_file_info(selector)
        if i.type == pafs.FileType.File
    )
    rels = [r for r in rels if not _hidden(r)]
    found = EpisodeFiles(root=root, paths=[r for r in rels if r.endswith(".parquet")])
    found.layout_problems += [
        f"{r}: not a .parquet file" for r in rels if not r.endswith(".parquet")
    ]
    if not found.paths:
        raise DataUnavailableError(f"{root}: no episode Parquet files under split=*/bucket=*/")
    for rel in found.paths:
        if not _SPLIT_DIR.search(rel):
            found.layout_problems.append(f"{rel}: not under a split=<name>/ directory")
        try:
            with fs.open_input_file(base.rstrip("/") + "/" + rel) as f:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for corrupt footers
            raise DataUnavailableError(
                f"{root}/{rel}: unreadable Parquet file ({e}); rerun the ETL for this interval"
            ) from e
        found.rows[rel] = meta.num_rows
        try:  # the reader's own rule, so the gate and the trainer agree on what is readable
            check_episode_schema(schema, EPISODE_COLUMNS, where=rel)
        except ContractError as e:
            found.schema_problems.append(str(e))
    return found


def load_episode_manifest(root: str) -> tuple[Manifest, dict[str, Any]]:
    """The manifest as a :class:`Manifest` and as the raw dict (kept verbatim for the rewrite).

    Raises:
        ContractError: missing/unreadable manifest or another schema version (exit code 2).
    """
    manifest = load_manifest(root)
    fs, base = filesystem(root)
    with fs.open_input_stream(base.rstrip("/") + "/" + MANIFEST_NAME) as f:
        return manifest, json.loads(f.read())


BATCH_EPISODES = 4096
"""Episodes per batch read: bounds the profile's memory whatever a file's size."""


def read_episode_files(files: EpisodeFiles) -> Iterator[tuple[str, Any]]:
    """``(split, pyarrow Table)`` per batch of at most :data:`BATCH_EPISODES` episodes of each
    file of ``files``, file after file (the contract's columns; the split from the ``split=``
    folder).

    Raises:
        DataUnavailableError: a file cannot be read (named in the message).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, base = filesystem(files.root)
    for rel in files.paths:
        match = _SPLIT_DIR.search(rel)
        split = match.group(1) if match else ""
        try:
            with fs.open_input_file(base.rstrip("/") + "/" + rel) as f:
                batches = pq.ParquetFile(f).iter_batches(
                    batch_size=BATCH_EPISODES, columns=list(EPISODE_COLUMNS)
                )
                for batch in batches:
                    yield split, pa.Table.from_batches([batch])
        except (OSError, pa.ArrowException) as e:  # corrupt pages, a vanished file
            raise DataUnavailableError(
                f"{files.root}/{rel}: unreadable Parquet file ({e}); rerun the ETL for this interval"
            ) from e


def interval_bounds(manifest: Manifest) -> tuple[dt.datetime, dt.datetime] | None:
    """``(start, end)`` of the manifest's interval, or None if it does not say (UTC datetimes)."""
    iv = manifest.interval or {}
    try:
        return parse_time(iv["start"]), parse_time(iv["end"])
    except (KeyError, TypeError, ValueError):
        return None


def parse_time(text: str) -> dt.datetime:
    """Parse ``2026-11-01T00``, ``2026-11-01T00:00``, ``...Z`` or with an offset; naive = UTC."""
    text = str(text).strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}", text):
        text += ":00"
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def find_previous_episodes(root: str) -> str | None:
    """The sibling ETL output of an equally long interval that ends where ``root``'s starts (None
    if there is none): an episode count is compared with one of the same span, as raw rows are
    (a 12-hour base period is not the previous interval of the hour after it)."""
    import pyarrow.fs as pafs

    manifest = load_manifest(root)
    bounds = interval_bounds(manifest)
    if bounds is None:
        return None
    fs, base = filesystem(root)
    base = base.rstrip("/")
    parent = base.rsplit("/", 1)[0] if "/" in base else "."
    prefix = root[: len(root) - len(base)] if "://" in root else ""
    candidates = []
    for info in fs.get_file_info(pafs.FileSelector(parent)):
        if info.type != pafs.FileType.Directory or info.path.rstrip("/") == base:
            continue
        if info.base_name.startswith(("_", ".")):
            continue
        try:
            other = load_manifest(prefix + info.path)
        except ValueError:  # not an ETL output (or incomplete): not a candidate
            continue
        ob = interval_bounds(other)
        same_length = ob is not None and ob[1] - ob[0] == bounds[1] - bounds[0]
        if same_length and ob[1] == bounds[0] and other.task_key == manifest.task_key:
            candidates.append(prefix + info.path)
    return sorted(candidates)[-1] if candidates else None


def episode_total(manifest: Manifest) -> int:
    """Episodes of all splits according to the manifest."""
    return sum(int(c.get("episodes", 0)) for c in manifest.splits.values())


# ---------------------------------------------------------------------------------------------
# Raw logs


def list_raw_partitions(uri: str, start: dt.datetime, end: dt.datetime, fmt: str = "auto"):
    """The interval's raw data files, listed by the ETL's own extract step (same rules: which
    files count, format detection, Parquet footer checks), missing hours reported, not raised.

    Returns:
        ``components.etl.extract.InputListing`` (``files``, ``fmt``, ``missing_hours`` ...).

    Raises:
        FileNotFoundError: no such input root. ValueError: a bad interval, mixed formats, an
            interval with no data, or corrupt/wrongly typed Parquet files (named in the message).
    """
    from components.etl.config import EtlConfig
    from components.etl.extract import list_input

    # list_input reads only the input side of the config; the output root is never touched.
    config = EtlConfig(
        input=uri, output=uri, start=start, end=end, input_format=fmt, allow_missing=True
    )
    return list_input(config)


def raw_string_schema():
    """The raw schema as Spark reads JSONL: every scalar a string, lists of strings, plus
    ``_corrupt_record``; wrong types are then detected per field, not per record."""
    from pyspark.sql import types as T

    fields = [
        T.StructField(
            f.name, T.ArrayType(T.StringType()) if f.kind == "multi" else T.StringType(), True
        )
        for f in RAW_FIELDS
    ]
    return T.StructType([*fields, T.StructField("_corrupt_record", T.StringType(), True)])


def read_raw(spark, listing):
    """Read the listed raw files as ``(DataFrame, present_columns)``; the one place raw data is read.

    JSONL(.gz): the string schema, PERMISSIVE, with ``_corrupt_record`` (one line = one row, as in
    the ETL). Parquet: as written, so a column the files lack is seen (it becomes nulls and is
    missing from ``present_columns``); JSONL carries no schema, so all columns count as present.

    Raises:
        DataUnavailableError: Spark cannot read the files.
    """
    from pyspark.sql import functions as F

    names = [f.name for f in RAW_FIELDS]
    try:
        if listing.fmt == "parquet":
            df = spark.read.parquet(*listing.spark_paths())
            present = [c for c in names if c in df.columns]
            df = df.select(
                *(F.col(c) if c in present else F.lit(None).alias(c) for c in names),
                F.lit(None).cast("string").alias("_corrupt_record"),
            )
        else:
            df = (
                spark.read.schema(raw_string_schema())
                .option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", "_corrupt_record")
                .json(listing.spark_paths())
            )
            present = names
    except Exception as e:
        raise DataUnavailableError(f"{listing.uri}: cannot read the raw files: {e}") from e
    return df, present
