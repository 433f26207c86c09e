"""Fuzz the raw-log parsers with generated malformed JSONL lines: the Python reader of
``metarec score`` (``components/score/events.py`` + ``encode.validate``) and the Spark ETL's parse
(``components/etl/rows.py``), few Spark cases, each one DataFrame of many lines.

Properties: no exception; every non-blank line is exactly one row (nothing dropped, nothing
duplicated, line numbers kept); every row has no reason or one documented reason code; and the two
parsers give the SAME reason to the same line (the serving side must reject what the ETL
quarantines; the ETL's time-window rule is the one rule the scorer does not apply).
"""

from __future__ import annotations

import re
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.raw_schema import JSON_WHITESPACE, RAW_FIELDS
from tests.reliability.fuzz import CASES, HOUR, examples, record_lines, report

NAMES = "|".join(f.name for f in RAW_FIELDS)
REASON = re.compile(rf"malformed_record|(missing|bad_type|bad_value):({NAMES})")
START_MS = 1_793_491_200_000  # 2026-11-01T00:00Z: the interval is that day
OUT_OF_RANGE = "event_time_out_of_range"


def python_reasons(lines: list[str], tmp_dir) -> dict[int, str | None]:
    """``{line number: reason}`` from the scorer's reader and validation."""
    from components.score.encode import validate
    from components.score.events import read_events

    path = tmp_dir / "part-00000.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out: dict[int, str | None] = {}
    for batch in read_events(str(path), batch_rows=17):  # several blocks per file
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
    reasons = python_reasons(lines, tmp_path_factory.mktemp("fuzz-py"))
    expected = [i + 1 for i, line in enumerate(lines) if line.strip(JSON_WHITESPACE)]
    assert sorted(reasons) == expected  # one row per non-blank line, under its own line number
    for r in reasons.values():
        assert r is None or REASON.fullmatch(r), r
    CASES["raw: python examples"] += 1
    CASES["raw: python lines"] += len(lines)
    CASES["raw: python rejected"] += sum(r is not None for r in reasons.values())


@pytest.mark.spark
@examples(4, shrink=False)
@given(lines=st.lists(record_lines(), min_size=150, max_size=250))
def test_spark_parse_accounts_for_every_line_and_agrees_with_python(
    lines, spark, tmp_path_factory
) -> None:
    from components.etl import rows

    df = spark.createDataFrame(
        [(text, date(2026, 11, 1), HOUR, f"line-{i + 1}") for i, text in enumerate(lines)],
        "value string, dt date, hr int, _file string",
    )
    parsed = rows.validate_rows(
        rows.parse_jsonl(rows.drop_blank_lines(df)), START_MS, START_MS + 86_400_000, 3_600_000
    )
    got = {int(r["_file"][5:]): r["_reason"] for r in parsed.select("_file", "_reason").collect()}
    assert len(got) == parsed.count()  # one row per line
    # Spark keeps every line that is not blank (empty or JSON whitespace only)
    assert sorted(got) == [i + 1 for i, line in enumerate(lines) if line.strip(JSON_WHITESPACE)]
    for r in got.values():
        assert r is None or r == OUT_OF_RANGE or REASON.fullmatch(r), r
    scorer = python_reasons(lines, tmp_path_factory.mktemp("fuzz-spark"))
    differ = {
        n: (got[n], scorer.get(n), lines[n - 1][:160])
        for n in got
        if (None if got[n] == OUT_OF_RANGE else got[n]) != scorer.get(n, "<not a row>")
    }
    assert not differ, differ
    CASES["raw: spark examples"] += 1
    CASES["raw: spark lines"] += len(lines)
    CASES["raw: spark rejected"] += sum(r is not None for r in got.values())


WHITESPACE_LINES = ["\t", " \t ", "\x0b", "\u00a0", "\u3000", "\r"]


@pytest.mark.spark
def test_whitespace_only_lines_are_blank_on_both_sides(spark, tmp_path) -> None:
    """One definition of a blank line (only JSON whitespace) in the ETL and the scorer: other
    Unicode spaces make a row, quarantined as malformed on both sides."""
    from components.etl import rows

    lines = ["{}", *WHITESPACE_LINES]
    df = spark.createDataFrame(
        [(text, date(2026, 11, 1), HOUR, "f") for text in lines],
        "value string, dt date, hr int, _file string",
    )
    spark_rows = rows.parse_jsonl(rows.drop_blank_lines(df)).count()
    scorer_rows = python_reasons(lines, tmp_path)
    assert spark_rows == len(scorer_rows) == 4  # "{}", VT, NBSP, ideographic space
