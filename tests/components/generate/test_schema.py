"""Output conforms to the canonical raw schema and layout (components/raw_schema.py)."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.raw_schema import RAW_COLUMNS, arrow_schema, fields_of
from tests.components.generate.helpers import (
    HOUR_MS,
    PART_RE,
    data_files,
    generation,
    hour_start_ms,
    make,
    parse_iso_ms,
    read_lines,
)


def test_parquet_files_have_exactly_the_raw_schema(tmp_path):
    summary, root = make(tmp_path, format="parquet", files_per_hour=2)
    files = data_files(root)
    assert len(files) == 12
    assert sum(pq.read_metadata(f).num_rows for f in files) == summary.rows_written == 3_000
    for f in files:
        assert PART_RE.match(str(f.relative_to(root))), f
        # Parquet names list items "element" (the spec's LIST layout); otherwise identical.
        assert _item_named(pq.read_schema(f)).equals(arrow_schema(), check_metadata=True), f
        table = pq.read_table(f, schema=arrow_schema())
        assert table.schema.equals(arrow_schema(), check_metadata=True)
        times = table.column("event_time").cast("int64").to_numpy()
        start = hour_start_ms(root, f)
        assert ((times >= start) & (times < start + HOUR_MS)).all()


def _item_named(schema: pa.Schema) -> pa.Schema:
    fields = [
        f.with_type(pa.list_(f.type.value_type)) if pa.types.is_list(f.type) else f for f in schema
    ]
    return pa.schema(fields, metadata=schema.metadata)


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz"])
def test_jsonl_lines_carry_exactly_the_schema_fields(tmp_path, fmt):
    summary, root = make(tmp_path, format=fmt)
    rows = 0
    for f in data_files(root):
        assert PART_RE.match(str(f.relative_to(root))), f
        start = hour_start_ms(root, f)
        lines, truncated = read_lines(f)
        assert not truncated
        for line in lines:
            rec = json.loads(line)
            assert sorted(rec) == sorted(RAW_COLUMNS)  # exactly the schema fields
            _check_clean_record(rec, start)
            rows += 1
    assert rows == summary.rows_written == 3_000


def _check_clean_record(rec: dict, hour_start: int) -> None:
    for name in ("event_id", "user_id", "ad_id", "campaign_id", "advertiser_id", "scene_id"):
        assert isinstance(rec[name], str) and rec[name], name
    for f in fields_of("categorical"):
        assert isinstance(rec[f.name], str), f.name
    assert isinstance(rec["user_interests"], list) and 0 <= len(rec["user_interests"]) <= 5
    assert isinstance(rec["ad_tags"], list) and 1 <= len(rec["ad_tags"]) <= 3
    for name in ("user_interests", "ad_tags"):
        assert all(isinstance(t, str) for t in rec[name])
        assert len(set(rec[name])) == len(rec[name])
    for f in fields_of("dense"):
        value = rec[f.name]
        assert isinstance(value, int | float) and math.isfinite(value), f.name
        assert f.min_value <= value <= f.max_value, f.name
    assert rec["click"] in (0, 1) and not isinstance(rec["click"], bool)
    assert rec["conversion"] in (0, 1, None)
    assert rec["conversion"] != 1 or rec["click"] == 1
    ms = parse_iso_ms(rec["event_time"])
    assert ms is not None and hour_start <= ms < hour_start + HOUR_MS, rec["event_time"]


def test_jsonl_and_parquet_hold_the_same_records(tmp_path):
    """The two renderers (Arrow typed table, vectorised JSON text) agree value for value."""
    _, pq_root = make(tmp_path / "pq", format="parquet", seed=9)
    _, js_root = make(tmp_path / "js", format="jsonl", seed=9)
    for pf, jf in zip(data_files(pq_root), data_files(js_root), strict=True):
        expected = pq.read_table(pf).to_pylist()
        got = [json.loads(line) for line in read_lines(jf)[0]]
        assert len(got) == len(expected)
        for e, g in zip(expected, got, strict=True):
            e["event_time"] = int(e["event_time"].timestamp() * 1000)
            g["event_time"] = parse_iso_ms(g["event_time"])
            assert g == e


def test_every_hour_is_a_partition_with_rows_on_a_diurnal_curve(tmp_path):
    summary, root = make(tmp_path, rows=24_000, hours=24, start="2026-11-01T00")
    gen = generation(root)
    parts = [p["partition"] for p in gen["partitions"]]
    assert parts == [f"dt=2026-11-01/hr={h:02d}" for h in range(24)]
    counted = [
        sum(len(read_lines(root / f["path"])[0]) for f in p["files"]) for p in gen["partitions"]
    ]
    assert counted == [p["rows"] for p in gen["partitions"]] == list(summary.rows_per_hour)
    assert sum(counted) == 24_000 == gen["rows_written"]
    assert counted[20] > 3 * counted[8]  # evening peak vs morning trough (4:1 curve)


def test_event_times_are_uniform_within_the_hour_and_ordered_in_files(tmp_path):
    _, root = make(tmp_path, rows=30_000, format="parquet", files_per_hour=2)
    bins, sub_second = [0] * 6, 0
    for f in data_files(root):
        times = pq.read_table(f, columns=["event_time"]).column(0).cast("int64").to_numpy()
        assert (times[1:] >= times[:-1]).all()  # time-ordered within a file
        for b in ((times - hour_start_ms(root, f)) // (HOUR_MS // 6)).tolist():
            bins[b] += 1
        sub_second += int((times % 1000 != 0).sum())
    expected = 30_000 / 6
    assert all(abs(b - expected) < 0.05 * expected for b in bins), bins
    assert sub_second > 0.99 * 30_000 * 0.99  # millisecond precision, not whole seconds


def test_rows_below_hours_still_write_every_partition(tmp_path):
    summary, root = make(tmp_path, rows=3, hours=6)
    assert summary.rows_written == 3
    assert len(data_files(root)) == 6  # empty hours still get (empty) files
