"""Transform, part 1: parse and validate raw rows, giving each bad row ONE reason code.

Both input formats become the same *canonical* frame: the raw columns typed (ids and
categoricals as strings, lists of strings, dense as double, labels as double, and the event time
as epoch milliseconds ``_t``), plus

    _reason       null for a good row, else the first failing rule (below)
    _raw          the original JSONL line (null for Parquet: rendered on demand, see render_raw)
    _hour, _file  the row's partition hour (hours since the epoch) and file name: its source
                  file ``dt=YYYY-MM-DD/hr=HH/<file>`` (see :func:`source_file`), kept in this
                  compact form because every row carries it through the shuffle

The rules (which line is a record, which value is of its type, the reason codes and their
precedence, the text an id hashes from) are defined once in :mod:`components.raw_rules`; this
module compiles them to Spark expressions, as the scorer compiles them to Python. Every function
here is a pure DataFrame -> DataFrame transformation built from native Spark expressions (no Python
UDF on the row path). Later rules (``duplicate_event_id``, ``task_too_small``,
``episode_too_small``, ``episode_tie_overflow``) are interval-level; see
:mod:`components.etl.episodes` and :mod:`components.etl.dedup`.
"""

from __future__ import annotations

from components import raw_rules as rules
from components.raw_schema import RAW_FIELDS, fields_of

CORRUPT_COL = "_corrupt_record"
JSON_OPTIONS = {"mode": "PERMISSIVE", "allowSingleQuotes": "false"}
"""``from_json`` options: strict JSON quoting, as Python's parser (``raw_rules``)."""

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


def java(pattern: str) -> str:
    """A :mod:`components.raw_rules` pattern for Spark's Java regex: ``(?d)`` makes ``^ $ .``
    treat only LF as a line end, as Python's ``re`` does."""
    return "(?d)" + pattern


def _first_reason(*rules_in_order):
    """One CASE expression: the code of the first condition that holds.

    Each argument is one rule, a dict ``{code: condition}`` with fields in schema order; rules in
    the precedence of ``raw_rules.PRECEDENCE``.
    """
    from pyspark.sql import functions as F

    expr = None
    for rule in rules_in_order:
        for code, cond in rule.items():
            expr = F.when(cond, F.lit(code)) if expr is None else expr.when(cond, F.lit(code))
    return expr


def _blank(c):
    return c.isNull() | (c == "")


def with_line_reason(df):
    """``df`` (a ``value`` column of lines) with ``_line_reason``: ``line_too_long``,
    ``malformed_record`` or null by the shape of the line alone —
    :func:`components.raw_rules.line_reason` as Spark expressions.

    Each step is its own projection over a working column ``_s`` (Spark evaluates a column once
    per row, where a nested expression used twice would be evaluated twice). Most lines pass
    :func:`_plain_object` and skip the steps (``_s`` is null for them).
    """
    from pyspark.sql import functions as F

    s = F.col("_s")
    df = df.withColumn("_plain", _plain_object())
    df = df.withColumn("_s", F.when(~F.col("_plain"), F.col("value"))).withColumn(
        "_bad", F.lit(False)
    )
    for op, pattern in rules.LINE_STEPS:  # each step reads _s once: no plan blow-up
        if op == "remove":
            df = df.withColumn("_s", F.regexp_replace(s, java(pattern), ""))
        else:
            fails = s.rlike(java(pattern)) if op == "refuse" else ~s.rlike(java(f"^({pattern})$"))
            df = df.withColumn("_bad", F.col("_bad") | fails)
    df = df.withColumn("_s", s.substr(F.lit(2), F.length(s) - 2))  # inside the outer braces
    deep = s
    for _ in range(rules.MAX_DEPTH - 1):
        deep = F.regexp_replace(deep, java(rules.EMPTY_PAIR), "")
    flat = s.rlike(java(f"^({rules.EMPTY_PAIR})*$"))  # most records: "[][]", one pass is enough
    df = df.withColumn("_s", F.when(flat, F.lit("")).otherwise(deep))
    reason = (
        F.when(F.length("value") > rules.MAX_LINE_CHARS, F.lit(rules.LINE_TOO_LONG))
        .when(F.col("_plain"), F.lit(None))
        .when(F.col("_bad") | (s != ""), F.lit(rules.MALFORMED))
    )
    return df.withColumn("_line_reason", reason).drop("_plain", "_s", "_bad")


