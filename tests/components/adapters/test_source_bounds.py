"""The MovieLens-1M adapter's printed next steps run as printed and pass (raw validation with
MovieLens' bounds, the ETL with its preset, episode validation), and the bounds are the
source's: a MovieLens-shaped hour (60 % "clicks", 10x the ratings of the hour before) passes
with MovieLens' bounds and fails with an ad log's, on both the click rate and the row count."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from components.cli import main
from components.validation.suites import SOURCE_THRESHOLDS, Thresholds
from tests.components.adapters.published import write_ml1m

pytestmark = pytest.mark.spark

HOUR0 = 978_134_400  # 2000-12-30T00 UTC


def _two_hours_of_ratings(src: Path) -> None:
    """Hour 1: 16 users x 20 ratings, 60 % of them 4 or 5; hour 0: 32 ratings (a tenth), as
    MovieLens' volume varies (days of 1 to 3,550 ratings in MovieLens-100K)."""
    write_ml1m(src, users=16, movies=30, ratings_per_user=20, start=HOUR0 + 3600,
               spread_s=3600, bad=False, like_rate=0.6)  # fmt: skip
    with open(src / "ratings.dat", "a", encoding="latin-1") as f:
        for i in range(32):
            f.write(f"{1 + i % 16}::{1 + i % 30}::{1 + i % 5}::{HOUR0 + 100 * i}\n")


def _failed(text: str) -> set[str]:
    return {line.split()[1] for line in text.splitlines() if line.startswith("FAIL")}


def test_printed_next_steps_run_as_printed_and_the_bounds_are_the_sources(tmp_path, capsys) -> None:
    src, out = tmp_path / "ml-1m", tmp_path / "raw ml"  # a space: printed paths are quoted
    _two_hours_of_ratings(src)
    assert main(["adapt", "movielens-1m", "--src", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    steps = [shlex.split(line) for line in printed.split("next, in order:\n")[1].splitlines()]
    assert [s[:3] for s in steps] == [
        ["metarec", "validate", "raw"],
        ["metarec", "etl", "--input"],
        ["metarec", "validate", "episodes"],
    ]
    bounds = SOURCE_THRESHOLDS["movielens"].flags()
    assert steps[0][-len(bounds) :] == bounds == steps[2][-len(bounds) :]
    assert steps[1][-4:] == ["--task-key", "user_id", "--feature-preset", "small"]
    for argv in steps:
        assert main(argv[1:]) == 0, (argv, capsys.readouterr())
    text = capsys.readouterr().out
    assert "raw validation PASSED" in text and "episodes validation PASSED" in text

    # Hour 1 against hour 0 (found as the previous interval): MovieLens' bounds pass it ...
    hour1 = ["validate", "raw", "--input", str(out), "--start", "2000-12-30T01", "--end",
             "2000-12-30T02"]  # fmt: skip
    assert main([*hour1, *bounds]) == 0, capsys.readouterr().out
    capsys.readouterr()
    # ... an ad log's fail it, on the click rate and on the row count, and nothing else.
    assert Thresholds().flags() == []
    assert main(hour1) == 1
    assert _failed(capsys.readouterr().out) == {"label_rate:click", "row_count_vs_previous"}
