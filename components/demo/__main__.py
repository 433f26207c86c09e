"""The metarec demo: generate ad logs -> Spark ETL -> validation -> distributed meta training
and a plain baseline -> export -> cold-start evaluation -> gate + promotion -> scoring of raw
cold-start events -> summary table and an HTML report.

  python -m components.demo --out out/demo            # ~3-5 min on 2 cores (make demo)
  python -m components.demo --out out/demo-q --quick  # tiny data, a few steps (~1-1.5 min)
  python -m components.demo --out out/demo --steps 300 --seed 1

What each stage writes (under --out):
  raw/                 synthetic JSONL ad logs (dt=/hr= partitions; 0.5 % corrupt rows)
  episodes/interval=*/ task-partitioned Parquet episodes, _manifest.json, _quarantine/, _validation/
  validation/raw/      the raw-log data-quality report
  train/meta, plain/   the two runs: metrics.jsonl, eval.json, report.png, checkpoints/, train.log
  models/<name>/       v1 (plain), v2 (meta), CHAMPION pointer, HISTORY.jsonl
  evaluation/          cold_start.json: per-task AUC on test_cold before/after adaptation
  score/               support.jsonl, events.jsonl, predictions*.parquet (+ rejected, summary)
  delivery/            the last hour again, through the continuous_delivery Airflow DAG
                       (airflow dags test; its own AIRFLOW_HOME): step records, report.md, log
  summary.json, report.html

Reruns: a stage whose inputs did not change since it last completed (same settings, same
upstream stages; recorded in _stages/) is skipped with a message; any other stage deletes its
outputs and runs again, and so does everything after it. --fresh redoes every stage.
Exit codes: 0 done; 1 validation failed closed or the gate promoted nothing (the report says
why); 2 bad options or inputs; 3 a training job failed (the tail of its log is printed).
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="out/demo", help="output directory (default %(default)s)")
    parser.add_argument("--rows", type=int, default=None,
                        help="raw rows to generate (default 200000; --quick 12000)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of each run (default 120; --quick 8)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of data and training (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny data and model run (smoke test, ~1 min)")  # fmt: skip
    parser.add_argument("--airflow", action=argparse.BooleanOptionalAction, default=None,
                        help="finish with one hourly interval through the continuous_delivery "
                             "Airflow DAG (default: on, off with --quick)")  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="redo every stage (ignore _stages/)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from components.demo.settings import DemoConfig
    from components.demo.stages import DemoStopped

    try:
        config = DemoConfig.preset(args.out, quick=args.quick, rows=args.rows, steps=args.steps,
                                   seed=args.seed, airflow=args.airflow)  # fmt: skip
        from components.demo.flow import run_demo
        from components.demo.summary import format_summary

        result = run_demo(config, fresh=args.fresh)
    except DemoStopped as e:
        sys.stderr.write(f"demo stopped: {e}\n")
        return 1
    except (ValueError, FileNotFoundError) as e:
        if args.verbose:
            raise
        sys.stderr.write(f"demo: error: {e}\n")
        return 2
    except RuntimeError as e:
        if args.verbose:
            raise
        sys.stderr.write(f"demo: error: {e}\n")
        return 3
    sys.stdout.write(format_summary(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
