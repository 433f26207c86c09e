"""Validation wall time against the ETL's on the same interval: one pass per suite vs GX's own run.

    python -m bench.validation --rows 200000        # the demo interval's size (issue 14)
    python -m bench.validation --rows 20000         # a quick look

On seeded raw logs (``components.generate``, 24 hourly partitions, 1 % corruption), in one process
and one SparkSession (``--master``, ``local[2]``), after a small warm-up of every path:

- ``etl_s``: ``run_etl`` end to end on the interval;
- ``one_pass``: ``validate_raw`` on the raw partitions and ``validate_episodes`` on the ETL's
  output as the project runs them (raw: every metric of a suite in one Spark aggregation,
  ``runner.run_expectations``; episodes: the files read with pyarrow into the per-episode profile,
  the suite judged on it in memory, ``runner.run_on_table``), with ``phases_s``: the wall time of
  each step (:data:`PHASES`);
- ``gx``: the same two calls with the suites evaluated by great-expectations itself
  (``gx_reference``: GX's metrics, several Spark jobs per expectation, on the raw profile and on
  the episode profile as a cached Spark frame) — the way validation ran before issue 14;
- each validation's ratio to ``etl_s`` (target: one pass <= 0.25x) and the speed-up one pass / GX;
  both paths must reach the same verdict on every check (``verdicts_equal``).

Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.etl_throughput import HOURS, START, generate, machine

log = logging.getLogger("bench.validation")


@contextlib.contextmanager
def gx_suites():
    """Evaluate the suites with GX's ``ValidationDefinition`` instead of the one-pass runner."""
    from components.validation import gx_reference, runner

    names = ("run_expectations", "run_on_table", "run_on_values")
    saved = {n: getattr(runner, n) for n in names}
    for n in names:
        setattr(runner, n, getattr(gx_reference, f"{n}_gx"))
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(runner, n, f)


PHASES = (
    ("sources", "list_raw_partitions", "raw/list"),
    ("runner", "run_expectations", "raw/suites (Spark, one job each)"),
    ("sources", "list_episode_files", "episodes/list + footers"),
    ("sources", "read_episode_files", "episodes/read (pyarrow)"),
    ("profile", "batch_profile", "episodes/profile (numpy)"),
    ("runner", "run_on_table", "episodes/suite on the profile"),
    ("profile", "split_summary", "episodes/summary"),
    ("runner", "run_on_values", "episodes/summary suite"),
    ("report", "ValidationReport.write", "report files"),
    ("episodes", "record_in_manifest", "manifest record"),
)
"""Functions of ``components.validation`` timed by :func:`phases` (module, attribute, label)."""


@contextlib.contextmanager
def phases(seconds: dict[str, float]):
    """Add each :data:`PHASES` function's wall time (a generator's: the time of its items) to
    ``seconds[label]`` while inside; nested timed calls count in both."""
    import importlib
    import inspect

    def timed(fn, label):
        if inspect.isgeneratorfunction(fn):

            def gen(*args, **kwargs):
                it = fn(*args, **kwargs)
                while True:
                    t = time.perf_counter()
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                    finally:
                        seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - t
                    yield item

            return gen

        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - t

        return call

    saved = []
    for module, attr, label in PHASES:
        owner = importlib.import_module(f"components.validation.{module}")
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, timed(getattr(owner, name), label))
    try:
        yield seconds
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def validate(spark, raw: Path, episodes: Path) -> dict[str, Any]:
    """Both suites on the interval: seconds each and the verdict of every check."""
    from components.validation import validate_episodes, validate_raw

    start = dt.datetime.fromisoformat(START).replace(tzinfo=dt.UTC)
    end = start + dt.timedelta(hours=HOURS)
    raw_report, raw_s = _timed(validate_raw, str(raw), start, end, spark, find_previous=False)
    ep_report, ep_s = _timed(validate_episodes, str(episodes), find_previous=False, record=False)
    checks = {f"raw/{c.name}": c.status for c in raw_report.checks}
    checks |= {f"episodes/{c.name}": c.status for c in ep_report.checks}
    return {"raw_s": round(raw_s, 2), "episodes_s": round(ep_s, 2),
            "total_s": round(raw_s + ep_s, 2), "checks": checks}  # fmt: skip


def measure(spark, raw: Path, out: Path, rows: int) -> dict[str, Any]:
    from components.etl import EtlConfig, run_etl

    end = (dt.datetime.fromisoformat(START) + dt.timedelta(hours=HOURS)).strftime("%Y-%m-%dT%H")
    shutil.rmtree(out, ignore_errors=True)
    config = EtlConfig(
        input=str(raw), output=str(out), start=START, end=end, input_format="parquet"
    )
    result, etl_s = _timed(run_etl, config, spark)
    episodes = Path(result.output)  # the interval directory (holds _manifest.json)
    with phases({}) as seconds:
        one = validate(spark, raw, episodes)
    one["phases_s"] = {k: round(v, 3) for k, v in seconds.items()}
    with gx_suites():
        ref = validate(spark, raw, episodes)
    row = {
        "rows": rows, "rows_read": result.rows_read, "etl_s": round(etl_s, 2),
        "one_pass": {k: v for k, v in one.items() if k != "checks"},  # with its phases
        "gx": {k: v for k, v in ref.items() if k != "checks"},
        "one_pass_over_etl": round(one["total_s"] / etl_s, 3),
        "gx_over_etl": round(ref["total_s"] / etl_s, 3),
        "speedup_one_pass_vs_gx": round(ref["total_s"] / one["total_s"], 2),
        "checks": len(one["checks"]),
        "verdicts_equal": one["checks"] == ref["checks"],
        "verdict_differences": {k: [v, ref["checks"].get(k)] for k, v in one["checks"].items()
                                if ref["checks"].get(k) != v},
    }  # fmt: skip
    log.info(
        "%d rows: ETL %.1f s; validation one pass %.1f s (%.2fx ETL), GX %.1f s (%.2fx ETL)",
        rows, etl_s, one["total_s"], row["one_pass_over_etl"], ref["total_s"], row["gx_over_etl"],
    )  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.validation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rows", type=int, default=200_000, help="raw rows (default: %(default)s)")
    p.add_argument("--master", default="local[2]", help="Spark master (default: %(default)s)")
    p.add_argument("--work", default="out/bench/etl_data", help="generated data and outputs")
    p.add_argument("--seed", type=int, default=7, help="generator seed (default: %(default)s)")
    p.add_argument("--out", default="out/bench/validation.json", help="JSON report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from components.etl.session import build_spark

    data = generate(work, args.rows, "parquet", args.seed)
    warm = generate(work, 20_000, "parquet", args.seed)
    spark = build_spark("metarec-bench-validation", master=args.master)
    report: dict[str, Any] = {"benchmark": "validation", "machine": machine(), "master": args.master,
                              "target": {"one_pass_over_etl": 0.25}}  # fmt: skip
    report["warmup"] = measure(spark, warm, work / "out-validation-warmup", 20_000)
    report["run"] = measure(spark, data, work / f"out-validation-{args.rows}", args.rows)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    spark.stop()
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    r = report["run"]
    print(f"{r['rows']} rows: ETL {r['etl_s']} s; validation one pass {r['one_pass']['total_s']} s "
          f"({r['one_pass_over_etl']}x ETL), GX {r['gx']['total_s']} s ({r['gx_over_etl']}x ETL); "
          f"verdicts equal: {r['verdicts_equal']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
