"""Transform, part 1: parse and validate raw rows, giving each bad row ONE reason code.

Both input formats become the same *canonical* frame: the raw columns typed (ids and
categoricals as strings, lists of strings, dense as double, labels as double, and the event time
as epoch milliseconds ``_t``), plus

    _reason       null for a good row, else the first failing rule (below)
    _raw          the original JSONL line (null for Parquet: rendered on demand, see render_raw)
    _hour, _file  the row's partition hour (hours since the epoch) and file name: its source
                  file ``dt=YYYY-MM-DD/hr=HH/<file>`` (see :func:`source_file`), kept in this
                  compact form because every row carries it through the shuffle

Reason codes, in the order the rules are applied (the first that fails wins; within a rule,
fields in raw-schema order):

1. ``malformed_record``   the line is not a JSON object (garbage, truncated, a bare array...);
2. ``missing:<field>``    a required field is absent, null or an empty string;
3. ``bad_type:<field>``   present but not of its type: a label or dense value that is not a
   number (``"yes"``, ``"abc"``, ``true``), an event_time that is not an ISO-8601 time
   (``"yesterday"``, an epoch number), a list field that is not a JSON array. Ids and
   categoricals accept any JSON scalar and are read as its text (``123`` -> ``"123"``);
   dense values and labels accept numbers and numeric strings;
4. ``bad_value:<field>``  a number outside its domain: NaN, +-inf, outside the raw schema's
   [min, max] (bid_price < 0, user_hist_ctr > 1) for dense fields, not 0/1 for labels;
5. ``event_time_out_of_range``  before ``partition hour - max_lateness``, at or after the end of
   the partition hour, or outside the interval ``[start, end)``.

Later rules (``duplicate_event_id``, ``task_too_small``, ``episode_too_small``,
``episode_tie_overflow``) are interval-level; see :mod:`components.etl.episodes` and
:mod:`components.etl.dedup`. Unknown JSON keys are ignored. Every function here is a pure
DataFrame -> DataFrame transformation built from Spark expressions (no Python UDFs).
"""

from __future__ import annotations

from components.raw_schema import RAW_FIELDS, fields_of

MALFORMED = "malformed_record"
OUT_OF_RANGE = "event_time_out_of_range"
CORRUPT_COL = "_corrupt_record"
ISO_8601 = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
"""Accepted event_time text: date, time to the minute at least, optional fraction and zone (none = UTC)."""

# Columns of the canonical frame, in order (``event_time`` is carried as ``_t``, epoch ms).
DATA_COLUMNS = tuple("_t" if f.name == "event_time" else f.name for f in RAW_FIELDS)
META_COLUMNS = ("_reason", "_raw", "_hour", "_file")


def jsonl_read_schema():
    """Every scalar as a string and lists as arrays of strings, so wrong types are seen per field."""
    from pyspark.sql import types as T

    fields = [
        T.StructField(f.name, T.ArrayType(T.StringType()) if f.kind == "multi" else T.StringType())
        for f in RAW_FIELDS
    ]
    return T.StructType([*fields, T.StructField(CORRUPT_COL, T.StringType())])


def _string_schema():
    """Like :func:`jsonl_read_schema` but lists as strings too: tells a bad list from bad JSON."""
    from pyspark.sql import types as T

    return T.StructType([T.StructField(f.name, T.StringType()) for f in fields_of("multi")])


def _meta(df):
    """``_hour`` (epoch hour of the partition) and ``_file``, from the partition columns."""
    from pyspark.sql import functions as F

    hour = (F.unix_date("dt") * 24 + F.col("hr")).cast("int")
    return hour.alias("_hour"), F.col("_file")


def source_file(hour="_hour", file="_file"):
    """Column: the source file relative to the input root, ``dt=YYYY-MM-DD/hr=HH/<file>``."""
    from pyspark.sql import functions as F

    hour = F.col(hour) if isinstance(hour, str) else hour
    file = F.col(file) if isinstance(file, str) else file
    stamp = F.timestamp_seconds(hour.cast("long") * 3600)
    return F.concat(F.date_format(stamp, "'dt='yyyy-MM-dd'/hr='HH'/'"), file)


def _first_reason(malformed, missing: dict, bad_type: dict):
    """One CASE expression: the first rule that fails, fields in schema order."""
    from pyspark.sql import functions as F

    expr = F.when(malformed, F.lit(MALFORMED))
    for name, cond in missing.items():
        expr = expr.when(cond, F.lit(f"missing:{name}"))
    for name, cond in bad_type.items():
        expr = expr.when(cond, F.lit(f"bad_type:{name}"))
    return expr


def _blank(c):
    return c.isNull() | (c == "")


