"""Fuzz the raw-log readers with generated malformed JSONL lines: the scorer's
(``components/score/events.py``) and the Spark ETL's (``components/etl/rows.py``: the same
``components.raw_records`` parser inside ``mapInArrow``), few Spark cases, each one file of many
lines.

Properties: no exception; every non-blank line is exactly one row (nothing dropped, nothing
duplicated, line numbers kept; lines end at ``\n``, ``\r\n`` or ``\r``); every row has no
reason or one documented reason code; and the two readers give the SAME reason to the same line
(the serving side must reject what the ETL quarantines; the ETL's time-window rule is the one
rule the scorer does not apply).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components import raw_records
from components.raw_schema import RAW_FIELDS
from tests.reliability.fuzz import CASES, HOUR, examples, record_lines, report

NAMES = "|".join(f.name for f in RAW_FIELDS)
REASON = re.compile(
    "|".join(raw_records.LINE_REASONS) + rf"|(missing|bad_type|field_too_long|bad_value):({NAMES})"
)
START_MS = 1_793_491_200_000  # 2026-11-01T00:00Z: the interval is that day
OUT_OF_RANGE = "event_time_out_of_range"
REL = f"dt=2026-11-01/hr={HOUR:02d}/part-00000.jsonl"


def write_lines(lines: list[str], root) -> list[int]:
    """Write ``lines`` (each ended by ``\n``) as one file of partition ``HOUR``; return the
    numbers of the non-blank lines the file holds (a line may hold a CR: it splits there)."""
    path = root / REL
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(data)
    split = re.split(rb"\r\n|\r|\n", data)[:-1]  # Spark's text rule, written another way
    return [i + 1 for i, text in enumerate(split) if text.strip(b" \t")]


def python_reasons(root) -> dict[int, str | None]:
    """``{line number: reason}`` from the scorer's reader and validation."""
    from components.score.encode import validate
    from components.score.events import read_events

    out: dict[int, str | None] = {}
    for batch in read_events(str(root / REL), batch_rows=17):  # several blocks per file
        numbers = batch.table.column("_line").to_pylist()
        for n, reason in zip(numbers, validate(batch.table, labels_required=True), strict=True):
            assert n not in out, f"line {n} became two rows"
            out[n] = reason
    return out


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    report("raw")


@examples(150)
@given(lines=st.lists(record_lines(), min_size=1, max_size=40))
def test_python_reader_accounts_for_every_line(lines, tmp_path_factory) -> None:
    root = tmp_path_factory.mktemp("fuzz-py")
    expected = write_lines(lines, root)
    reasons = python_reasons(root)
    assert sorted(reasons) == expected  # one row per non-blank line, under its own line number
    for r in reasons.values():
        assert r is None or REASON.fullmatch(r), r
    CASES["raw: python examples"] += 1
    CASES["raw: python lines"] += len(lines)
    CASES["raw: python rejected"] += sum(r is not None for r in reasons.values())


def _spark_reasons(spark, root) -> list[str | None]:
    """The ETL's reasons, in line order (one file: one task, read in order)."""
    from pyspark.sql import functions as F

    from components.etl import rows

    df = rows.read_jsonl(spark, str(root), [REL]).where(~F.col("_blank")).drop("_blank")
    parsed = rows.validate_rows(df, START_MS, START_MS + 86_400_000, 3_600_000)
    return [r["_reason"] for r in parsed.select("_reason").collect()]


@pytest.mark.spark
@examples(4, shrink=False)
@given(lines=st.lists(record_lines(), min_size=150, max_size=250))
def test_spark_parse_accounts_for_every_line_and_agrees_with_python(
    lines, spark, tmp_path_factory
) -> None:
    root = tmp_path_factory.mktemp("fuzz-spark")
    expected = write_lines(lines, root)
    got = _spark_reasons(spark, root)
    assert len(got) == len(expected)  # one row per non-blank line
    for r in got:
        assert r is None or r == OUT_OF_RANGE or REASON.fullmatch(r), r
    scorer = python_reasons(root)
    assert sorted(scorer) == expected
    differ = {
        n: (etl, scorer[n])
        for n, etl in zip(expected, got, strict=True)
        if (None if etl == OUT_OF_RANGE else etl) != scorer[n]
    }
    assert not differ, differ
    CASES["raw: spark examples"] += 1
    CASES["raw: spark lines"] += len(lines)
    CASES["raw: spark rejected"] += sum(r is not None for r in got)


WHITESPACE_LINES = ["\t", " \t ", "\x0b", "\u00a0", "\u3000", "\r", "\x85", "\u2028"]


@pytest.mark.spark
def test_whitespace_only_lines_are_blank_on_both_sides(spark, tmp_path) -> None:
    """One definition of a blank line (only spaces and tabs, JSON's whitespace within a line) in
    the ETL and the scorer: other Unicode spaces and separators (NEL, U+2028) make a row,
    quarantined as malformed on both sides; a CR ends a line."""
    lines = ["{}", *WHITESPACE_LINES]
    expected = write_lines(lines, tmp_path)
    spark_rows = _spark_reasons(spark, tmp_path)
    scorer_rows = python_reasons(tmp_path)
    assert len(spark_rows) == len(scorer_rows) == len(expected) == 6  # "{}", VT, NBSP, U+3000,
    assert spark_rows == [scorer_rows[n] for n in expected]  # NEL, U+2028
