"""One definition of the raw-row rules, two compilations: hostile lines through the Spark ETL's row
path (``components/etl/rows.py`` + ``encode.py``) and through the scorer (``components/score``)
get the SAME verdict, the SAME reason and the SAME hashed feature ids; and the verdict is the one
``components/raw_rules.py`` defines (issue 18: ``{A}{B}``, trailing text, NUL, single quotes, lone
CR, deep nesting, 1000-digit numbers, ``+Infinity``, non-string ids).
"""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from components import raw_rules as rules
from components.etl.config import FeatureConfig
from tests.components.etl.rawdata import record
from trainer.data.contract import FeatureSpec

pytestmark = pytest.mark.spark
HOUR = 5
START_MS = 1_793_491_200_000  # 2026-11-01T00:00Z
TEXT = ("event_id", "user_id", "ad_id", "campaign_id", "user_gender", "region")
FEATURES = (
    *(FeatureConfig(n, 1009) for n in TEXT),
    FeatureConfig("hour_of_day", 29, source="event_time"),
    FeatureConfig("user_interests", 101, kind="multi", slots=4),
    FeatureConfig("ad_tags", 53, kind="multi", slots=3),
)


def _line(i: int, **over) -> str:
    """A record of partition hour 5 as JSON, with fields replaced by raw JSON text (``over``)."""
    r = record(i, hour=HOUR)
    text = json.dumps({k: v for k, v in r.items() if k not in over})
    extra = "".join(f', "{k}": {v}' for k, v in over.items() if v is not None)
    return text[:-1] + extra + "}"


