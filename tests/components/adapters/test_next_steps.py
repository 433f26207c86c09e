"""The adapter's printed next steps run as printed, on one day of real MovieLens ratings: raw
validation with the source's click-rate band, the ETL (with its required --output), and the
episode validation all pass, while an ad log's default band rejects MovieLens' rating-derived
clicks (skipped where ../shared/data is absent)."""

from __future__ import annotations

import datetime as dt
import shlex
import shutil
from pathlib import Path

import pytest

from components.cli import main

pytestmark = [pytest.mark.data, pytest.mark.spark]

DAY = "1997-11-13"  # the busiest day of MovieLens-100K: 3,550 ratings, 57 % of them >= 4


def _one_day_of_movielens(ml_dir: Path, dst: Path) -> Path:
    """The published files, with u.data cut to the ratings of ``DAY`` (UTC)."""
    dst.mkdir()
    for name in ("u.user", "u.item"):
        shutil.copy(ml_dir / name, dst / name)
    with open(ml_dir / "u.data") as src, open(dst / "u.data", "w") as out:
        for line in src:
            when = dt.datetime.fromtimestamp(int(line.split("\t")[3]), dt.UTC)
            if f"{when:%Y-%m-%d}" == DAY:
                out.write(line)
    return dst


def test_printed_next_steps_run_as_printed_and_pass(spark, ml_dir, tmp_path, capsys):
    src = _one_day_of_movielens(ml_dir, tmp_path / "ml-day")
    out = tmp_path / "raw ml"  # a space: the printed paths are shell-quoted
    assert main(["adapt", "movielens", "--src", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    steps = [shlex.split(line) for line in printed.split("next, in order:\n")[1].splitlines()]

    assert [s[:3] for s in steps] == [
        ["metarec", "validate", "raw"],
        ["metarec", "etl", "--input"],
        ["metarec", "validate", "episodes"],
    ]
    band = ["--ctr-min", "0.1", "--ctr-max", "0.9"]
    assert steps[0][-4:] == band and steps[2][-4:] == band
    for argv in steps:
        assert main(argv[1:]) == 0, (argv, capsys.readouterr())
    text = capsys.readouterr().out
    assert "raw validation PASSED" in text and "episodes validation PASSED" in text
    assert (tmp_path / "raw ml-episodes" / "interval=19971113T00-19971114T00").is_dir()

    # The default band is an ad log's, and stays so: it fails these clicks, and only them.
    assert main(steps[0][1:-4]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("FAIL label_rate:click"), failed
