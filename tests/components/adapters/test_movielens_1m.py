"""MovieLens-1M adapter on small files written in the published format (``::``, latin-1)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from components.adapters import AdapterConfig, adapt
from components.adapters.movielens_1m import AGE_CODES, OCCUPATIONS
from tests.components.adapters.conftest import assert_raw_output, report, tree_bytes
from tests.components.adapters.published import ML1M_BAD_RATINGS, write_ml1m


@pytest.fixture(scope="module")
def ml1m(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:
    src = tmp_path_factory.mktemp("ml1m") / "ml-1m"
    valid = write_ml1m(src)
    out = src.parent / "raw"
    adapt("movielens-1m", AdapterConfig(src=str(src), out=str(out)))
    return src, out, valid


def test_every_line_is_written_or_rejected_with_its_reason(ml1m) -> None:
    src, out, valid = ml1m
    lines = (src / "ratings.dat").read_text(encoding="latin-1").splitlines()
    acc = report(out)["accounting"]
    assert acc["rows_in"] == len(lines) == len(valid) + len(ML1M_BAD_RATINGS)
    assert acc["rows_written"] == len(valid)
    assert acc["rejected_by_reason"] == dict(Counter(reason for _, reason in ML1M_BAD_RATINGS))
    assert acc["notes"]["user_without_profile"] == sum(r[0] == "99" for r in valid) > 0
    rejected = [json.loads(x) for x in (out / "_rejected.jsonl").read_text().splitlines()]
    for entry in rejected:  # each rejection points at its line
        line = lines[entry["line"] - 1]
        assert (line, entry["reason"]) in ML1M_BAD_RATINGS
    assert len(rejected) == len(ML1M_BAD_RATINGS)


def test_fields_map_as_documented(ml1m) -> None:
    src, out, valid = ml1m
    table = assert_raw_output(out)
    users = {f[0]: f for f in (x.split("::") for x in (src / "users.dat").read_text().splitlines())}
    movies = {
        f[0]: f
        for f in (
            x.split("::") for x in (src / "movies.dat").read_text(encoding="latin-1").splitlines()
        )
    }
    rows = {r["event_id"]: r for r in table.to_pylist()}
    assert len(rows) == len(valid)
    for user, movie, rating, ts in valid:
        row = rows[f"ml1m-{user}-{movie}-{ts}"]
        title, genres = movies[movie][1], movies[movie][2]
        assert row["event_time"].timestamp() == int(ts)
        assert (row["user_id"], row["ad_id"], row["campaign_id"]) == (user, movie, movie)
        assert row["click"] == int(int(rating) >= 4) and row["conversion"] == int(rating == "5")
        assert row["advertiser_id"] == genres.split("|")[0] and row["ad_category"] == genres
        assert row["ad_tags"] == genres.split("|") and row["scene_id"] == "movielens"
        assert row["ad_brand"] == (title[-5:-1] if title.endswith(")") else None)
        if user in users:
            _, gender, age, occupation, zipcode = users[user]
            assert row["user_gender"] == gender.lower()
            assert row["user_age_bucket"] == AGE_CODES[age]
            assert row["user_segment"] == OCCUPATIONS[occupation]
            assert row["region"] == zipcode[:3]
        else:
            assert row["user_gender"] is row["user_age_bucket"] is row["region"] is None
    assert "Misérables" in (src / "movies.dat").read_text(encoding="latin-1")  # latin-1 read


def test_bad_side_table_lines_are_accounted_and_their_entities_unknown(tmp_path) -> None:
    src = tmp_path / "ml-1m"
    valid = write_ml1m(src, bad=False)
    with open(src / "users.dat", "a", encoding="latin-1") as f:
        f.write("13::F::17::3::12345\n")  # 17 is no age code
    with open(src / "movies.dat", "a", encoding="latin-1") as f:
        f.write("11::Empty (2000)::\n12::Broken::Drama::extra\n")
    with open(src / "ratings.dat", "a", encoding="latin-1") as f:
        f.write("13::1::4::978300001\n1::11::4::978300002\n")
    out = tmp_path / "raw"
    summary = adapt("movielens-1m", AdapterConfig(src=str(src), out=str(out)))
    acc = summary.report["accounting"]
    assert acc["side_tables"]["users.dat"]["rejected_by_reason"] == {"bad_value:age": 1}
    assert acc["side_tables"]["movies.dat"]["rejected_by_reason"] == {
        "missing:genres": 1,
        "wrong_field_count": 1,
    }
    assert acc["rejected_by_reason"] == {"unknown_item": 1}  # movie 11 has no genre
    assert acc["notes"]["user_without_profile"] == 1  # user 13's profile line was bad
    assert acc["rows_written"] == len(valid) + 1


def test_rerun_is_byte_identical_and_the_source_is_listed(ml1m, tmp_path, capsys) -> None:
    from components.cli import main

    src, out, _ = ml1m
    again = tmp_path / "raw"
    assert main(["adapt", "movielens-1m", "--src", str(src), "--out", str(again)]) == 0
    assert tree_bytes(again) == tree_bytes(out)
    printed = capsys.readouterr().out
    assert "--task-key user_id" in printed and "--ctr-min 0.1 --ctr-max 0.9" in printed


def test_missing_files_name_what_to_download(tmp_path) -> None:
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ratings.dat").write_text("1::1::5::978300760\n")
    with pytest.raises(FileNotFoundError, match=r"missing users.dat, movies.dat.*ml-1m.zip"):
        adapt("movielens-1m", AdapterConfig(src=str(tmp_path / "ml-1m"), out=str(tmp_path / "o")))
