"""``metarec etl``: help text and a run through ``components.cli.main``."""

from __future__ import annotations

import json

import pytest

from components import cli
from tests.components.etl import rawdata

OPTIONS = (
    "--input", "--output", "--start", "--end", "--format", "--allow-missing", "--max-lateness",
    "--task-key", "--k", "--q", "--min-support", "--min-query", "--buckets", "--cold-fraction",
    "--valid-fraction", "--features", "--row-group-bytes", "--shuffle-partitions", "--master",
    "--conf", "--json", "--verbose",
)  # fmt: skip


def test_help_explains_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["etl", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option in OPTIONS:
        assert option in text, option
    for default in ("(default: auto)", "(default: campaign_id)", "(default: 32)", "(default: 8)",
                    "(default: 16)", "(default: 0.1)", "default: 1h", "(default: 64MiB)",
                    "user_id:1000003", "user_interests:10007x5", "bid_price:log1p", "local[*]"):  # fmt: skip
        assert default in text, default
    assert "spark-submit components/etl/job.py" in text


def test_bad_option_values_are_one_line_errors(tmp_path, capsys):
    rc = cli.main(["etl", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                   "--start", "2026-11-01T00", "--end", "2026-11-01T02"])  # fmt: skip
    err = capsys.readouterr().err
    assert (
        rc == 2
        and "error: " in err
        and "2 of 2 hourly partitions" in err
        and "Traceback" not in err
    )
    with pytest.raises(SystemExit):
        cli.main(
            [
                "etl",
                "--input",
                "x",
                "--output",
                "y",
                "--start",
                "a",
                "--end",
                "b",
                "--task-key",
                "shop",
            ]
        )
    assert "invalid choice: 'shop'" in capsys.readouterr().err


@pytest.mark.spark
def test_cli_run_on_tiny_input(spark, tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    rawdata.hours_of(raw, range(2), rows_per_hour=24, campaigns=2)
    spec = tmp_path / "spec.toml"
    spec.write_text('[[features]]\nname = "user_id"\nbuckets = 101\n[[features]]\nname = "ad_tags"\n'
                    'buckets = 11\nkind = "multi"\nslots = 2\n')  # fmt: skip
    rc = cli.main([
        "etl", "--input", str(raw), "--output", str(out), "--start", "2026-11-01T00",
        "--end", "2026-11-01T02", "--k", "4", "--q", "4", "--min-support", "2", "--min-query", "2",
        "--buckets", "2", "--features", str(spec), "--shuffle-partitions", "2", "--json",
    ])  # fmt: skip
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows_read"] == result["rows_kept"] == 48 and result["rows_quarantined"] == 0
    manifest = json.loads((out / "interval=20261101T00-20261101T02" / "_manifest.json").read_text())
    assert [f["name"] for f in manifest["features"]] == ["user_id", "ad_tags"]
    assert manifest["dense_features"] == []
    assert sum(s["episodes"] for s in manifest["splits"].values()) == 6


def test_job_main_is_the_same_command(tmp_path, capsys):
    from components.etl import job

    rc = job.main(["--input", str(tmp_path / "none"), "--output", str(tmp_path / "o"),
                   "--start", "2026-11-01T00", "--end", "2026-11-01T01"])  # fmt: skip
    assert rc == 2 and "does not exist" in capsys.readouterr().err
