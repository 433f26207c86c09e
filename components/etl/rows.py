"""Transform, part 1: parse and validate raw rows, giving each bad row ONE reason code.

Both input formats become the same *canonical* frame: the raw columns typed (ids and
categoricals as strings, lists of strings, dense as double, labels as double, and the event time
as epoch milliseconds ``_t``), plus

    _reason       null for a good row, else the first failing rule (below)
    _raw          the original JSONL line (null for Parquet: rendered on demand, see render_raw)
    _hour, _file  the row's partition hour (hours since the epoch) and file name: its source
                  file ``dt=YYYY-MM-DD/hr=HH/<file>`` (see :func:`source_file`), kept in this
                  compact form because every row carries it through the shuffle

JSONL is read, split into lines and parsed by :mod:`components.raw_records`, THE raw-record
parser, which the scorer uses too: one definition of lines, blank lines, record rules, reason
codes and canonical values (its docstring lists them: line rules such as ``malformed_record``,
``multiple_objects``, ``line_too_long``; then ``missing:<field>``, ``bad_type:<field>`` /
``field_too_long:<field>``, ``bad_value:<field>``). It runs inside Spark through ``mapInArrow``
over the list of files (:func:`read_jsonl`): Python reads each file, so a line longer than
``raw_records.MAX_LINE_BYTES`` is cut while reading and never reaches the JVM whole. Parquet
rows are typed already: :func:`parse_parquet` applies ``missing:<field>`` and
:func:`validate_rows` the value rules, with the same codes. Then, for both formats:

5. ``event_time_out_of_range``  before ``partition hour - max_lateness``, at or after the end of
   the partition hour, or outside the interval ``[start, end)``.

Later rules (``duplicate_event_id``, ``task_too_small``, ``episode_too_small``,
``episode_tie_overflow``) are interval-level; see :mod:`components.etl.episodes` and
:mod:`components.etl.dedup`. Unknown JSON keys are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from components.raw_schema import RAW_FIELDS, fields_of

if TYPE_CHECKING:
    from components.etl.extract import InputListing

OUT_OF_RANGE = "event_time_out_of_range"
CORRUPT_COL = "_corrupt_record"

# Columns of the canonical frame, in order (``event_time`` is carried as ``_t``, epoch ms).
DATA_COLUMNS = tuple("_t" if f.name == "event_time" else f.name for f in RAW_FIELDS)
META_COLUMNS = ("_reason", "_raw", "_hour", "_file")


def jsonl_read_schema():
    """Every scalar as a string and lists as arrays of strings: Spark's own JSON reading of the
    raw schema (the ETL benchmark's parse-only baseline; the ETL parses with ``raw_records``)."""
    from pyspark.sql import types as T

    fields = [
        T.StructField(f.name, T.ArrayType(T.StringType()) if f.kind == "multi" else T.StringType())
        for f in RAW_FIELDS
    ]
    return T.StructType([*fields, T.StructField(CORRUPT_COL, T.StringType())])


def parsed_schema():
    """The Spark schema of :func:`read_jsonl`'s rows: the canonical frame plus ``_blank``."""
    from pyspark.sql import types as T

    types = {"id": T.StringType(), "categorical": T.StringType(), "time": T.LongType(),
             "multi": T.ArrayType(T.StringType()), "dense": T.DoubleType(),
             "label": T.DoubleType()}  # fmt: skip
    fields = [
        T.StructField(c, types[f.kind]) for c, f in zip(DATA_COLUMNS, RAW_FIELDS, strict=True)
    ]
    meta = [("_reason", T.StringType()), ("_raw", T.StringType()), ("_hour", T.IntegerType()),
            ("_file", T.StringType()), ("_blank", T.BooleanType())]  # fmt: skip
    return T.StructType(fields + [T.StructField(n, t) for n, t in meta])


def _arrow_batch(parsed, hour: int, name: str):
    """One ``pyarrow.RecordBatch`` of :func:`parsed_schema` from a ``raw_records.ParsedBatch``:
    its rows, then one row per blank line (``_blank``; counted, then dropped)."""
    import pyarrow as pa

    n, blank = len(parsed), len(parsed.blank_lines)
    columns = {}
    for c, col in parsed.columns.items():
        if c != "_reason_unlabelled":
            columns[c] = pa.concat_arrays([col, pa.nulls(blank, col.type)]) if blank else col
    # The line travels only with a row that a rule may reject: a parse reason, or a time outside
    # its partition hour (the time rule's only way to fail; see validate_rows). The others lose
    # ``_raw`` in ``transform.compact`` anyway: not shipping them halves the bytes sent to the JVM.
    start = hour * 3_600_000
    keep = [r is not None or t is None or not start <= t < start + 3_600_000
            for r, t in zip(parsed.columns["_reason"].to_pylist(),
                            parsed.columns["_t"].to_pylist(), strict=True)]  # fmt: skip
    raw = [text if k else None for text, k in zip(parsed.raw, keep, strict=True)]
    columns["_raw"] = pa.array(raw + [None] * blank, pa.string())
    columns["_hour"] = pa.array([hour] * (n + blank), pa.int32())
    columns["_file"] = pa.array([name] * (n + blank), pa.string())
    columns["_blank"] = pa.array([False] * n + [True] * blank, pa.bool_())
    return pa.RecordBatch.from_pydict(columns)


def _file_reader(root: str, batch_rows: int):
    """The ``mapInArrow`` function: rows ``(path, _hour, _file)`` in, parsed lines out."""

    def read(batches):
        import pyarrow as pa

        from components.etl.extract import filesystem, join
        from components.raw_records import DamagedFileError, parse_stream

        fs, base = filesystem(root)
        for files in batches:
            for rel, hour, name in zip(
                *(files.column(i).to_pylist() for i in range(3)), strict=True
            ):
                with fs.open_input_file(join(base, rel)) as raw:
                    gz = rel.endswith(".gz")
                    stream = pa.CompressedInputStream(raw, "gzip") if gz else raw
                    try:
                        for parsed in parse_stream(stream, batch_rows):
                            yield _arrow_batch(parsed, hour, name)
                    except DamagedFileError as e:
                        raise ValueError(
                            f"{join(root, rel)}: {e}. The interval cannot be counted row by row: "
                            "repair or remove this file and rerun the interval"
                        ) from None

    return read


def read_jsonl(spark, root: str, files: list[str], batch_rows: int = 8192):
    """Read and parse JSONL files (paths relative to ``root``, ``dt=YYYY-MM-DD/hr=HH/<name>``):
    one row per line, the canonical frame (module docstring) plus ``_blank`` (a blank line: a
    row only so that it can be counted). One Spark task per file.

    Raises (when the job runs):
        ValueError: a file cannot be read to its end (truncated gzip, I/O error), naming it.
    """
    from datetime import date

    from pyspark.sql import types as T

    rows = []
    for rel in files:
        dt, hr, name = rel.split("/", 2)
        day = date.fromisoformat(dt.removeprefix("dt=")).toordinal() - date(1970, 1, 1).toordinal()
        rows.append((rel, day * 24 + int(hr.removeprefix("hr=")), name))
    schema = T.StructType([T.StructField("path", T.StringType()),
                           T.StructField("_hour", T.IntegerType()),
                           T.StructField("_file", T.StringType())])  # fmt: skip
    listing = spark.createDataFrame(spark.sparkContext.parallelize(rows, max(len(rows), 1)), schema)
    return listing.mapInArrow(_file_reader(root, batch_rows), parsed_schema())


def _meta():
    """``_hour`` (epoch hour of the partition) and ``_file``, from the partition columns."""
    from pyspark.sql import functions as F

    return (F.unix_date("dt") * 24 + F.col("hr")).cast("int"), F.col("_file")


def source_file(hour="_hour", file="_file"):
    """Column: the source file relative to the input root, ``dt=YYYY-MM-DD/hr=HH/<file>``."""
    from pyspark.sql import functions as F

    hour = F.col(hour) if isinstance(hour, str) else hour
    file = F.col(file) if isinstance(file, str) else file
    stamp = F.timestamp_seconds(hour.cast("long") * 3600)
    return F.concat(F.date_format(stamp, "'dt='yyyy-MM-dd'/hr='HH'/'"), file)


def _first_missing(missing: dict):
    """One CASE expression: ``missing:<field>`` of the first field missing, in schema order."""
    from pyspark.sql import functions as F

    expr = None
    for name, cond in missing.items():
        reason = F.lit(f"missing:{name}")
        expr = F.when(cond, reason) if expr is None else expr.when(cond, reason)
    return expr


def _blank(c):
    return c.isNull() | (c == "")


def parquet_columns() -> dict:
    """The canonical frame as expressions over the raw Parquet columns (:func:`read_raw`), in
    canonical order: the typed values, ``_reason`` (``missing:<field>``, the only parse reason),
    ``_raw`` (null: rendered on demand) and ``_meta``'s ``_hour`` and ``_file``."""
    from pyspark.sql import functions as F

    columns = {}
    for f in RAW_FIELDS:
        c = F.col(f.name)
        if f.kind == "time":
            columns["_t"] = F.unix_millis(c)
        elif f.kind in ("dense", "label"):
            columns[f.name] = c.cast("double")
        else:
            columns[f.name] = c
    missing = {
        f.name: (
            _blank(F.col(f.name)) if f.kind in ("id", "categorical") else F.col(f.name).isNull()
        )
        for f in RAW_FIELDS
        if f.required
    }
    columns["_reason"] = _first_missing(missing)
    columns["_raw"] = F.lit(None).cast("string")
    columns["_hour"], columns["_file"] = _meta()
    return columns


def columns_of(df) -> dict:
    """``{name: column}`` for every column of ``df``: a frame as :func:`parquet_columns` gives it."""
    from pyspark.sql import functions as F

    return {name: F.col(name) for name in df.columns}


def parse_parquet(df):
    """Typed Parquet rows -> canonical frame; the only parse reason is ``missing:<field>``."""
    return df.select(*[c.alias(name) for name, c in parquet_columns().items()])


def validate_rows(df, start_ms: int, end_ms: int, max_lateness_ms: int):
    """Add the value and time rules to ``_reason`` (rows that already failed keep their reason)."""
    reason = validated_reason(columns_of(df), start_ms, end_ms, max_lateness_ms)
    return df.withColumn("_reason", reason)


def validated_reason(columns: dict, start_ms: int, end_ms: int, max_lateness_ms: int):
    """Column: ``columns["_reason"]``, else the first value or time rule that fails.

    Args:
        columns: the canonical frame as ``{name: column}`` (:func:`parquet_columns`,
            :func:`columns_of`).
    """
    from pyspark.sql import functions as F

    expr = None
    for f in fields_of("dense", "label"):
        c = columns[f.name]
        if f.kind == "dense":
            bad = F.isnan(c) | (F.abs(c) == float("inf"))
            if f.min_value is not None:
                bad = bad | (c < f.min_value)
            if f.max_value is not None:
                bad = bad | (c > f.max_value)
        else:
            bad = ~c.isin(0.0, 1.0)
        bad = c.isNotNull() & bad
        reason = F.lit(f"bad_value:{f.name}")
        expr = F.when(bad, reason) if expr is None else expr.when(bad, reason)
    t, hour = columns["_t"], columns["_hour"].cast("long") * 3_600_000
    late = (t < hour - max_lateness_ms) | (t >= hour + 3_600_000) | (t < start_ms) | (t >= end_ms)
    expr = expr.when(late, F.lit(OUT_OF_RANGE))
    return F.coalesce(columns["_reason"], expr)


def render_raw(columns: dict | None = None):
    """A JSON rendering of a canonical row (for quarantine rows that have no original line).

    Args:
        columns: the canonical frame as ``{name: column}``; default: the frame's own columns.
    """
    from pyspark.sql import functions as F

    def col(name: str):
        return F.col(name) if columns is None else columns[name]

    parts = []
    for f in RAW_FIELDS:
        if f.kind == "time":
            parts.append(F.timestamp_millis(col("_t")).alias(f.name))
        elif f.kind == "label":
            parts.append(col(f.name).cast("int").alias(f.name))
        else:
            parts.append(col(f.name).alias(f.name))
    return F.to_json(F.struct(*parts))


def read_raw(spark, listing: InputListing):
    """Read the listed files; one row per JSONL line or Parquet row.

    JSONL is read AND parsed by :func:`read_jsonl` (the raw-record parser
    the scorer shares; Python reads the files, so an overlong line never reaches the JVM whole):
    the canonical frame plus ``_blank``. Parquet: the raw columns typed by
    :func:`components.raw_schema.arrow_schema`, plus ``dt`` (date) and ``hr`` (int) from the
    partition folder and ``_file`` (the file name), parsed by :func:`parse_parquet`.
    """
    import os

    from pyspark.sql import functions as F

    from components.etl.extract import spark_uri

    if listing.fmt != "parquet":
        root = listing.uri if "://" in listing.uri else os.path.abspath(listing.uri)
        return read_jsonl(spark, root, listing.files)
    reader = spark.read.option("basePath", spark_uri(listing.uri))
    df = reader.schema(spark_raw_schema()).parquet(*listing.spark_paths())
    return df.withColumn("_file", F.col("_metadata.file_name"))


def spark_raw_schema():
    """The raw schema as Spark types (Parquet input)."""
    from pyspark.sql import types as T

    types = {
        "id": T.StringType(),
        "categorical": T.StringType(),
        "time": T.TimestampType(),
        "multi": T.ArrayType(T.StringType()),
        "dense": T.DoubleType(),
        "label": T.ByteType(),
    }
    return T.StructType([T.StructField(f.name, types[f.kind], True) for f in RAW_FIELDS])
