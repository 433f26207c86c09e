"""metarec validate: the great-expectations data-quality gate for raw logs and episodes.

Fails closed. Exit codes: 0 every check held; 1 at least one check failed (the report names it);
2 the suite could not run (no manifest, no data files, unreadable data, bad arguments).

  metarec validate episodes out/episodes/interval=20261101T00-20261102T00
      checks an ETL output against the episode contract and its manifest, writes
      <dir>/_validation/report.json and report.md, and records the result in <dir>/_manifest.json
  metarec validate raw --input data/raw --start 2026-11-01T00 --end 2026-11-02T00
      checks the raw hourly partitions of [start, end) for systemic problems (nulls, types,
      duplicates, ranges, CTR, row count vs the previous interval); --report-dir to keep the report

The row-count check compares with the previous interval (episodes: the sibling output whose
interval ends where this one starts, or --previous; raw: the equally long interval before
--start) and is skipped, with a note in the report, when there is none.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .suites import Thresholds


def _add_common(p: argparse.ArgumentParser, previous_help: str) -> None:
    d = Thresholds()
    p.add_argument("--previous", metavar="PATH", help=previous_help)
    p.add_argument(
        "--no-previous",
        action="store_true",
        help="do not look for a previous interval (the row-count check is skipped)",
    )
    p.add_argument(
        "--ctr-min",
        type=float,
        default=d.ctr_min,
        help=f"lowest plausible click rate over the interval (default {d.ctr_min})",
    )
    p.add_argument(
        "--ctr-max",
        type=float,
        default=d.ctr_max,
        help=f"highest plausible click rate (default {d.ctr_max}, for ad logs; `metarec adapt` "
        "prints the band of its source, e.g. MovieLens' rating-derived clicks, in its next steps)",
    )
    p.add_argument(
        "--row-count-ratio",
        type=float,
        default=d.row_count_ratio,
        help="rows must be within [previous/ratio, previous*ratio] of the previous interval "
        f"(default {d.row_count_ratio:g})",
    )
    p.add_argument(
        "--master",
        default=None,
        help="Spark master (default $METAREC_SPARK_MASTER or local[*]; kept under spark-submit)",
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", required=True, metavar="{episodes,raw}")
    ep = sub.add_parser(
        "episodes",
        help="validate an ETL output directory (one interval)",
        description="Validate an ETL output directory against the episode contract and manifest.",
    )
    ep.add_argument(
        "root", metavar="DIR", help="the interval's output directory (has _manifest.json)"
    )
    ep.add_argument(
        "--no-record",
        action="store_true",
        help="do not write the result into _manifest.json (the report is still written)",
    )
    _add_common(
        ep,
        "previous interval's ETL output dir, for the row-count band (default: the sibling "
        "directory whose manifest interval ends where this one starts)",
    )
    raw = sub.add_parser(
        "raw",
        help="validate raw hourly partitions of [start, end)",
        description="Validate raw ad-log partitions for systemic problems.",
    )
    raw.add_argument("--input", required=True, metavar="URI", help="raw root (dt=/hr= partitions)")
    raw.add_argument("--start", required=True, help="interval start, UTC hour, e.g. 2026-11-01T00")
    raw.add_argument("--end", required=True, help="interval end (exclusive), e.g. 2026-11-02T00")
    raw.add_argument(
        "--format",
        default="auto",
        choices=["auto", "jsonl", "jsonl.gz", "parquet"],
        help="raw file format (default: detected from the file names)",
    )
    raw.add_argument("--report-dir", metavar="DIR", help="write report.json and report.md here")
    d = Thresholds()
    raw.add_argument(
        "--max-bad-fraction",
        type=float,
        default=d.max_bad_fraction,
        help="share of rows allowed to fail a row-level check; raw logs carry some corruption "
        f"that the ETL quarantines (default {d.max_bad_fraction})",
    )
    _add_common(
        raw,
        "raw root holding the previous interval (the equally long one just before --start), "
        "for the row-count band (default: --input)",
    )


def run(args: argparse.Namespace) -> int:
    from .episodes import validate_episodes
    from .raw import validate_raw
    from .sources import parse_time

    if not args.verbose:  # GX logs its internals at INFO; keep the console to the report
        for noisy in ("great_expectations", "py4j"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    spark = None
    if args.master and args.target == "raw":  # the episode suite reads with pyarrow, no Spark
        from components.etl.session import build_spark

        spark = build_spark("metarec-validate", master=args.master)
    common = {
        "ctr_min": args.ctr_min,
        "ctr_max": args.ctr_max,
        "row_count_ratio": args.row_count_ratio,
    }
    if args.target == "episodes":
        report = validate_episodes(
            args.root,
            previous=args.previous,
            find_previous=not args.no_previous,
            thresholds=Thresholds(**common),
            record=not args.no_record,
        )
    else:
        report = validate_raw(
            args.input,
            parse_time(args.start),
            parse_time(args.end),
            spark,
            fmt=args.format,
            previous=args.previous,
            find_previous=not args.no_previous,
            thresholds=Thresholds(max_bad_fraction=args.max_bad_fraction, **common),
            report_dir=args.report_dir,
        )
    sys.stdout.write(report.to_text())
    for kind, path in report.paths.items():
        sys.stdout.write(f"report ({kind}): {path}\n")
    return report.exit_code
