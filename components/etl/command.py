"""Spark Meta-IO offline stage: raw ad logs -> validated, task-partitioned Parquet episodes.

Reads the hourly partitions dt=YYYY-MM-DD/hr=HH of [--start, --end) under --input (JSONL,
JSONL.gz or Parquet; local path or any pyarrow.fs/Hadoop URI), validates every row (bad rows go to
_quarantine/ with a reason code; rows read = rows kept + rows quarantined), de-duplicates on
event_id, hashes the features (the hash of trainer/data/hashing.py), cuts each task's samples into
episodes of K support + Q query samples (support strictly older than query), splits tasks into
train/valid/test_cold, and writes

    <output>/interval=<start>-<end>/split=<split>/bucket=<bbbbb>/part-00000.parquet
    <output>/interval=<start>-<end>/_quarantine/   and   _manifest.json (written last)

A rerun of an interval replaces only that interval's folder, with byte-identical data files.

The options are EtlConfig's fields (components/etl/config.py); they may also come from a TOML
file (--config, any field by name) and key=value overrides, as the trainer's config does.

examples:
  metarec etl --input out/raw --output out/episodes --start 2026-11-01T00 --end 2026-11-02T00
  metarec etl --input s3://logs/raw --output s3://ml/episodes --start 2026-11-01T00 \\
      --end 2026-11-01T06 --task-key advertiser_id --k 16 --q 16 --features spec.toml
  metarec etl --config etl.toml --start 2026-11-01T00 --end 2026-11-01T06 min_support=4
  spark-submit components/etl/job.py <same options>      # on a cluster
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from components.etl.config import DEFAULT_DENSE, DEFAULT_FEATURES, EtlConfig, load_feature_spec
from trainer.config_loader import (
    add_options,
    apply_overrides,
    build,
    flag_of,
    given_options,
    read_file,
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``metarec etl`` (and of ``job.py`` under spark-submit): one per
    :class:`~components.etl.config.EtlConfig` field, generated from the dataclass
    (``trainer.config_loader.add_options``), plus the feature spec file and Spark's own."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML (or JSON) file of EtlConfig settings: any field below by its name "
        "(k_support = 16, [[features]] and [[dense_features]] tables, ...); the options and "
        "overrides of the command line win over it",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override a setting (a TOML literal), e.g. k_support=16 max_lateness=2h",
    )
    add_options(parser.add_argument_group("settings (EtlConfig fields)"), EtlConfig)
    parser.add_argument(
        "--features",
        metavar="FILE",
        help="feature spec file (TOML or JSON: [[features]] name, buckets, source, kind, "
        "slots; [[dense]] name, transform; see components/etl/config.py). Default, "
        f"name:buckets[xslots]: {_default_spec()}",
    )
    sp = parser.add_argument_group("Spark")
    sp.add_argument(
        "--master",
        metavar="URL",
        help="Spark master when not under spark-submit (default: $METAREC_SPARK_MASTER "
        "or local[*])",
    )
    sp.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark setting, repeatable (e.g. --conf spark.driver.memory=2g)",
    )
    sp.add_argument(
        "--json",
        action="store_true",
        help="print the result (counts, timings, output path) as JSON on stdout",
    )


def config_from_args(args: argparse.Namespace) -> EtlConfig:
    """The validated config of a command line: the ``--config`` file, then the ``key=value``
    overrides, then ``--features``, then the options.

    Raises:
        ValueError: a required setting is missing, or a key or value is invalid (named).
    """
    data = apply_overrides(read_file(args.config) if args.config else {}, args.overrides)
    if args.features:
        features, dense = load_feature_spec(args.features)
        data |= {"features": features, "dense_features": dense}
    data |= given_options(args, EtlConfig)
    missing = [
        flag_of(f)
        for f in dataclasses.fields(EtlConfig)
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{', '.join(missing)} required (as options, or in the --config file)")
    return build(EtlConfig, data)


def run(args: argparse.Namespace) -> int:
    """``metarec etl``: returns the exit code (errors in the input raise ValueError)."""
    config = config_from_args(args)
    conf = {}
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--conf {item!r}: expected KEY=VALUE, e.g. spark.driver.memory=2g")
        conf[key] = value
    from components.etl.extract import check_input

    check_input(config)  # a wrong --input fails in a second, not after the JVM's start
    from components.etl.job import run_etl
    from components.etl.session import build_spark

    spark = build_spark("metarec-etl", master=args.master, conf=conf)
    result = run_etl(config, spark)
    if args.json:
        print(json.dumps({
            "output": result.output, "rows_read": result.rows_read, "rows_kept": result.rows_kept,
            "rows_quarantined": result.rows_quarantined, "reasons": result.reasons,
            "episodes": result.episodes, "seconds": result.seconds,
            "rows_per_second": round(result.rows_per_second, 1), "stage_seconds": result.stage_seconds,
        }, indent=2, sort_keys=True))  # fmt: skip
    else:
        print(result.summary())
    return 0


def _default_spec() -> str:
    sparse = [
        f"{f.name}:{f.buckets}" + (f"x{f.slots}" if f.kind == "multi" else "")
        + (f" (from {f.source})" if f.source != f.name else "")
        for f in DEFAULT_FEATURES
    ]  # fmt: skip
    dense = [f"{d.name}:{d.transform}" for d in DEFAULT_DENSE]
    return ", ".join(sparse) + "; dense " + ", ".join(dense)
