"""The metarec demo: generate ad logs -> Spark ETL -> validation -> distributed meta training
and a plain baseline -> export -> cold-start evaluation -> gate + promotion -> scoring of raw
cold-start events -> summary table and an HTML report.

  python -m components.demo --out out/demo            # ~3-5 min on 2 cores (make demo)
  python -m components.demo --out out/demo-q --quick  # tiny data, a few steps (~1-1.5 min)
  python -m components.demo --out out/demo --steps 300 --seed 1

The meta model's stages are the step functions the continuous_delivery DAG calls
(components/steps), on one interval covering every generated hour; --out is their run root.
What each stage writes (under --out):
  raw/                 synthetic JSONL ad logs (dt=/hr= partitions; 0.5 % corrupt rows)
  episodes/<interval>/ task-partitioned Parquet episodes, _manifest.json, _quarantine/, _validation/
  train/<interval>/    the meta run: metrics.jsonl, eval.json, report.png, checkpoints/
  models/ctr-demo/     v<N> exports, CHAMPION pointer, HISTORY.jsonl
  intervals/<interval>/ each step's record (raw_validation/, etl, train, evaluate, gate, promote)
  baseline/            the plain run's run root (train/, models/, intervals/): the same steps
  evaluation/          cold_start.json: per-task AUC on test_cold before/after adaptation
  score/               support.jsonl, events.jsonl, predictions*.parquet (+ rejected, summary)
  delivery/            the last hour again, through the continuous_delivery Airflow DAG
                       (airflow dags test; its own AIRFLOW_HOME): step records, report.md, log
  logs/                the training jobs' full output
  delivery-config.json the delivery config of the run root (python -m components.steps --config)
  summary.json, report.html

Reruns: every step reuses its record when its inputs did not change, exactly as a rerun of the
DAG does; a step whose inputs changed (other settings, new data) runs again, and so does what
depends on it. --fresh recomputes every step (the DAG's force).
Exit codes: 0 done; 1 validation failed closed or the gate promoted nothing (the report says
why); 2 bad options or inputs; 3 a training job failed (the end of its log is printed).
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
    parser.add_argument("--fresh", action="store_true",
                        help="recompute every step instead of reusing its record")  # fmt: skip
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

    try:
        config = DemoConfig.preset(args.out, quick=args.quick, rows=args.rows, steps=args.steps,
                                   seed=args.seed, airflow=args.airflow)  # fmt: skip
        from components.demo.flow import run_demo
        from components.demo.summary import format_summary

        result = run_demo(config, fresh=args.fresh)
    except Exception as e:
        code = _exit_code(e)
        if code is None or (args.verbose and code != 1):
            raise
        what = "demo stopped" if code == 1 else "demo: error"
        sys.stderr.write(f"{what}: {e}\n")
        return code
    sys.stdout.write(format_summary(result["summary"]))
    return 0


def _exit_code(error: Exception) -> int | None:
    """The exit code of an error the demo explains (module docstring); None: a bug, raised."""
    from components.demo.progress import DemoStopped
    from components.launchers.local import LaunchError
    from components.steps.data import ValidationFailed

    for kinds, code in (((ValidationFailed, DemoStopped), 1), ((LaunchError,), 3),
                        ((ValueError, FileNotFoundError), 2)):  # fmt: skip
        if isinstance(error, kinds):
            return code
    return None


if __name__ == "__main__":
    sys.exit(main())
