"""Write synthetic ad logs that look like production traffic, in the canonical raw schema.

Zipf-distributed users, campaigns, ads and advertisers (a few huge tasks, many small ones),
cold-start campaigns born during the range, hourly dt=YYYY-MM-DD/hr=HH partitions on a diurnal
curve, multi-valued and dense fields, and click/conversion labels driven by per-campaign effects
(see components/generate/labels.py), optionally with realistic corruption. Streams hour by hour
in bounded chunks; the same options and --seed write byte-identical files.

Also written: <out>/_generation.json (config, rows per hour and file, exact count per corruption
kind and the ETL reason each must get) and <out>/_campaigns.parquet (per-campaign truth).

examples:
  metarec generate --rows 100000 --out out/raw
  metarec generate --rows 1000000 --format parquet --hours 48 --seed 7 --out out/raw-pq
  metarec generate --rows 50000 --corrupt 0.02 --files-per-hour 3 --out out/raw-dirty --overwrite
"""

from __future__ import annotations

import argparse
import json
import sys

from components.generate.config import CORRUPTION_KINDS, GeneratorConfig, parse_zipf
from components.raw_schema import PARTITION_FORMATS

_D = GeneratorConfig.__dataclass_fields__

CLI_ROWS = (1_000, 100_000_000)
"""The ``--rows`` range of ``metarec generate``: with fewer rows most campaigns of the default
population get no episode at all (the ETL needs 16 samples of one task by default); more takes
one process over an hour (~2e5 rows/s): split the range over runs with different --start.
:class:`GeneratorConfig` itself accepts 1 ... 1e9 rows, for tests and small fixtures."""


def _default(name: str):
    return _D[name].default


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The options of ``metarec generate`` (defaults come from :class:`GeneratorConfig`)."""
    add = parser.add_argument
    add(
        "--rows",
        type=int,
        default=_default("rows"),
        help="rows to write in total, corrupted ones included "
        f"({CLI_ROWS[0]:,} ... {CLI_ROWS[1]:,}; default %(default)s)",
    )
    add(
        "--out",
        default=_default("out"),
        help="output root, a local path or pyarrow.fs URI (default %(default)s)",
    )
    add(
        "--start",
        default=_default("start"),
        help="first hour, UTC, hour-aligned ISO-8601 (default %(default)s)",
    )
    add(
        "--hours",
        type=int,
        default=_default("hours"),
        help="number of hourly partitions (default %(default)s)",
    )
    add(
        "--seed",
        type=int,
        default=_default("seed"),
        help="random seed; the same options and seed write identical bytes (default %(default)s)",
    )
    add(
        "--format",
        choices=PARTITION_FORMATS,
        default=_default("format"),
        help="file format of the partitions (default %(default)s)",
    )
    add(
        "--corrupt",
        type=float,
        default=_default("corrupt"),
        metavar="FRACTION",
        help="fraction of rows to corrupt, each with one kind, counted exactly in "
        "_generation.json (0 ... 0.5; default %(default)s)",
    )
    add(
        "--corrupt-kinds",
        default="",
        metavar="KIND,...",
        help="only these corruption kinds (default: all the format can carry): "
        + ", ".join(CORRUPTION_KINDS),
    )
    add(
        "--num-users",
        type=int,
        default=_default("num_users"),
        help="users in the population (default %(default)s)",
    )
    add(
        "--num-campaigns",
        type=int,
        default=_default("num_campaigns"),
        help="campaigns, the default task key (default %(default)s)",
    )
    add(
        "--num-advertisers",
        type=int,
        default=_default("num_advertisers"),
        help="advertisers; each owns a Zipf share of the campaigns (default %(default)s)",
    )
    add(
        "--ads-per-campaign",
        type=float,
        default=_default("ads_per_campaign"),
        help="mean ads per campaign (default %(default)s)",
    )
    add(
        "--zipf",
        default=None,
        metavar="S | ENTITY=S,...",
        help="Zipf exponent(s) of traffic: one number for all, or e.g. users=1.1,campaigns=1.3 "
        f"(entities: users, campaigns, ads, advertisers; defaults {_default('zipf_users')}, "
        f"{_default('zipf_campaigns')}, {_default('zipf_ads')}, "
        f"{_default('zipf_advertisers')})",
    )
    add(
        "--cold-start-fraction",
        type=float,
        default=_default("cold_start_fraction"),
        help="share of campaigns born during the range, with no events before their birth "
        "(default %(default)s)",
    )
    add(
        "--ctr",
        type=float,
        default=_default("ctr"),
        help="target mean click-through rate (default %(default)s)",
    )
    add(
        "--cvr",
        type=float,
        default=_default("cvr"),
        help="target conversion rate given a click (default %(default)s)",
    )
    add(
        "--preference-strength",
        type=float,
        default=_default("preference_strength"),
        help="std in logits of the per-campaign preference over user attributes; 0 removes "
        "the per-task signal (default %(default)s)",
    )
    add(
        "--files-per-hour",
        type=int,
        default=_default("files_per_hour"),
        help="files per hourly partition (default %(default)s)",
    )
    add(
        "--chunk-rows",
        type=int,
        default=_default("chunk_rows"),
        help="largest number of rows generated in memory at once (default %(default)s)",
    )
    add(
        "--overwrite",
        action="store_true",
        help="replace a previous generator output in --out (otherwise a non-empty --out is "
        "refused; directories holding anything else are never cleared)",
    )


def build_config(args: argparse.Namespace) -> GeneratorConfig:
    """A validated :class:`GeneratorConfig` from parsed options (``ValueError`` if invalid)."""
    low, high = CLI_ROWS
    if not low <= args.rows <= high:
        raise ValueError(
            f"--rows {args.rows}: metarec generate writes {low:,} ... {high:,} rows "
            "(smaller samples: components.generate.GeneratorConfig, as the tests do)"
        )
    kinds = tuple(k.strip() for k in args.corrupt_kinds.split(",") if k.strip())
    return GeneratorConfig(
        out=args.out,
        rows=args.rows,
        start=args.start,
        hours=args.hours,
        seed=args.seed,
        format=args.format,
        corrupt=args.corrupt,
        corrupt_kinds=kinds,
        num_users=args.num_users,
        num_campaigns=args.num_campaigns,
        num_advertisers=args.num_advertisers,
        ads_per_campaign=args.ads_per_campaign,
        cold_start_fraction=args.cold_start_fraction,
        ctr=args.ctr,
        cvr=args.cvr,
        preference_strength=args.preference_strength,
        files_per_hour=args.files_per_hour,
        chunk_rows=args.chunk_rows,
        overwrite=args.overwrite,
        **(parse_zipf(args.zipf) if args.zipf is not None else {}),
    )


def run(args: argparse.Namespace) -> int:
    """Generate, then print a one-screen JSON summary on stdout."""
    from components.generate import generate

    summary = generate(build_config(args))
    report = {
        "out": summary.out,
        "rows_written": summary.rows_written,
        "files": len(summary.files),
        "seconds": round(summary.seconds, 2),
        "rows_per_second": round(summary.rows_per_second),
        "ctr": round(summary.ctr, 4),
        "corrupted_rows": sum(summary.corruption.values()),
        "expected_quarantined_rows": sum(summary.expected_reasons.values()),
        "details": f"{summary.out}/_generation.json",
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0