CASES: list[tuple[str, str, str | None]] = [
    # (name, line, the verdict raw_rules defines)
    ("good", _line(1), None),
    ("two objects", _line(2) + _line(3), rules.MALFORMED),
    ("trailing text", _line(4) + " xyz", rules.MALFORMED),
    ("trailing NUL", _line(5) + "\x00", rules.MALFORMED),
    ("trailing bracket", _line(6) + "]", rules.MALFORMED),
    ("trailing brace", _line(7) + "}", rules.MALFORMED),
    ("single quotes", _line(8).replace('"', "'"), rules.MALFORMED),
    ("trailing whitespace", " \t" + _line(9) + " \t", None),
    ("depth 16", _line(10, x="[" * 15 + "]" * 15), None),
    ("depth 17", _line(11, x="[" * 16 + "]" * 16), rules.MALFORMED),
    ("depth 10000", _line(12, x="[" * 10_000 + "]" * 10_000), rules.MALFORMED),
    ("100 digits", _line(13, x="9" * 100), None),
    ("1000 digits", _line(14, x="9" * 1000), rules.MALFORMED),
    ("+Infinity", _line(15, bid_price="+Infinity"), rules.MALFORMED),
    ("INF", _line(16, bid_price="INF"), rules.MALFORMED),
    ("Infinity", _line(17, bid_price="Infinity"), "bad_value:bid_price"),
    ("-Infinity", _line(18, item_price="-Infinity"), "bad_value:item_price"),
    ("NaN", _line(19, user_hist_ctr="NaN"), "bad_value:user_hist_ctr"),
    ("1e400", _line(20, bid_price="1e400"), "bad_value:bid_price"),
    ("NaN id", _line(21, user_id="NaN"), "bad_type:user_id"),
    ("1.50 id", _line(22, user_id="1.50"), "bad_type:user_id"),
    ("1.5 id", _line(23, user_id="1.5"), "bad_type:user_id"),
    ("1e3 id", _line(24, ad_id="1e3"), "bad_type:ad_id"),
    ("object id", _line(25, ad_id='{"a": 1}'), "bad_type:ad_id"),
    ("array id", _line(26, user_gender="[1]"), "bad_type:user_gender"),
    ("integer id", _line(27, user_id="123"), None),
    ("-0 id", _line(28, user_id="-0"), None),
    ("big integer id", _line(29, ad_id="1" * 60), None),
    ("boolean id", _line(30, region="true"), None),
    ("float-like string id", _line(31, user_id='"1.5"'), None),
    ("quoted NaN string id", _line(32, user_id='"NaN"'), None),
    ("object-like string id", _line(33, ad_id='"{\\"a\\": 1}"'), None),
    ("float in a list", _line(34, user_interests='["a", 1.5]'), "bad_type:user_interests"),
    ("object in a list", _line(35, ad_tags='[{"a": 1}]'), "bad_type:ad_tags"),
    ("list in a list", _line(36, ad_tags='["x", ["y"]]'), "bad_type:ad_tags"),
    ("integers in a list", _line(37, ad_tags="[1, -0, true, null]"), None),
    ("float-like strings in a list", _line(38, ad_tags='["1.5", "[x"]'), None),
    ("lone surrogate", _line(39, user_id='"\\ud800"'), rules.MALFORMED),
    ("lone low surrogate", _line(40, ad_id='"x\\udc00"'), rules.MALFORMED),
    ("escaped backslash u", _line(41, user_id='"\\\\ud800"'), None),
    ("surrogate pair", _line(42, user_id='"\\ud83d\\ude00"'), None),
    ("unicode escape", _line(43, user_id='"\\u00e9\\u0000"'), None),
    ("repeated key", json.dumps(record(44, hour=HOUR))[:-1] + ', "user_id": "last"}', None),
    ("empty click", _line(45, click='""'), "missing:click"),
    ("empty bid", _line(46, bid_price='""'), "bad_type:bid_price"),
    ("spaced number", _line(47, bid_price='" 1.5\\t"'), None),
    ("1d", _line(48, bid_price='"1d"'), "bad_type:bid_price"),
    ("hex", _line(49, bid_price='"0x10"'), "bad_type:bid_price"),
    ("+inf text", _line(50, bid_price='"+inf"'), "bad_value:bid_price"),
    ("quoted NaN text", _line(51, bid_price='"\\"NaN\\""'), "bad_value:bid_price"),
    ("month 13", _line(52, event_time='"2026-13-01T05:00:00Z"'), "bad_type:event_time"),
    (
        "month 13, float id",
        _line(53, event_id="1.5", event_time='"2026-13-01T05:00:00Z"'),
        "bad_type:event_id",
    ),
    ("raw tab in a string", _line(54, user_id='"a\tb"'), rules.MALFORMED),
    ("trailing comma", _line(55)[:-1] + ",}", rules.MALFORMED),
    ("leading zero", _line(56, x="01"), rules.MALFORMED),
    ("bare array", "[1, 2]", rules.MALFORMED),
    ("bare string", '"x"', rules.MALFORMED),
    ("truncated", _line(57)[:40], rules.MALFORMED),
    ("unknown nested", _line(58, x='{"y": [1, {"z": null}], "w": "}{"}'), None),
    ("no fields", "{}", "missing:event_id"),
    ("line too long", _line(59, x='"' + "a" * rules.MAX_LINE_CHARS + '"'), rules.LINE_TOO_LONG),
]


def etl_verdicts(spark, lines: list[str]) -> dict[int, tuple[str | None, list[int] | None]]:
    """``{line number: (reason, ids)}`` through the ETL's row path (ids of the rows that pass the
    row rules; ``event_time_out_of_range``, an interval rule the scorer does not apply, reads as
    ``None``)."""
    from pyspark.sql import functions as F

    from components.etl import encode, rows

    df = spark.createDataFrame(
        [(text, date(2026, 11, 1), HOUR, f"line-{i + 1}") for i, text in enumerate(lines)],
        "value string, dt date, hr int, _file string",
    )
    parsed = rows.validate_rows(
        rows.parse_jsonl(rows.drop_blank_lines(df)), START_MS, START_MS + 86_400_000, 3_600_000
    )
    passed = F.col("_reason").isNull() | (F.col("_reason") == rules.OUT_OF_RANGE)
    ids = F.when(passed, encode.sparse_ids(FEATURES))
    out = {}
    for r in parsed.select("_file", "_reason", ids.alias("ids")).collect():
        reason = None if r["_reason"] == rules.OUT_OF_RANGE else r["_reason"]
        out[int(r["_file"][5:])] = (reason, r["ids"])
    return out


