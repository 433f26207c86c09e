"""``metarec adapt``: help texts, a run through the CLI, and errors as one readable line."""

from __future__ import annotations

import pytest

from components.adapters import SOURCE_NAMES, sources
from components.cli import main


def test_adapt_help_lists_every_source(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["adapt", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in SOURCE_NAMES:
        assert name in text
    assert "rows in = rows written + rows rejected" in text


@pytest.mark.parametrize(
    ("source", "mentions"),
    [
        ("movielens", ["u.data", "u.user", "u.item", "rating >= 4", "grouplens.org", "--src"]),
        (
            "taobao",
            [
                "raw_sample.csv",
                "ad_feature.csv",
                "user_profile.csv",
                "tianchi.aliyun.com",
                "campaign_id",
                "customer",
            ],
        ),
        ("taobao-fuxictr", ["click_sequence", "UTC+8"]),
        ("taobao-dmr", ["267", "row order", "--time-step-ms", "--base-time"]),
        ("aliccp", ["purchase", "207", "--time-step-ms", "torch-rechub"]),
    ],
)
def test_source_help_says_what_files_and_what_maps_to_what(capsys, source, mentions):
    with pytest.raises(SystemExit):
        main(["adapt", source, "--help"])
    text = capsys.readouterr().out
    for word in mentions:
        assert word in text, word
    for option in ("--src", "--out", "--format", "--overwrite", "--no-fill-empty-hours"):
        assert option in text


def test_derived_time_options_only_where_times_are_derived():
    table = sources()
    assert {n for n, s in table.items() if s.derived_time} == {"taobao-dmr", "aliccp"}


@pytest.mark.data
def test_cli_run_and_errors(shared_data, tmp_path, capsys):
    src = shared_data / "ctr-samples" / "torch-rechub-ali-ccp"
    out = tmp_path / "out"
    assert main(["adapt", "aliccp", "--src", str(src), "--out", str(out), "--format", "jsonl"]) == 0
    text = capsys.readouterr().out
    assert "200 rows in = 200 written + 0 rejected" in text
    steps = text.split("next, in order:\n")[1].splitlines()
    assert [s.strip() for s in steps] == [  # an ad log: the validator's default click-rate band
        f"metarec validate raw --input {out} --start 2018-01-01T00 --end 2018-01-01T01",
        f"metarec etl --input {out} --output {out}-episodes --start 2018-01-01T00 "
        "--end 2018-01-01T01 --task-key campaign_id",
        f"metarec validate episodes {out}-episodes/interval=20180101T00-20180101T01",
    ]
    assert (out / "_adapter.json").is_file()
    assert main(["adapt", "aliccp", "--src", str(src), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        main(
            ["adapt", "movielens", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("metarec adapt: error: movielens: --src") and "grouplens" in err
    assert "Traceback" not in err
