"""Parse and validate: every bad row gets ONE reason, the first failing rule (rows.py docstring)."""

from __future__ import annotations

import json

import pytest

from tests.components.etl.rawdata import record, ts

pytestmark = pytest.mark.spark

START_MS = 1_793_491_200_000  # 2026-11-01T00:00Z
END_MS = START_MS + 24 * 3_600_000
HOUR = 5  # the partition hour of every test line


def line(i: int, **over) -> str:
    """A JSON line of a record in partition hour 5 (unless ``event_time`` is overridden)."""
    r = record(i, hour=HOUR, second=60 * i)
    for key, value in over.items():
        if value is _DROP:
            r.pop(key)
        else:
            r[key] = value
    return json.dumps(r)


_DROP = object()

CASES = [
    # (event_id, line, expected reason)
    ("ok", line(1, event_id="ok"), None),
    ("late-ok", line(2, event_id="late-ok", event_time=ts(4, 1800)), None),  # 30 min late, allowed
    ("extra", line(3, event_id="extra", unknown_key={"x": 1}), None),
    ("numeric-ids", line(4, event_id="numeric-ids", user_id=123, ad_id=12345678901234567890), None),
    ("offset", line(5, event_id="offset", event_time="2026-11-01T05:10:00+00:00"), None),
    ("string-label", line(6, event_id="string-label", click="1", bid_price="0.25"), None),
    (None, '{"event_id": "trunc", "click": 1, "user_', "malformed_record"),
    (None, "not json at all", "malformed_record"),
    (None, "[1, 2, 3]", "malformed_record"),
    (None, "null", "malformed_record"),
    ("no-user", line(7, event_id="no-user", user_id=_DROP), "missing:user_id"),
    ("empty-user", line(8, event_id="empty-user", user_id=""), "missing:user_id"),
    ("null-click", line(9, event_id="null-click", click=None), "missing:click"),
    (None, "{}", "missing:event_id"),
    ("yes", line(10, event_id="yes", click="yes"), "bad_type:click"),
    ("abc", line(11, event_id="abc", bid_price="abc"), "bad_type:bid_price"),
    ("yesterday", line(12, event_id="yesterday", event_time="yesterday"), "bad_type:event_time"),
    ("epoch", line(13, event_id="epoch", event_time=1_793_509_200_000), "bad_type:event_time"),
    ("date-only", line(14, event_id="date-only", event_time="2026-11-01"), "bad_type:event_time"),
    ("not-list", line(15, event_id="not-list", user_interests="t-1"), "bad_type:user_interests"),
    ("bool-label", line(16, event_id="bool-label", click=True), "bad_type:click"),
    ("nan", line(17, event_id="nan", bid_price=float("nan")), "bad_value:bid_price"),
    ("inf", line(18, event_id="inf", item_price=float("inf")), "bad_value:item_price"),
    ("negative", line(19, event_id="negative", bid_price=-1.0), "bad_value:bid_price"),
    ("ctr", line(20, event_id="ctr", user_hist_ctr=1.5), "bad_value:user_hist_ctr"),
    ("click2", line(21, event_id="click2", click=2), "bad_value:click"),
    ("conv-1", line(22, event_id="conv-1", conversion=-1), "bad_value:conversion"),
    ("too-late", line(23, event_id="too-late", event_time=ts(3, 3000)), "event_time_out_of_range"),
    ("next-hour", line(24, event_id="next-hour", event_time=ts(6, 0)), "event_time_out_of_range"),
    (
        "year-2100",
        line(25, event_id="year-2100", event_time="2100-01-01T00:00:00Z"),
        "event_time_out_of_range",
    ),
    # the first failing rule wins: missing before bad_type before bad_value
    ("order1", line(26, event_id="order1", user_id=None, click="yes"), "missing:user_id"),
    ("order2", line(27, event_id="order2", click="yes", bid_price=float("nan")), "bad_type:click"),
    ("order3", line(28, event_id="order3", bid_price=-5, event_time=ts(9)), "bad_value:bid_price"),
]


def _parsed(spark, tmp_path, lines: list[str], hour: int = HOUR, with_blank: bool = False):
    """``lines`` as a JSONL file of partition ``hour``, read and parsed as the ETL reads it."""
    from pyspark.sql import functions as F

    from components.etl import rows

    rel = f"dt=2026-11-01/hr={hour:02d}/part-00000.jsonl"
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text("".join(text + "\n" for text in lines), encoding="utf-8")
    df = rows.read_jsonl(spark, str(tmp_path), [rel])
    return df if with_blank else df.where(~F.col("_blank")).drop("_blank")


