"""The raw-log suite: clean partitions pass, a little corruption is tolerated, systemic problems fail."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from components.cli import main as cli
from components.validation import Thresholds, validate_raw

from .builders import START, make_raw_rows, write_raw

pytestmark = pytest.mark.spark

END = START + dt.timedelta(hours=2)


def _failed(report) -> set[str]:
    return {c.name for c in report.failed}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_clean_raw_logs_pass(spark, tmp_path, fmt):
    root = write_raw(tmp_path / "raw", make_raw_rows(), fmt)
    report = validate_raw(str(root), START, END, spark, report_dir=str(tmp_path / "dq"))

    assert report.success, report.to_text()
    assert report.parameters["format"] == fmt
    for name in (
        "not_null:user_id",
        "unique:event_id",
        "label_values:click",
        "range:bid_price",
        "label_rate:click",
        "event_time_in_interval",
        "partitions_present",
    ):
        assert report.check(name).success and not report.check(name).skipped
    # Parquet has a schema to check; JSONL does not, and the report says so.
    assert report.check("columns_present").skipped == (fmt == "jsonl")
    assert report.check("row_count_vs_previous").skipped
    ctr = float(report.check("label_rate:click").observed)
    assert 0.0 < ctr < 0.2
    written = json.loads((tmp_path / "dq" / "report.json").read_text())
    assert written["success"] is True and written["kind"] == "raw"
    assert (tmp_path / "dq" / "report.md").read_text().startswith("# raw validation: passed")


def _write_jsonl_lines(root, lines: list[str], hour: dt.datetime) -> None:
    d = root / f"dt={hour:%Y-%m-%d}" / f"hr={hour:%H}"
    with open(d / "part-00001.jsonl", "w") as f:
        f.write("\n".join(lines) + "\n")


def test_a_little_row_level_corruption_is_tolerated(spark, tmp_path):
    rows = make_raw_rows(400)
    rows[3]["user_id"] = None
    rows[4]["click"] = 7
    rows[5]["bid_price"] = -1.0
    rows[6]["event_id"] = rows[7]["event_id"]
    root = write_raw(tmp_path / "raw", rows)
    _write_jsonl_lines(root, ['{"event_id": "e-x", "click": 1, "user_id": "u-', "garbage"], START)

    report = validate_raw(str(root), START, END, spark)

    assert report.success, report.to_text()
    c = report.check("malformed_records")
    assert c.success and "mostly" in c.expected


def test_systemic_nulls_and_a_crazy_ctr_fail(spark, tmp_path):
    rng = random.Random(1)
    rows = make_raw_rows(400)
    for i, r in enumerate(rows):
        if i % 2 == 0:
            r["user_id"] = None
        r["click"] = 1 if rng.random() < 0.9 else 0
    root = write_raw(tmp_path / "raw", rows)

    report = validate_raw(str(root), START, END, spark)

    assert not report.success and report.exit_code == 1
    assert _failed(report) == {"not_null:user_id", "label_rate:click"}, report.to_text()
    nulls = report.check("not_null:user_id")
    assert nulls.unexpected_count == 200 and nulls.unexpected_percent == pytest.approx(50.0)
    assert nulls.examples and "event_id" in nulls.examples[0]
    assert float(report.check("label_rate:click").observed) > 0.8


def test_systemic_type_and_duplicate_problems_fail(spark, tmp_path):
    rows = make_raw_rows(300)
    for i, r in enumerate(rows):
        if i % 5 == 0:
            r["bid_price"] = "abc"  # a producer writing prices as text
        if i % 4 == 0 and i:
            r["event_id"] = rows[i - 1]["event_id"]  # replayed events
    root = write_raw(tmp_path / "raw", rows)

    report = validate_raw(str(root), START, END, spark)

    assert _failed(report) == {"type:bid_price", "unique:event_id"}, report.to_text()


def test_parquet_missing_column_fails_columns_present(spark, tmp_path):
    import pyarrow.parquet as pq

    root = write_raw(tmp_path / "raw", make_raw_rows(), "parquet")
    for f in root.glob("dt=*/hr=*/*.parquet"):
        pq.write_table(pq.read_table(f).drop(["ad_tags"]), f)

    report = validate_raw(str(root), START, END, spark)

    assert _failed(report) == {"columns_present"}
    assert "ad_tags" in report.check("columns_present").observed


def test_row_count_far_from_the_previous_interval_fails(spark, tmp_path):
    prev_start = START - (END - START)
    rows = make_raw_rows(40, start=prev_start) + make_raw_rows(400, start=START, seed=1)
    for i, r in enumerate(rows):
        r["event_id"] = f"e-{i:08d}"
    root = write_raw(tmp_path / "raw", rows)

    report = validate_raw(str(root), START, END, spark)
    assert _failed(report) == {"row_count_vs_previous"}, report.to_text()
    assert report.check("row_count_vs_previous").observed == "400"
    assert report.parameters["row_count_max"] == 120

    looser = validate_raw(str(root), START, END, spark, thresholds=Thresholds(row_count_ratio=20))
    assert looser.success and not looser.check("row_count_vs_previous").skipped


def test_missing_partition_fails_and_no_data_fails_closed(spark, tmp_path, capsys):
    root = write_raw(tmp_path / "raw", make_raw_rows())
    report = validate_raw(str(root), START, START + dt.timedelta(hours=3), spark)
    assert _failed(report) == {"partitions_present"}
    assert report.check("partitions_present").examples == ["dt=2026-11-01/hr=02"]

    later = START + dt.timedelta(days=3)
    with pytest.raises(ValueError, match="is empty: no data files"):
        validate_raw(str(root), later, later + dt.timedelta(hours=1), spark)
    code = cli(
        [
            "validate",
            "raw",
            "--input",
            str(root),
            "--start",
            "2026-11-04T00",
            "--end",
            "2026-11-04T01",
        ]
    )
    assert code == 2
    assert "is empty: no data files" in capsys.readouterr().err


def test_cli_raw_exit_codes(spark, tmp_path, capsys):
    root = write_raw(tmp_path / "raw", make_raw_rows())
    args = [
        "validate",
        "raw",
        "--input",
        str(root),
        "--start",
        "2026-11-01T00",
        "--end",
        "2026-11-01T02",
    ]
    assert cli([*args, "--report-dir", str(tmp_path / "dq")]) == 0
    out = capsys.readouterr().out
    assert "raw validation PASSED" in out and str(tmp_path / "dq" / "report.md") in out

    assert cli([*args, "--ctr-min", "0.5", "--ctr-max", "0.9"]) == 1
    out = capsys.readouterr().out
    assert "FAIL label_rate:click" in out

    assert cli([*args, "--ctr-min", "0.9", "--ctr-max", "0.1"]) == 2
    assert "ctr_min" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet"])
def test_generated_logs_with_realistic_corruption_pass(spark, tmp_path, fmt):
    # The generator's corruption (malformed lines, wrong types, replays, ...) is row-level noise
    # that the ETL quarantines; at 2 % it is below every tolerance of the raw suite.
    from components.generate import GeneratorConfig, generate

    out = tmp_path / "raw"
    generate(
        GeneratorConfig(
            out=str(out),
            format=fmt,
            rows=6000,
            hours=4,
            corrupt=0.02,
            num_users=500,
            num_campaigns=40,
            seed=5,
        )
    )
    mid = START + dt.timedelta(hours=2)
    report = validate_raw(str(out), mid, mid + dt.timedelta(hours=2), spark)

    assert report.success, report.to_text()
    assert report.parameters["format"] == fmt
    assert not report.check("row_count_vs_previous").skipped  # hours 0-1 are the previous interval


def test_parquet_previous_interval_rows_come_from_the_footers(spark, tmp_path):
    prev_start = START - (END - START)
    rows = make_raw_rows(40, start=prev_start) + make_raw_rows(400, start=START, seed=1)
    for i, r in enumerate(rows):
        r["event_id"] = f"e-{i:08d}"
    root = write_raw(tmp_path / "raw", rows, "parquet")

    report = validate_raw(str(root), START, END, spark)

    assert _failed(report) == {"row_count_vs_previous"}, report.to_text()
    assert report.parameters["row_count_max"] == 120
    assert any(n.startswith("previous interval: 40 rows") for n in report.notes)