def parse_jsonl(df):
    """JSONL lines (``value``, ``dt``, ``hr``, ``_file``) -> canonical frame with parse reasons.

    Blank lines are not rows (filter them first, see :func:`drop_blank_lines`).
    """
    from pyspark.sql import functions as F

    opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_COL}
    j = F.from_json("value", jsonl_read_schema(), opts)
    df = df.select("value", "dt", "hr", "_file", j.alias("j"))
    # A bad list value makes Spark flag the whole record (keeping the other fields); re-parse only
    # those rows with lists as text to tell "not a JSON object" from "a list that is not a list".
    corrupt = F.col(f"j.{CORRUPT_COL}").isNotNull()
    relaxed = F.when(corrupt, F.from_json("value", _string_schema(), {"mode": "PERMISSIVE"}))
    df = df.withColumn("_relaxed", relaxed)
    multi = [f.name for f in fields_of("multi")]
    bad_list = {
        m: corrupt & F.col(f"_relaxed.{m}").isNotNull() & F.col(f"j.{m}").isNull() for m in multi
    }
    any_bad_list = F.lit(False)
    for cond in bad_list.values():
        any_bad_list = any_bad_list | cond
    malformed = corrupt & ~any_bad_list

    def s(name):  # raw text of a scalar field
        return F.col(f"j.{name}")

    def num(name):  # JSON NaN/Infinity arrive quoted ('"NaN"'): strip the quotes first
        return F.btrim(s(name), F.lit('"')).try_cast("double")

    time_text = s("event_time")
    t = F.when(time_text.rlike(ISO_8601), F.unix_millis(time_text.try_cast("timestamp")))
    typed = {"event_time": t}
    for f in fields_of("dense", "label"):
        typed[f.name] = num(f.name)
    missing = {
        f.name: (_blank(s(f.name)) if f.kind != "multi" else s(f.name).isNull())
        for f in RAW_FIELDS
        if f.required
    }
    bad_type = {}
    for f in RAW_FIELDS:
        if f.name in typed:
            bad_type[f.name] = s(f.name).isNotNull() & typed[f.name].isNull()
        elif f.kind == "multi":
            bad_type[f.name] = bad_list[f.name]
    columns = []
    for f in RAW_FIELDS:
        if f.name == "event_time":
            columns.append(t.alias("_t"))
        elif f.name in typed:
            columns.append(typed[f.name].alias(f.name))
        else:
            columns.append(s(f.name).alias(f.name))
    return df.select(
        *columns,
        _first_reason(malformed, missing, bad_type).alias("_reason"),
        F.col("value").alias("_raw"),
        *_meta(df),
    )


def is_blank_line():
    """Column: the JSONL line is empty or only JSON whitespace (``raw_schema.JSON_WHITESPACE``)."""
    from pyspark.sql import functions as F

    return F.col("value").rlike("^[ \\t\\r\\n]*$")


def drop_blank_lines(df):
    """Blank JSONL lines (:func:`is_blank_line`) carry no record: they are not rows."""
    return df.where(~is_blank_line())


def parse_parquet(df):
    """Typed Parquet rows -> canonical frame; the only parse reason is ``missing:<field>``."""
    from pyspark.sql import functions as F

    columns = []
    for f in RAW_FIELDS:
        c = F.col(f.name)
        if f.kind == "time":
            columns.append(F.unix_millis(c).alias("_t"))
        elif f.kind in ("dense", "label"):
            columns.append(c.cast("double").alias(f.name))
        else:
            columns.append(c.alias(f.name))
    missing = {
        f.name: (
            _blank(F.col(f.name)) if f.kind in ("id", "categorical") else F.col(f.name).isNull()
        )
        for f in RAW_FIELDS
        if f.required
    }
    return df.select(
        *columns,
        _first_reason(F.lit(False), missing, {}).alias("_reason"),
        F.lit(None).cast("string").alias("_raw"),
        *_meta(df),
    )


def validate_rows(df, start_ms: int, end_ms: int, max_lateness_ms: int):
    """Add the value and time rules to ``_reason`` (rows that already failed keep their reason)."""
    from pyspark.sql import functions as F

    expr = None
    for f in fields_of("dense", "label"):
        c = F.col(f.name)
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
    t, hour = F.col("_t"), F.col("_hour").cast("long") * 3_600_000
    late = (t < hour - max_lateness_ms) | (t >= hour + 3_600_000) | (t < start_ms) | (t >= end_ms)
    expr = expr.when(late, F.lit(OUT_OF_RANGE))
    return df.withColumn("_reason", F.coalesce(F.col("_reason"), expr))


def render_raw(prefix: str = ""):
    """A JSON rendering of a canonical row (for quarantine rows that have no original line)."""
    from pyspark.sql import functions as F

    parts = []
    for f in RAW_FIELDS:
        if f.kind == "time":
            parts.append(F.timestamp_millis(F.col(prefix + "_t")).alias(f.name))
        elif f.kind == "label":
            parts.append(F.col(prefix + f.name).cast("int").alias(f.name))
        else:
            parts.append(F.col(prefix + f.name).alias(f.name))
    return F.to_json(F.struct(*parts))
