"""Bad input gets a clear, actionable error (or quarantine rows) — never a bare stack trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.etl import extract
from tests.components.etl import rawdata
from tests.components.etl.test_job import make_config


def test_missing_input_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        extract.list_input(make_config(tmp_path / "nope", tmp_path / "out"))


def test_missing_partitions_are_listed(tmp_path):
    rawdata.hours_of(tmp_path, [0, 2], rows_per_hour=5)
    with pytest.raises(
        ValueError, match=r"1 of 3 hourly partitions .* missing: dt=2026-11-01/hr=01\. "
    ) as e:
        extract.list_input(make_config(tmp_path, tmp_path / "out"))
    assert "--allow-missing" in str(e.value)
    listing = extract.list_input(make_config(tmp_path, tmp_path / "out", allow_missing=True))
    assert listing.missing_hours == ["dt=2026-11-01/hr=01"]
    assert listing.files == [
        "dt=2026-11-01/hr=00/part-00000.jsonl",
        "dt=2026-11-01/hr=02/part-00000.jsonl",
    ]


def test_empty_interval(tmp_path):
    for h in range(3):
        rawdata.part_dir(tmp_path, h)  # folders without data files
    (rawdata.part_dir(tmp_path, 0) / "_generation.json").write_text("{}")  # skipped, not data
    with pytest.raises(ValueError, match="is empty: no data files"):
        extract.list_input(make_config(tmp_path, tmp_path / "out"))
    for h in range(3):
        (rawdata.part_dir(tmp_path, h) / "part-00000.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty: its 3 jsonl files hold no rows"):
        extract.list_input(make_config(tmp_path, tmp_path / "out"))


def test_underscore_and_dot_files_are_skipped_and_unknown_names_listed(tmp_path):
    rawdata.hours_of(tmp_path, range(3), rows_per_hour=5)
    (rawdata.part_dir(tmp_path, 1) / ".part-00000.jsonl.crc").write_text("x")
    (rawdata.part_dir(tmp_path, 1) / "_SUCCESS").write_text("")
    (rawdata.part_dir(tmp_path, 1) / "notes.txt").write_text("hello")
    listing = extract.list_input(make_config(tmp_path, tmp_path / "out"))
    assert len(listing.files) == 3 and listing.ignored_files == ["dt=2026-11-01/hr=01/notes.txt"]


def test_mixed_formats(tmp_path):
    rawdata.hours_of(tmp_path, range(2), rows_per_hour=5)
    rawdata.hours_of(tmp_path, range(2, 3), rows_per_hour=5, fmt="parquet")
    with pytest.raises(ValueError, match=r"mixes raw formats \['jsonl', 'parquet'\]"):
        extract.list_input(make_config(tmp_path, tmp_path / "out"))
    with pytest.raises(ValueError, match="also holds parquet files"):
        extract.list_input(make_config(tmp_path, tmp_path / "out", input_format="jsonl"))


def test_corrupt_parquet_file_is_named(tmp_path):
    rawdata.hours_of(tmp_path, range(3), rows_per_hour=5, fmt="parquet")
    bad = rawdata.part_dir(tmp_path, 1) / "part-00000.parquet"
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated: the footer is gone
    not_parquet = rawdata.part_dir(tmp_path, 2) / "part-00001.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(ValueError) as e:
        extract.list_input(make_config(tmp_path, tmp_path / "out"))
    msg = str(e.value)
    assert "2 problem(s)" in msg and "repair or remove" in msg
    assert "dt=2026-11-01/hr=01/part-00000.parquet: not a readable Parquet file" in msg
    assert "dt=2026-11-01/hr=02/part-00001.parquet: not a readable Parquet file" in msg


def test_parquet_column_of_the_wrong_type(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rawdata.hours_of(tmp_path, range(3), rows_per_hour=5, fmt="parquet")
    path = rawdata.part_dir(tmp_path, 0) / "part-00000.parquet"
    t = pq.read_table(path)
    t = t.set_column(t.schema.get_field_index("click"), "click", t["click"].cast(pa.string()))
    pq.write_table(t, path)
    with pytest.raises(
        ValueError,
        match=r"hr=00/part-00000.parquet: column 'click' is string, the raw schema says int8",
    ):
        extract.list_input(make_config(tmp_path, tmp_path / "out"))


def test_unknown_task_key():
    with pytest.raises(ValueError, match="unknown task key 'shop_id': choose one of campaign_id"):
        make_config(Path("in"), Path("out"), task_key="shop_id")


@pytest.mark.spark
def test_k_and_q_larger_than_any_task(spark, tmp_path):
    from components.etl import run_etl

    rawdata.hours_of(tmp_path / "raw", range(3), rows_per_hour=6, campaigns=3)  # 6 rows per task
    config = make_config(
        tmp_path / "raw", tmp_path / "out", k_support=8, q_query=8, min_support=4, min_query=4
    )
    with pytest.raises(
        ValueError,
        match=r"no episode could be formed .* largest task \(campaign_id\) has 6 valid rows.*needs at least min_support \+ min_query = 8",
    ):
        run_etl(config, spark)
    assert not (tmp_path / "out" / config.interval_id).exists()  # nothing half-written
    assert not any((tmp_path / "out" / "_staging").iterdir())


@pytest.mark.spark
def test_only_blank_lines_is_an_empty_interval(spark, tmp_path):
    from components.etl import run_etl

    for h in range(3):
        rawdata.write_jsonl(tmp_path, h, ["", "   "])
    with pytest.raises(ValueError, match="is empty: its 3 jsonl files hold no rows"):
        run_etl(make_config(tmp_path, tmp_path / "out"), spark)


@pytest.mark.spark
def test_allow_missing_gzip_and_uris(spark, tmp_path):
    from dataclasses import replace

    from components.etl import run_etl

    raw = tmp_path / "raw"
    for h in (0, 2):
        rows = [
            rawdata.record(h * 1000 + j, campaign=f"c-{j % 2}", hour=h, second=j * 60)
            for j in range(16)
        ]
        rawdata.write_jsonl(raw, h, rows, name="part-00000.jsonl.gz")
    config = make_config(raw, tmp_path / "out", allow_missing=True, cold_fraction=0.0)
    config = replace(config, input=raw.as_uri(), output=(tmp_path / "out").as_uri())  # file:// URIs
    result = run_etl(config, spark)
    assert (tmp_path / "out" / config.interval_id / "_manifest.json").exists()
    acc = result.manifest.accounting
    assert (
        acc["input"]["missing_hours"] == ["dt=2026-11-01/hr=01"]
        and acc["input"]["format"] == "jsonl.gz"
    )
    assert result.rows_read == result.rows_kept == 32 and result.rows_quarantined == 0
