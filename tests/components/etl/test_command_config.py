"""``metarec etl`` reads its settings through the project's config loader: one option per EtlConfig
field (generated from the dataclass), a ``--config`` TOML file and ``key=value`` overrides, with
errors that name the key. No Spark."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from components.etl import command
from components.etl.config import EtlConfig, EtlSettings, FeatureConfig
from trainer.config_loader import field_docs, flag_of

INTERVAL = ["--input", "/raw", "--output", "/out", "--start", "2026-11-01T00",
            "--end", "2026-11-01T06"]  # fmt: skip
NOT_OPTIONS = {"features", "dense_features", "extra"}
"""EtlConfig fields without an option of their own: the feature spec is a file (``--features``,
or ``[[features]]``/``[[dense_features]]`` in ``--config``); ``extra`` is for programs."""


def parse(*argv: str) -> EtlConfig:
    parser = argparse.ArgumentParser()
    command.configure_parser(parser)
    return command.config_from_args(parser.parse_intermixed_args(list(argv)))


def options() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    command.configure_parser(parser)
    return {a.dest: a for a in parser._actions if a.option_strings}


def test_every_field_has_its_generated_option_with_its_docstring_as_help():
    actions, docs = options(), field_docs(EtlConfig)
    fields = {f.name: f for f in dataclasses.fields(EtlConfig)}
    assert set(fields) - NOT_OPTIONS <= set(actions)
    for name in set(fields) - NOT_OPTIONS:
        action = actions[name]
        assert action.option_strings[0] == flag_of(fields[name]), name  # (+ --no-x for a bool)
        assert docs[name].replace("``", "")[:40] in action.help, name
    # The flags users, manifests and launchers pass stay as they were.
    assert [flag_of(fields[n]) for n in ("input_format", "k_support", "q_query", "num_buckets")] == [
        "--format", "--k", "--q", "--buckets"]  # fmt: skip
    assert set(NOT_OPTIONS) <= {f.name for f in dataclasses.fields(EtlSettings)}


def test_an_option_sets_its_field_with_the_fields_type():
    cfg = parse(*INTERVAL, "--k", "8", "--min-support", "2", "--cold-fraction", "0.25",
                "--max-lateness", "90m", "--row-group-bytes", "2MiB", "--allow-missing",
                "--format", "parquet")  # fmt: skip
    assert cfg == EtlConfig(input="/raw", output="/out", start="2026-11-01T00",
                            end="2026-11-01T06", k_support=8, min_support=2, cold_fraction=0.25,
                            max_lateness=timedelta(minutes=90), row_group_bytes=2 << 20,
                            allow_missing=True, input_format="parquet")  # fmt: skip
    assert parse(*INTERVAL) == EtlConfig(input="/raw", output="/out", start="2026-11-01T00",
                                         end="2026-11-01T06")  # fmt: skip


def test_a_toml_file_then_overrides_then_options(tmp_path: Path):
    path = tmp_path / "etl.toml"
    path.write_text(
        'input = "/raw"\noutput = "/out"\nstart = "2026-11-01T00"\nend = "2026-11-01T06"\n'
        'k_support = 16\nq_query = 16\nmax_lateness = "2h"\n'
        '[[features]]\nname = "user_id"\nbuckets = 101\n'
        '[[dense_features]]\nname = "bid_price"\ntransform = "log1p"\n'
    )
    cfg = parse("--config", str(path), "q_query=12", "--k", "10", "min_query=4")
    assert (cfg.k_support, cfg.q_query, cfg.min_query) == (10, 12, 4)  # option > override > file
    assert cfg.max_lateness == timedelta(hours=2) and cfg.start.hour == 0
    assert cfg.features == (FeatureConfig("user_id", 101),)
    assert [d.name for d in cfg.dense_features] == ["bid_price"]
    # the same settings as plain data read back into the same config
    from trainer.config_loader import build, to_dict

    assert build(EtlConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["k_suport=3"], r"unknown config key\(s\) k_suport in the top level"),
        (["k_support=many"], "k_support: expected int, got str 'many'"),
        (["allow_missing=3"], "allow_missing: expected bool"),
        (["max_lateness=soon"], "max_lateness: 'soon' is not a duration"),
        (['features=[{name = "user_id", buckets = "x"}]'], r"features\[0\].buckets: expected int"),
        (["--k", "4"], r"--min-support \(8\) cannot exceed K"),
    ],
)
def test_a_bad_key_or_value_is_named(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(*INTERVAL, *argv)


def test_a_missing_interval_names_its_options(tmp_path: Path):
    with pytest.raises(ValueError, match="--start, --end required"):
        parse("--input", "/raw", "--output", "/out")
    path = tmp_path / "etl.toml"
    path.write_text("k_suport = 3\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) k_suport"):
        parse("--config", str(path), *INTERVAL)


def test_the_job_does_not_import_the_command_line():
    """``command.py`` runs the job; ``job.py``'s spark-submit entry goes through ``metarec etl``
    (``components.cli``), so the two modules do not import each other."""
    source = Path(command.__file__).with_name("job.py").read_text()
    imported = {
        (node.module or "") + "." + alias.name if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not any("command" in name for name in imported), imported
