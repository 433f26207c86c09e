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

examples:
  metarec etl --input out/raw --output out/episodes --start 2026-11-01T00 --end 2026-11-02T00
  metarec etl --input s3://logs/raw --output s3://ml/episodes --start 2026-11-01T00 \\
      --end 2026-11-01T06 --task-key advertiser_id --k 16 --q 16 --features spec.toml
  spark-submit components/etl/job.py <same options>      # on a cluster
"""

from __future__ import annotations

import argparse
import json
import re

from components.etl.config import (
    DEFAULT_DENSE,
    DEFAULT_FEATURES,
    INPUT_FORMATS,
    EtlConfig,
    load_feature_spec,
    parse_duration,
)
from components.raw_schema import TASK_KEYS

_D = EtlConfig.__dataclass_fields__  # defaults live in one place: the config


def _default(name: str):
    return _D[name].default


def parse_bytes(text: str) -> int:
    """``64MiB``, ``8M``, ``1G`` or a plain number of bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 64MiB, 8M or 1048576")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def _duration(text: str):
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``metarec etl`` (and of ``job.py`` under spark-submit)."""
    io = parser.add_argument_group("input and output")
    io.add_argument(
        "--input",
        required=True,
        metavar="URI",
        help="raw log root holding dt=YYYY-MM-DD/hr=HH/ partitions (path or URI)",
    )
    io.add_argument(
        "--output",
        required=True,
        metavar="URI",
        help="output root; the interval is written to <output>/interval=<start>-<end>/",
    )
    io.add_argument(
        "--start",
        required=True,
        metavar="HOUR",
        help="interval start, UTC hour, inclusive (e.g. 2026-11-01T00)",
    )
    io.add_argument(
        "--end",
        required=True,
        metavar="HOUR",
        help="interval end, UTC hour, exclusive (e.g. 2026-11-02T00)",
    )
    io.add_argument(
        "--format",
        dest="input_format",
        choices=INPUT_FORMATS,
        default=_default("input_format"),
        help="raw file format; auto = from the file names, mixing is an error (default: %(default)s)",
    )
    io.add_argument(
        "--allow-missing",
        action="store_true",
        help="process the interval even if some hourly partitions are missing (they are "
        "listed in the manifest); by default a missing hour is an error",
    )
    io.add_argument(
        "--max-lateness",
        type=_duration,
        default="1h",
        metavar="DURATION",
        help="how much older than its partition hour an event may be; older events are "
        "quarantined as event_time_out_of_range (e.g. 30m, 2h; default: %(default)s)",
    )

    ep = parser.add_argument_group("episodes")
    ep.add_argument(
        "--task-key",
        choices=TASK_KEYS,
        default=_default("task_key"),
        help="raw id column that defines a task (default: %(default)s)",
    )
    ep.add_argument(
        "--k",
        dest="k_support",
        type=int,
        metavar="K",
        default=_default("k_support"),
        help="K: support samples per episode, the older ones (default: %(default)s)",
    )
    ep.add_argument(
        "--q",
        dest="q_query",
        type=int,
        metavar="Q",
        default=_default("q_query"),
        help="Q: query samples per episode, the newer ones (default: %(default)s)",
    )
    ep.add_argument(
        "--min-support",
        type=int,
        metavar="N",
        default=_default("min_support"),
        help="episodes with fewer real support samples are not emitted; their rows are "
        "quarantined as episode_too_small (default: %(default)s)",
    )
    ep.add_argument(
        "--min-query",
        type=int,
        metavar="N",
        default=_default("min_query"),
        help="episodes with fewer real query samples are not emitted (default: %(default)s)",
    )
    ep.add_argument(
        "--buckets",
        dest="num_buckets",
        type=int,
        metavar="B",
        default=_default("num_buckets"),
        help="task buckets = files per split; ranks read disjoint buckets (default: %(default)s)",
    )
    ep.add_argument(
        "--cold-fraction",
        type=float,
        metavar="F",
        default=_default("cold_fraction"),
        help="share of tasks (by a stable hash of the task key) held out whole as "
        "test_cold (default: %(default)s)",
    )
    ep.add_argument(
        "--valid-fraction",
        type=float,
        metavar="F",
        default=_default("valid_fraction"),
        help="latest share of the interval: warm tasks' episodes whose first query sample "
        "falls in it go to valid, earlier ones to train (default: %(default)s)",
    )
    ep.add_argument(
        "--features",
        metavar="FILE",
        help="feature spec file (TOML or JSON: [[features]] name, buckets, source, kind, "
        "slots; [[dense]] name, transform; see components/etl/config.py). Default, "
        f"name:buckets[xslots]: {_default_spec()}",
    )

    sp = parser.add_argument_group("Spark and files")
    sp.add_argument(
        "--row-group-bytes",
        type=parse_bytes,
        default="64MiB",
        metavar="SIZE",
        help="target Parquet row-group size (parquet.block.size) (default: %(default)s)",
    )
    sp.add_argument(
        "--shuffle-partitions",
        type=int,
        metavar="N",
        default=_default("shuffle_partitions"),
        help="partitions of the small de-duplication aggregate; AQE coalesces them "
        "(default: %(default)s)",
    )
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
    """Build the validated config from parsed options."""
    extra = {}
    if args.features:
        features, dense = load_feature_spec(args.features)
        extra = {"features": features, "dense_features": dense}
    return EtlConfig(
        input=args.input,
        output=args.output,
        start=args.start,
        end=args.end,
        input_format=args.input_format,
        task_key=args.task_key,
        k_support=args.k_support,
        q_query=args.q_query,
        min_support=args.min_support,
        min_query=args.min_query,
        num_buckets=args.num_buckets,
        cold_fraction=args.cold_fraction,
        valid_fraction=args.valid_fraction,
        max_lateness=args.max_lateness,
        row_group_bytes=args.row_group_bytes,
        shuffle_partitions=args.shuffle_partitions,
        allow_missing=args.allow_missing,
        **extra,
    )


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
