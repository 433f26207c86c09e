"""Map a public dataset onto the raw ad-log schema, in the production partition layout.

Reads the dataset's original files as published, streams them, and writes
<out>/dt=YYYY-MM-DD/hr=HH/part-NNNNN.<parquet|jsonl> (plus _adapter.json, written last, with the
row accounting, the mapping and the commands to run next; and _rejected.jsonl with every
rejected row and its reason). Every input row is accounted for:
rows in = rows written + rows rejected.

examples:
  metarec adapt movielens --src ml-100k --out data/raw-ml
  metarec adapt taobao --src tianchi-56/ --out data/raw-taobao --format jsonl
  metarec adapt talkingdata --src talkingdata/ --out data/raw-td --task channel
  metarec adapt movielens --help      # files expected, download link, field mapping
"""

from __future__ import annotations

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """One sub-command per source, each with the shared options and its own long help."""
    from components.adapters import sources

    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, source in sources().items():
        p = sub.add_parser(
            name,
            help=source.summary,
            description=source.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "--src",
            required=True,
            metavar="PATH",
            help="the downloaded dataset (directory, or file where the help says so); "
            "local path or pyarrow.fs URI",
        )
        p.add_argument(
            "--out",
            required=True,
            metavar="DIR",
            help="output root for dt=/hr= partitions (local path or URI)",
        )
        p.add_argument(
            "--format",
            choices=("parquet", "jsonl"),
            default="parquet",
            help="partition file format (default: parquet, zstd)",
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace a previous output in DIR (dt=* partitions, _adapter.json, "
            "_rejected.jsonl); without it a non-empty DIR is an error",
        )
        p.add_argument(
            "--no-fill-empty-hours",
            dest="fill_empty_hours",
            action="store_false",
            help="do not write empty part files for hours without events between the "
            "first and the last event (then run the ETL with --allow-missing)",
        )
        if source.tasks:
            choices = [value for value, _ in source.tasks]
            p.add_argument(
                "--task",
                choices=choices,
                default=None,
                help="what a task is, for the printed next steps (the ETL's --task-key): "
                + ", ".join(f"{value} -> {column}" for value, column in source.tasks)
                + f" (default: {choices[0]})",
            )
        if source.derived_time:
            p.add_argument(
                "--base-time",
                default=None,
                metavar="ISO",
                help="event time of the first row, ISO-8601 UTC (default: see above)",
            )
            p.add_argument(
                "--time-step-ms",
                type=int,
                default=1000,
                metavar="MS",
                help="milliseconds between consecutive rows (default: 1000)",
            )
        tuning = p.add_argument_group("memory and file-size tuning")
        tuning.add_argument(
            "--block-mb",
            type=int,
            default=16,
            metavar="MB",
            help="source text parsed per block (default: 16)",
        )
        tuning.add_argument(
            "--flush-rows",
            type=int,
            default=500_000,
            metavar="N",
            help="rows buffered before the largest hour buffers are written (default: 500000)",
        )
        tuning.add_argument(
            "--max-open-files",
            type=int,
            default=256,
            metavar="N",
            help="part files kept open at once (default: 256)",
        )
        tuning.add_argument(
            "--rows-per-file",
            type=int,
            default=2_000_000,
            metavar="N",
            help="rows per part file before the next part starts (default: 2000000)",
        )


def run(args: argparse.Namespace) -> int:
    from components.adapters import adapt
    from components.adapters.run import AdapterConfig

    config = AdapterConfig(
        src=args.src,
        out=args.out,
        format=args.format,
        overwrite=args.overwrite,
        fill_empty_hours=args.fill_empty_hours,
        base_time=getattr(args, "base_time", None),
        time_step_ms=getattr(args, "time_step_ms", 1000),
        task=getattr(args, "task", None),
        block_bytes=args.block_mb << 20,
        flush_rows=args.flush_rows,
        max_open_files=args.max_open_files,
        rows_per_file=args.rows_per_file,
    )
    summary = adapt(args.source, config)
    print(summary.render())
    return 0
