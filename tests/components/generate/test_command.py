"""``metarec generate``: help, a run, and clear errors for bad options."""

from __future__ import annotations

import json

import pytest

from components.cli import main
from components.generate import GeneratorConfig
from tests.components.generate.helpers import data_files, make

OPTIONS = (
    "--rows",
    "--out",
    "--start",
    "--hours",
    "--seed",
    "--format",
    "--corrupt",
    "--num-users",
    "--num-campaigns",
    "--num-advertisers",
    "--ads-per-campaign",
    "--zipf",
    "--cold-start-fraction",
    "--ctr",
    "--files-per-hour",
    "--overwrite",
    "--cvr",
    "--corrupt-kinds",
    "--chunk-rows",
    "--preference-strength",
)


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option in text, option
    assert "_generation.json" in text and "byte-identical" in text


def test_cli_run_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "raw"
    code = main(
        [
            "generate",
            "--rows",
            "2000",
            "--out",
            str(out),
            "--hours",
            "3",
            "--num-users",
            "1000",
            "--num-campaigns",
            "100",
            "--format",
            "jsonl.gz",
            "--corrupt",
            "0.05",
            "--zipf",
            "users=1.05,campaigns=1.3",
            "--seed",
            "4",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_written"] == 2000 and report["files"] == 3
    gen = json.loads((out / "_generation.json").read_text())
    assert gen["config"]["zipf_users"] == 1.05 and gen["config"]["zipf_campaigns"] == 1.3
    assert gen["config"]["zipf_ads"] == 1.2  # untouched entities keep their default
    assert gen["seed"] == 4 and gen["file_format"] == "jsonl.gz"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rows", "0"], "--rows 0"),
        (["--rows", "10"], "--rows 10: metarec generate writes 1,000 ... 100,000,000 rows"),
        (["--rows", "999"], "--rows 999"),
        (["--rows", "100000001"], "--rows 100000001"),
        (["--rows", "2000000000"], "--rows 2000000000"),
        (["--hours", "0"], "--hours 0"),
        (["--corrupt", "0.9"], "--corrupt 0.9"),
        (["--corrupt", "0.1", "--corrupt-kinds", "gremlins"], "unknown corruption kind 'gremlins'"),
        (
            ["--format", "parquet", "--corrupt", "0.1", "--corrupt-kinds", "malformed_garbage"],
            "needs a text format",
        ),
        (["--start", "2026-11-01T05:30"], "aligned to a whole UTC hour"),
        (["--start", "yesterday"], "not an ISO-8601 time"),
        (["--zipf", "steep"], "--zipf 'steep'"),
        (["--zipf", "users=0"], "Zipf exponent for users is 0.0"),
        (["--cold-start-fraction", "1"], "--cold-start-fraction 1.0"),
        (["--ctr", "0"], "--ctr 0.0"),
        (["--num-users", "0"], "--num-users 0"),
        (["--files-per-hour", "0"], "--files-per-hour 0"),
        (["--ads-per-campaign", "0.5"], "--ads-per-campaign 0.5"),
    ],
)
def test_bad_options_get_one_clear_line(tmp_path, capsys, args, message):
    code = main(["generate", "--out", str(tmp_path / "raw"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("metarec generate: error: ") and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "raw").exists()  # validated before anything is written


def test_the_documented_row_range_is_inclusive(tmp_path, capsys):
    small = ["--hours", "1", "--num-users", "100", "--num-campaigns", "10"]
    assert main(["generate", "--out", str(tmp_path / "raw"), "--rows", "1000", *small]) == 0
    assert json.loads(capsys.readouterr().out)["rows_written"] == 1000


def test_unknown_format_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--format", "csv"])
    assert exit_.value.code == 2
    assert "invalid choice: 'csv'" in capsys.readouterr().err


def test_non_empty_output_needs_overwrite(tmp_path, capsys):
    _, root = make(tmp_path / "raw", files_per_hour=3)
    assert main(["generate", "--out", str(root), "--rows", "1000"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # With --overwrite the previous output is replaced, not merged into.
    make(tmp_path / "raw", files_per_hour=1, overwrite=True)
    assert len(data_files(root)) == 6


def test_overwrite_never_clears_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("precious")
    code = main(["generate", "--out", str(tmp_path), "--rows", "1000", "--overwrite"])
    assert code == 2
    assert "does not write" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_config_rejects_non_integer_counts():
    with pytest.raises(ValueError, match="--rows must be an integer"):
        GeneratorConfig(rows=1.5)


def test_output_can_be_a_filesystem_uri(tmp_path):
    summary, _ = make(f"file://{tmp_path}/raw", rows=500)
    assert summary.rows_written == 500
    assert len(data_files(tmp_path / "raw")) == 6
    assert (tmp_path / "raw" / "_generation.json").is_file()
