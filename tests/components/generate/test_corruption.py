"""Corruption counts in _generation.json match what an independent reader finds in the files."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict

import pyarrow.parquet as pq
import pytest

from components.generate.config import CORRUPTION_KINDS
from components.raw_schema import RAW_COLUMNS, fields_of
from tests.components.generate.helpers import (
    HOUR_MS,
    data_files,
    generation,
    hour_start_ms,
    make,
    parse_iso_ms,
    read_lines,
)

REQUIRED = [
    name for name in RAW_COLUMNS if name in {f.name for f in fields_of("id", "time", "label")}
]
REQUIRED.remove("conversion")  # optional label
DENSE = [f.name for f in fields_of("dense")]


def _classify(rec: dict, hour: int) -> tuple[str, str | None]:
    """(observed kind, ETL reason) of one parsed record, by the rules of the raw schema."""
    absent = [f for f in REQUIRED if f not in rec]
    nulls = [f for f in REQUIRED if f in rec and rec[f] is None]
    assert len(absent) + len(nulls) <= 1
    if absent:
        return "missing_required", f"missing:{absent[0]}"
    if nulls:
        return "null_required", f"missing:{nulls[0]}"
    for name in ("event_time", *DENSE, "click", "conversion"):
        value = rec.get(name)
        if name == "event_time":
            bad = parse_iso_ms(value) is None if isinstance(value, str) else False
        else:
            bad = isinstance(value, str)
        if bad:
            return "wrong_type", f"bad_type:{name}"
    for name in DENSE:
        if not math.isfinite(rec[name]):
            return "nonfinite_number", f"bad_value:{name}"
        if rec[name] < 0:
            return "negative_number", f"bad_value:{name}"
    if rec["click"] not in (0, 1):
        return "label_out_of_range", "bad_value:click"
    if rec["conversion"] not in (0, 1, None):
        return "label_out_of_range", "bad_value:conversion"
    t = rec["event_time"] if isinstance(rec["event_time"], int) else parse_iso_ms(rec["event_time"])
    if not hour <= t < hour + HOUR_MS:
        return "time_out_of_range", "event_time_out_of_range"
    if set(rec) - set(RAW_COLUMNS):
        return "extra_fields", None
    return "clean", None


def _count_duplicates(valid: list[tuple[str, object, str]], kinds: Counter, reasons: Counter):
    """``valid`` = (event_id, comparable content, partition); extra copies are duplicates."""
    by_id = defaultdict(list)
    for event_id, content, partition in valid:
        by_id[event_id].append((content, partition))
    cross_hour = 0
    for copies in by_id.values():
        first = copies[0]
        for content, partition in copies[1:]:
            kinds["duplicate_exact" if content == first[0] else "duplicate_conflicting"] += 1
            reasons["duplicate_event_id"] += 1
            cross_hour += partition != first[1]
    return cross_hour


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz"])
def test_jsonl_corruption_counts_match_the_files(tmp_path, fmt):
    summary, root = make(tmp_path, rows=20_000, format=fmt, corrupt=0.06, files_per_hour=2)
    kinds, reasons, valid, rows = Counter(), Counter(), [], 0
    for f in data_files(root):
        hour, partition = hour_start_ms(root, f), f.parent.name
        lines, truncated = read_lines(f)
        rows += len(lines)
        if truncated:
            kinds["truncated_last_line"] += 1
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):
                if not (truncated and i == len(lines) - 1):
                    kinds["malformed (garbage or truncated)"] += 1
                reasons["malformed_record"] += 1
                continue
            kind, reason = _classify(rec, hour)
            if kind != "clean":
                kinds[kind] += 1
            if reason is not None:
                reasons[reason] += 1
            else:
                valid.append((rec["event_id"], line, partition))
    cross_hour = _count_duplicates(valid, kinds, reasons)

    gen = generation(root)
    assert rows == summary.rows_written == gen["rows_written"] == 20_000
    expected = dict(gen["corruption"]["kinds"])
    merged = expected.pop("malformed_garbage") + expected.pop("malformed_truncated")
    assert kinds.pop("malformed (garbage or truncated)") == merged
    assert dict(kinds) == expected
    assert dict(reasons) == gen["corruption"]["reasons"] == summary.expected_reasons
    assert set(gen["corruption"]["kinds"]) == set(CORRUPTION_KINDS)  # every kind occurs
    assert cross_hour > 0  # some conflicting duplicates sit in another hour
    assert 0.05 < gen["corruption"]["rows_corrupted"] / rows < 0.08
    assert gen["corruption"]["rows_expected_valid"] == rows - sum(reasons.values())


def test_parquet_corruption_counts_match_the_files(tmp_path):
    summary, root = make(tmp_path, rows=20_000, format="parquet", corrupt=0.06, files_per_hour=2)
    kinds, reasons, valid, rows = Counter(), Counter(), [], 0
    for f in data_files(root):
        hour, partition = hour_start_ms(root, f), f.parent.name
        for rec in pq.read_table(f).to_pylist():
            rows += 1
            rec["event_time"] = (
                None if rec["event_time"] is None else int(rec["event_time"].timestamp() * 1000)
            )
            kind, reason = _classify(rec, hour)
            if kind != "clean":
                kinds[kind] += 1
            if reason is not None:
                reasons[reason] += 1
            else:
                valid.append((rec["event_id"], json.dumps(rec, sort_keys=True), partition))
    _count_duplicates(valid, kinds, reasons)
    gen = generation(root)
    assert rows == 20_000
    assert all(field.nullable for field in pq.read_schema(data_files(root)[0]))
    assert dict(kinds) == gen["corruption"]["kinds"]
    assert dict(reasons) == gen["corruption"]["reasons"] == summary.expected_reasons
    assert set(kinds) == {
        "null_required",
        "nonfinite_number",
        "negative_number",
        "label_out_of_range",
        "time_out_of_range",
        "duplicate_exact",
        "duplicate_conflicting",
    }


def test_corrupt_kinds_restricts_the_mix(tmp_path):
    summary, _ = make(
        tmp_path,
        rows=5_000,
        corrupt=0.1,
        corrupt_kinds=("duplicate_exact", "duplicate_conflicting", "wrong_type"),
    )
    assert set(summary.corruption) == {"duplicate_exact", "duplicate_conflicting", "wrong_type"}
    assert 400 < sum(summary.corruption.values()) < 600
    assert set(summary.expected_reasons) <= {"duplicate_event_id"} | {
        f"bad_type:{f}" for f in ("click", "conversion", "event_time", *DENSE)
    }


def test_clean_run_reports_no_corruption(tmp_path):
    summary, root = make(tmp_path)
    gen = generation(root)
    assert summary.corruption == {} == gen["corruption"]["kinds"]
    assert gen["corruption"]["rows_expected_valid"] == 3_000