def _validated(df):
    from components.etl import rows

    return rows.validate_rows(df, START_MS, END_MS, max_lateness_ms=3_600_000)


def test_jsonl_reasons(spark, tmp_path):
    from pyspark.testing import assertDataFrameEqual

    out = _validated(_parsed(spark, tmp_path, [c[1] for c in CASES]))
    expected = spark.createDataFrame(
        [(c[0], c[2]) for c in CASES], "event_id string, _reason string"
    )
    assertDataFrameEqual(out.select("event_id", "_reason"), expected)


def test_jsonl_keeps_the_line_and_its_file(spark, tmp_path):
    from components.etl import rows

    text = '{"event_id": "trunc", "cli'
    df = _parsed(spark, tmp_path, [text])
    row = df.select("*", rows.source_file().alias("source")).collect()[0]
    assert row["_raw"] == text
    assert row["source"] == "dt=2026-11-01/hr=05/part-00000.jsonl"
    assert row["_hour"] * 3_600_000 == START_MS + HOUR * 3_600_000


def test_jsonl_values_are_typed(spark, tmp_path):
    r = _parsed(spark, tmp_path, [CASES[3][1], CASES[5][1]]).orderBy("event_id").collect()
    assert r[0]["user_id"] == "123" and r[0]["ad_id"] == "12345678901234567890"  # ids as text
    assert r[1]["click"] == 1.0 and r[1]["bid_price"] == 0.25  # numeric strings accepted
    assert r[0]["_t"] == START_MS + HOUR * 3_600_000 + 60 * 4 * 1000


def test_blank_lines_are_not_rows(spark, tmp_path):
    df = _parsed(spark, tmp_path, [line(1), "", "   ", line(2, event_id="x")], with_blank=True)
    assert df.where("NOT _blank").count() == 2 and df.where("_blank").count() == 2


def test_interval_bounds(spark, tmp_path):
    # partition hour 0: an event from 23:30 the day before is within lateness but not the interval
    early = json.dumps(record(1, event_id="prev-day", event_time="2026-10-31T23:30:00.000Z"))
    ok = json.dumps(record(2, event_id="ok", hour=0))
    out = _validated(_parsed(spark, tmp_path, [early, ok], hour=0))
    got = {r["event_id"]: r["_reason"] for r in out.collect()}
    assert got == {"prev-day": "event_time_out_of_range", "ok": None}


def test_parquet_reasons(spark, tmp_path):
    from pyspark.testing import assertDataFrameEqual

    from components.etl import extract, rows
    from tests.components.etl import rawdata

    recs = [
        record(1, event_id="ok", hour=HOUR),
        record(2, event_id="no-ad", hour=HOUR, ad_id=None),
        record(3, event_id="nan", hour=HOUR, user_hist_ctr=float("nan")),
        record(4, event_id="click3", hour=HOUR, click=3),
        record(5, event_id="old", hour=HOUR, event_time=ts(1)),
        record(6, event_id="no-time", hour=HOUR, event_time=None),
        record(7, event_id="empty-scene", hour=HOUR, scene_id=""),
    ]
    rawdata.write_parquet(tmp_path, HOUR, recs)
    listing = extract.InputListing(
        uri=str(tmp_path), fmt="parquet", files=["dt=2026-11-01/hr=05/part-00000.parquet"]
    )
    out = _validated(rows.parse_parquet(rows.read_raw(spark, listing)))
    expected = spark.createDataFrame(
        [("ok", None), ("no-ad", "missing:ad_id"), ("nan", "bad_value:user_hist_ctr"),
         ("click3", "bad_value:click"), ("old", "event_time_out_of_range"),
         ("no-time", "missing:event_time"), ("empty-scene", "missing:scene_id")],
        "event_id string, _reason string",
    )  # fmt: skip
    assertDataFrameEqual(out.select("event_id", "_reason"), expected)
    sources = {r["s"] for r in out.select(rows.source_file().alias("s")).collect()}
    assert sources == {"dt=2026-11-01/hr=05/part-00000.parquet"}


def test_render_raw_is_json_of_the_row(spark, tmp_path):
    from components.etl import rows

    df = _parsed(spark, tmp_path, [line(1, event_id="r1")])
    rendered = json.loads(df.select(rows.render_raw().alias("j")).collect()[0]["j"])
    assert rendered["event_id"] == "r1"
    assert rendered["event_time"].startswith("2026-11-01T05:")
    assert rendered["click"] == 1 and rendered["user_interests"] == ["t-1", "t-2"]
