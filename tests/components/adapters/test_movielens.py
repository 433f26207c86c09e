"""MovieLens-100K adapter on the real files (skipped where ../shared/data is absent)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from components.adapters import AdapterConfig, adapt
from tests.components.adapters.conftest import assert_raw_output, report, tree_bytes

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def ml_out(ml_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ml") / "raw"
    adapt("movielens", AdapterConfig(src=str(ml_dir), out=str(out)))
    return out


@pytest.fixture(scope="module")
def ml_table(ml_out: Path):
    return assert_raw_output(ml_out)


def _small(src: Path, out: Path, **options) -> AdapterConfig:
    """Options for a few ratings spread over months: no empty-hour files (thousands of them)."""
    return AdapterConfig(src=str(src), out=str(out), fill_empty_hours=False, **options)


def test_every_rating_becomes_one_impression_with_independent_label_counts(
    ml_dir, ml_out, ml_table
):
    ratings = [line.split("\t") for line in (ml_dir / "u.data").read_text().splitlines()]
    acc = report(ml_out)["accounting"]
    assert acc["rows_in"] == len(ratings) == 100_000
    assert acc["rows_written"] == acc["rows_in"] and acc["rows_rejected"] == 0
    table = ml_table
    assert table.num_rows == len(ratings)
    # Labels, counted from u.data without the adapter.
    assert pc.sum(table["click"]).as_py() == sum(int(r[2]) >= 4 for r in ratings) == 55_375
    assert pc.sum(table["conversion"]).as_py() == sum(int(r[2]) == 5 for r in ratings)
    assert report(ml_out)["labels"]["clicks"] == 55_375
    # Task key = user: every user of u.data is there with all their ratings.
    per_user = Counter(r[0] for r in ratings)
    written = Counter(table["user_id"].to_pylist())
    assert written == per_user


def test_fields_map_as_documented(ml_dir, ml_table):
    users = {
        f[0]: f for f in (line.split("|") for line in (ml_dir / "u.user").read_text().splitlines())
    }
    items = {
        f[0]: f
        for f in (
            line.split("|")
            for line in (ml_dir / "u.item").read_text(encoding="latin-1").splitlines()
        )
    }
    genres = [line.split("|")[0] for line in (ml_dir / "u.genre").read_text().splitlines() if line]
    ratings = [line.split("\t") for line in (ml_dir / "u.data").read_text().splitlines()[:3000]]
    ids = pa.array([f"ml100k-{user}-{item}-{ts}" for user, item, _, ts in ratings])
    # Only these rows as Python objects (all 100,000 take seconds); a missing one is a KeyError.
    rows = {
        r["event_id"]: r
        for r in ml_table.filter(pc.is_in(ml_table["event_id"], value_set=ids)).to_pylist()
    }
    for user, item, rating, ts in ratings:
        row = rows[f"ml100k-{user}-{item}-{ts}"]
        u, it = users[user], items[item]
        item_genres = [g for g, flag in zip(genres, it[5:], strict=True) if flag == "1"]
        assert row["event_time"].timestamp() == int(ts)
        assert (row["user_id"], row["ad_id"], row["campaign_id"]) == (user, item, item)
        assert row["click"] == int(int(rating) >= 4) and row["conversion"] == int(rating == "5")
        assert row["user_gender"] == u[2].lower() and row["user_segment"] == u[3]
        assert row["region"] == u[4][:3]
        age = int(u[1])
        bucket = (
            "<18"
            if age < 18
            else "18-24"
            if age < 25
            else "25-34"
            if age < 35
            else "35-44"
            if age < 45
            else "45-49"
            if age < 50
            else "50-55"
            if age < 56
            else "56+"
        )
        assert row["user_age_bucket"] == bucket
        assert row["ad_tags"] == item_genres
        assert row["advertiser_id"] == item_genres[0]
        assert row["ad_category"] == "|".join(item_genres)
        assert row["ad_brand"] == (it[2][-4:] or None)
        assert row["scene_id"] == "movielens"


def test_rerun_with_overwrite_is_byte_identical(ml_dir, tmp_path):
    # The ratings of the first two days (a second run of all of u.data would cost ~20 s): hours
    # with and without ratings, the empty ones filled, as in the full run.
    ratings = (ml_dir / "u.data").read_text().splitlines()
    first = min(int(r.split("\t")[3]) for r in ratings)
    window = [r for r in ratings if int(r.split("\t")[3]) < first + 2 * 86_400]
    src = _copy_sources(ml_dir, tmp_path / "src", window)
    out = tmp_path / "out"
    adapt("movielens", AdapterConfig(src=str(src), out=str(out)))
    assert report(out)["output"]["empty_hours_filled"] > 0 and len(window) > 1000
    before = tree_bytes(out)
    with pytest.raises(ValueError, match=r"not empty.*--overwrite"):
        adapt("movielens", AdapterConfig(src=str(src), out=str(out)))
    stale = out / "dt=2001-01-01" / "hr=00"  # left by an earlier, different run
    stale.mkdir(parents=True)
    (stale / "part-00000.parquet").write_bytes(b"old")
    adapt("movielens", AdapterConfig(src=str(src), out=str(out), overwrite=True))
    assert tree_bytes(out) == before


def test_hours_without_ratings_get_empty_partitions(ml_out):
    rep = report(ml_out)["output"]
    hours = sorted(p.parent for p in ml_out.glob("dt=*/hr=*/part-00000.parquet"))
    assert len(hours) == rep["hours_with_rows"] + rep["empty_hours_filled"]
    # The ETL's interval [start, end) is covered hour by hour.
    assert rep["time_range"]["start_hour"] == "1997-09-20T03"
    assert rep["time_range"]["end_hour_exclusive"] == "1998-04-23T00"
    assert len(hours) == 5157  # hours from 1997-09-20T03 to 1998-04-22T23 inclusive


def _copy_sources(ml_dir: Path, dst: Path, ratings: list[str]) -> Path:
    dst.mkdir()
    for name in ("u.user", "u.item"):
        shutil.copy(ml_dir / name, dst / name)
    (dst / "u.data").write_text("\n".join(ratings) + "\n")
    return dst


def test_malformed_lines_are_rejected_with_reason_and_counted(ml_dir, tmp_path):
    good = (ml_dir / "u.data").read_text().splitlines()[:1000]
    bad = {
        3: "196\t242\t3",  # wrong_field_count
        10: "",  # blank_line
        20: "abc\t242\t3\t881250949",  # bad_value:user_id
        30: "196\t242\t7\t881250949",  # bad_value:rating
        40: "196\t99999\t3\t881250949",  # unknown_item
        50: "196\t242\t3\t881250949\t1",  # wrong_field_count
    }
    lines = list(good)
    for at in sorted(bad):
        lines.insert(at - 1, bad[at])  # becomes line `at` of the file
    src = _copy_sources(ml_dir, tmp_path / "src", lines)
    out = tmp_path / "out"
    summary = adapt("movielens", _small(src, out))
    acc = summary.report["accounting"]
    assert acc["rows_in"] == len(lines) == 1006
    assert acc["rows_written"] == 1000
    assert acc["rejected_by_reason"] == {
        "bad_value:rating": 1,
        "bad_value:user_id": 1,
        "blank_line": 1,
        "unknown_item": 1,
        "wrong_field_count": 2,
    }
    rejected = [json.loads(x) for x in (out / "_rejected.jsonl").read_text().splitlines()]
    assert sorted((r["line"], r["reason"]) for r in rejected) == [
        (3, "wrong_field_count"),
        (10, "blank_line"),
        (20, "bad_value:user_id"),
        (30, "bad_value:rating"),
        (40, "unknown_item"),
        (50, "wrong_field_count"),
    ]
    assert {r["line"]: r for r in rejected}[3]["record"] == bad[3]
    assert assert_raw_output(out).num_rows == 1000
    assert "rejected" in summary.render()


def test_a_user_without_profile_keeps_the_row(ml_dir, tmp_path):
    lines = [*(ml_dir / "u.data").read_text().splitlines()[:100], "5000\t242\t5\t881250949"]
    src = _copy_sources(ml_dir, tmp_path / "src", lines)
    summary = adapt("movielens", _small(src, tmp_path / "out"))
    assert summary.report["accounting"]["notes"]["user_without_profile"] == 1
    row = [r for r in assert_raw_output(tmp_path / "out").to_pylist() if r["user_id"] == "5000"]
    assert row[0]["user_gender"] is None and row[0]["click"] == 1


def test_jsonl_output_carries_the_same_records(ml_dir, tmp_path):
    lines = (ml_dir / "u.data").read_text().splitlines()[:500]
    src = _copy_sources(ml_dir, tmp_path / "src", lines)
    adapt("movielens", _small(src, tmp_path / "pq"))
    adapt("movielens", _small(src, tmp_path / "js", format="jsonl"))
    expected = {r["event_id"]: r for r in assert_raw_output(tmp_path / "pq").to_pylist()}
    seen = 0
    for f in sorted((tmp_path / "js").glob("dt=*/hr=*/part-*.jsonl")):
        dt, hr = f.parent.parent.name[3:], f.parent.name[3:]
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            want = expected[rec["event_id"]]
            assert list(rec) == [k for k in want if k not in ("dt", "hr")]
            assert rec["event_time"] == want["event_time"].strftime("%Y-%m-%dT%H:%M:%S.000Z")
            assert rec["event_time"].startswith(f"{dt}T{hr}")
            assert {k: v for k, v in rec.items() if k != "event_time"} == {
                k: v for k, v in want.items() if k not in ("event_time", "dt", "hr")
            }
            seen += 1
    assert seen == 500


def test_missing_files_and_wrong_directory_give_clear_errors(ml_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(ml_dir / "u.data", partial / "u.data")
    with pytest.raises(FileNotFoundError, match=r"missing u\.user, u\.item.*grouplens"):
        adapt("movielens", AdapterConfig(src=str(partial), out=str(tmp_path / "o")))
    with pytest.raises(FileNotFoundError, match=r"does not exist.*u\.data.*grouplens"):
        adapt("movielens", AdapterConfig(src=str(tmp_path / "nope"), out=str(tmp_path / "o")))
    nested = tmp_path / "download"
    shutil.copytree(
        ml_dir,
        nested / "ml-100k",
        ignore=shutil.ignore_patterns("u[0-9ab]*.base", "u[0-9ab]*.test"),
    )
    with pytest.raises(FileNotFoundError, match=r"did you mean --src .*ml-100k"):
        adapt("movielens", AdapterConfig(src=str(nested), out=str(tmp_path / "o")))