def _plain_object():
    """Column: a cheap test of ``value`` that passes most records and implies the line rule
    holds whenever the JSON parser (``from_json``, single quotes off) accepts the line: ``{`` is
    the first character and the only one, the first ``}`` is the last character (so the object
    ends at the end of the line), no list inside a list (depth 2), no long digit run, no ``INF``
    or ``Infinity``, no surrogate escape. Lines that fail it take the rule's steps; the verdict
    is the same either way (``tests/components/test_raw_rules_parity.py``)."""
    from pyspark.sql import functions as F

    value = F.col("value")
    return (
        value.startswith("{")
        & (F.instr(value, "}") == F.length(value))
        & (F.locate("{", value, 2) == 0)
        & ~value.contains("INF")
        & ~value.contains("Infinity")
        & ~(value.contains("\\u") & value.rlike(java(r"\\u[dD][89a-fA-F]")))
        & ~value.rlike(java(r"\[[^\]]*\["))
        & ~value.rlike(java(f"[0-9]{{{rules.MAX_DIGITS + 1}}}"))
    )


def _variant_ok(v, text):
    """Column: a value read as a variant (``v``) and as a string (``text``) is an id text:
    a string, a boolean, null, or an integer (digits only: ``1.0`` reads as DECIMAL(1,0))."""
    from pyspark.sql import functions as F

    kind = F.schema_of_variant(v)
    integer = (kind == "BIGINT") | kind.rlike(r"^DECIMAL\(\d+,0\)$")
    return kind.isin("STRING", "BOOLEAN", "VOID") | (integer & text.rlike(java("^-?[0-9]+$")))