def scorer_verdicts(lines: list[str], tmp_path) -> dict[int, tuple[str | None, list[int] | None]]:
    """``{line number: (reason, ids)}`` through the scorer's reader, validation and encoder."""
    from components.score.encode import encode, validate
    from components.score.events import read_events

    specs, at = [], 0
    for f in FEATURES:
        specs.append(FeatureSpec(f.name, f.source, f.kind, f.buckets, f.slots, at))
        at += f.slots
    path = tmp_path / "part-00000.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = {}
    for batch in read_events(str(path), batch_rows=16):
        reasons = validate(batch.table, labels_required=True)
        good = np.flatnonzero(np.equal(reasons, None))
        sparse = encode(batch.table.take(pa.array(good, pa.int64())), specs, [], "campaign_id")
        ids = dict(zip(good.tolist(), sparse.sparse.tolist(), strict=True))
        for i, n in enumerate(batch.table.column("_line").to_pylist()):
            out[n] = (reasons[i], ids.get(i))
    return out


def test_hostile_lines_get_one_verdict_and_one_id(spark, tmp_path) -> None:
    lines = [line for _, line, _ in CASES]
    etl, scorer = etl_verdicts(spark, lines), scorer_verdicts(lines, tmp_path)
    assert sorted(etl) == sorted(scorer) == list(range(1, len(lines) + 1))  # every line one row
    for n, (name, _, expected) in enumerate(CASES, 1):
        assert etl[n][0] == expected, (name, "ETL", etl[n][0])
        assert scorer[n] == etl[n], (name, "scorer", scorer[n], "ETL", etl[n])
    assert all(etl[n][1] is not None for n, c in enumerate(CASES, 1) if c[2] is None)


def test_integer_ids_hash_from_their_decimal_text(spark, tmp_path) -> None:
    """``123`` and ``"123"`` are one id, ``-0`` and ``0`` too (raw_rules.id_text)."""
    pairs = [(_line(1, user_id="123"), _line(1, user_id='"123"')),
             (_line(2, user_id="-0"), _line(2, user_id='"0"')),
             (_line(3, region="false"), _line(3, region='"false"'))]  # fmt: skip
    lines = [x for pair in pairs for x in pair]
    etl, scorer = etl_verdicts(spark, lines), scorer_verdicts(lines, tmp_path)
    for k in range(0, len(lines), 2):
        assert etl[k + 1] == etl[k + 2] == scorer[k + 1] == scorer[k + 2]
        assert etl[k + 1][0] is None


def test_cr_lf_and_crlf_end_a_line_in_both_readers(spark, tmp_path) -> None:
    """The ETL reads files with Spark's text reader (``extract.read``), the scorer with universal
    newlines: a lone CR ends a line in both, so a record split by one is two malformed rows."""
    from components.score.events import read_events

    a, b, c = _line(1), _line(2), _line(3)
    split = a[:30] + "\r" + a[30:]
    path = tmp_path / "part-00000.jsonl"
    path.write_bytes(f"{b}\r{c}\r\n{split}\n".encode())
    spark_lines = [r["value"] for r in spark.read.text(str(path)).collect()]
    scorer_rows = [rules.read_line(x)[0] for x in spark_lines]
    read = [batch.table for batch in read_events(str(path))]
    assert len(spark_lines) == sum(t.num_rows for t in read) == 4
    assert scorer_rows == [None, None, rules.MALFORMED, rules.MALFORMED]
    assert [r for t in read for r in t.column("_line_reason").to_pylist()] == scorer_rows