def _with_probe(df):
    """``df`` (with ``j``, the record read with strings) with ``_probe``: for the rows where an id,
    categorical or list field reads like ``raw_rules.RENDERED_NOT_TEXT`` (a string can too), those
    fields read again as variants, which keep their JSON type; null on other rows."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = fields_of(*rules.TEXT_KINDS, "multi")
    gate = F.lit(False)
    for f in fields:
        c = F.col(f"j.{f.name}")
        if f.kind == "multi":
            looks = F.array_join(c, "\n").rlike(java("(?m)" + rules.RENDERED_NOT_TEXT))
        else:  # cheap tests first: an id seldom starts with [ { " or holds a "."
            number_like = c.contains(".") & c.rlike(java(rules.RENDERED_NOT_TEXT))
            looks = c.startswith("[") | c.startswith("{") | c.startswith('"') | number_like
        gate = gate | F.coalesce(looks, F.lit(False))
    schema = T.StructType([T.StructField(f.name, T.VariantType()) for f in fields])
    return df.withColumn("_probe", F.when(gate, F.from_json("value", schema, JSON_OPTIONS)))


def _not_id_text():
    """``{field: condition}``: an id, categorical or list field holds a value that is not an id
    text (``raw_rules.id_text``), judged from ``_probe`` (:func:`_with_probe`)."""
    from pyspark.sql import functions as F

    out = {}
    for f in fields_of(*rules.TEXT_KINDS, "multi"):
        v, text = F.col(f"_probe.{f.name}"), F.col(f"j.{f.name}")
        if f.kind == "multi":
            items = F.try_variant_get(v, "$", "array<variant>")
            ok = ~F.array_contains(F.zip_with(items, text, _variant_ok), False)
        else:
            ok = _variant_ok(v, text)
        ok = v.isNull() | F.coalesce(ok, F.lit(False))  # absent: fine (a missing rule's business)
        out[f.name] = F.col("_probe").isNotNull() & ~ok
    return out


def parse_jsonl(df):
    """JSONL lines (``value``, ``dt``, ``hr``, ``_file``) -> canonical frame with parse reasons.

    Blank lines are not rows (filter them first, see :func:`drop_blank_lines`).
    """
    from pyspark.sql import functions as F

    df = with_line_reason(df.select("value", "dt", "hr", "_file"))
    opts = {**JSON_OPTIONS, "columnNameOfCorruptRecord": CORRUPT_COL}
    j = F.when(F.col("_line_reason").isNull(), F.from_json("value", jsonl_read_schema(), opts))
    df = df.select("*", j.alias("j"))
    # A bad list value makes Spark flag the whole record (keeping the other fields); re-parse only
    # those rows with lists as text to tell "not a JSON object" from "a list that is not a list".
    corrupt = F.col(f"j.{CORRUPT_COL}").isNotNull()
    relaxed = F.when(corrupt, F.from_json("value", _string_schema(), JSON_OPTIONS))
    df = _with_probe(df.withColumn("_relaxed", relaxed))
    multi = [f.name for f in fields_of("multi")]
    bad_list = {
        m: corrupt & F.col(f"_relaxed.{m}").isNotNull() & F.col(f"j.{m}").isNull() for m in multi
    }
    any_bad_list = F.lit(False)
    for cond in bad_list.values():
        any_bad_list = any_bad_list | cond
    malformed = F.col("_line_reason").isNotNull() | (corrupt & ~any_bad_list)
    not_text = _not_id_text()

    def s(name):  # raw text of a scalar field
        return F.col(f"j.{name}")

    def num(name):  # raw_rules.number_value: a number, or numeric text (JSON NaN arrives quoted)
        text = s(name)
        return F.when(
            text.rlike(java(rules.NUMBER_TEXT)), F.btrim(text, F.lit('"')).try_cast("double")
        )

    time_text = s("event_time")
    t = F.when(
        time_text.rlike(java(rules.ISO_8601)), F.unix_millis(time_text.try_cast("timestamp"))
    )
    typed = {"event_time": t}
    for f in fields_of(*rules.NUMBER_KINDS):
        typed[f.name] = num(f.name)
    missing = {
        rules.missing(f.name): (_blank(s(f.name)) if f.kind != "multi" else s(f.name).isNull())
        for f in RAW_FIELDS
        if f.required
    }
    bad_type = {}
    for f in RAW_FIELDS:
        if f.name in typed:
            bad_type[rules.bad_type(f.name)] = s(f.name).isNotNull() & typed[f.name].isNull()
        elif f.kind == "multi":
            bad_type[rules.bad_type(f.name)] = bad_list[f.name] | not_text[f.name]
        else:
            bad_type[rules.bad_type(f.name)] = not_text[f.name]
    columns = []
    for f in RAW_FIELDS:
        if f.name == "event_time":
            columns.append(t.alias("_t"))
        elif f.name in typed:
            columns.append(typed[f.name].alias(f.name))
        else:
            columns.append(s(f.name).alias(f.name))
    reason = F.coalesce(
        F.col("_line_reason"), _first_reason({rules.MALFORMED: malformed}, missing, bad_type)
    )
    return df.select(*columns, reason.alias("_reason"), F.col("value").alias("_raw"), *_meta(df))


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
        rules.missing(f.name): (
            _blank(F.col(f.name)) if f.kind in rules.TEXT_KINDS else F.col(f.name).isNull()
        )
        for f in RAW_FIELDS
        if f.required
    }
    return df.select(
        *columns,
        _first_reason(missing).alias("_reason"),
        F.lit(None).cast("string").alias("_raw"),
        *_meta(df),
    )


def validate_rows(df, start_ms: int, end_ms: int, max_lateness_ms: int):
    """Add the value and time rules to ``_reason`` (rows that already failed keep their reason)."""
    from pyspark.sql import functions as F

    expr = None
    for rule in rules.VALUE_RULES:  # raw_rules.ValueRule.ok, as expressions
        c = F.col(rule.field)
        if rule.allowed is not None:
            bad = ~c.isin(*rule.allowed)
        else:
            bad = F.isnan(c) | (F.abs(c) == float("inf")) if rule.finite else F.lit(False)
            if rule.min_value is not None:
                bad = bad | (c < rule.min_value)
            if rule.max_value is not None:
                bad = bad | (c > rule.max_value)
        bad = c.isNotNull() & bad
        reason = F.lit(rules.bad_value(rule.field))
        expr = F.when(bad, reason) if expr is None else expr.when(bad, reason)
    t, hour = F.col("_t"), F.col("_hour").cast("long") * 3_600_000
    late = (t < hour - max_lateness_ms) | (t >= hour + 3_600_000) | (t < start_ms) | (t >= end_ms)
    expr = expr.when(late, F.lit(rules.OUT_OF_RANGE))
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
