"""Delivery time, new hour -> promoted model: incremental (warm start) vs retraining from scratch.

    python -m bench.delivery                     # 24 h base period, 12 hourly intervals
    python -m bench.delivery --quick             # 2 h base, 2 hours, a tiny model (the test's)

G-Meta's continuous-delivery claim (issue 14 item 3). Seeded raw logs (``components.generate``)
cover a base period and then ``--hours`` hourly intervals. Every path runs the step functions the
Airflow DAG and the KFP pipeline call (``components.steps``: check_raw, validate_raw_step,
etl_step, validate_episodes_step, train_step, export_step, evaluate_step, gate_step,
promote_step), in this process, on the local backend and one long-lived SparkSession
(``data.shared_spark``):

- **base**: the incremental run root delivers the base period once, from scratch, for
  ``--scratch-steps`` steps: the first champion (timed, not counted in the per-hour figures);
- **incremental**, for each new hour: the hour's partition, warm-started from the champion,
  ``--incremental-steps`` steps (``[delivery] warm_start``, the DAG's default);
- **from scratch**, for each new hour: a fresh run root, everything so far (base + the hours up
  to this one) as one interval, no warm start, ``--scratch-steps`` steps. Its training budget is
  a cap: the JSON says, per hour, whether it reached the incremental model's cold-start AUC
  (``scratch_reached_incremental_auc``); where it did not, the speed-up is measured against a
  retrain that was still short of the incremental AUC (the cap was hit).

Per hour and in total: wall seconds of every stage, the speed-up (scratch / incremental), and the
gate metric of both (``test_cold.after.auc``: the cold-start AUC after adaptation, on each run's
own test_cold episodes). Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.delivery")
START = "2026-11-01T00"
STAGES = (
    "check_raw",
    "validate_raw",
    "etl",
    "validate_episodes",
    "train",
    "export",
    "evaluate",
    "gate",
    "promote",
)
ETL = {"k_support": 4, "q_query": 4, "min_support": 2, "min_query": 2, "num_buckets": 2,
       "shuffle_partitions": 4, "cold_fraction": 0.3}  # fmt: skip
"""The demo's delivery ETL settings: an hour of traffic is a few thousand rows."""


def generate_raw(work: Path, rows: int, hours: int, seed: int) -> Path:
    """Seeded JSONL raw logs of ``hours`` hours from ``START`` (reused when already there)."""
    from components.generate import GeneratorConfig, generate

    out = work / f"raw-{rows}-{hours}h-{seed}"
    if (out / "_generation.json").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    generate(
        GeneratorConfig(
            out=str(out), rows=rows, start=START, hours=hours, seed=seed, format="jsonl",
            corrupt=0.01, num_users=20_000, num_campaigns=400, num_advertisers=100, ctr=0.1,
        )
    )  # fmt: skip
    return out


def delivery_config(run_root: Path, raw: Path, steps: int, warm_start: bool, extra: list[str]):
    """A local-backend delivery config, written and loaded as a DAG's would be."""
    from components.steps.config import load_delivery_config
    from trainer.durable import write_json_atomic

    path = run_root / "delivery.json"
    write_json_atomic(
        path,
        {
            "run_root": str(run_root / "run"), "raw_root": str(raw), "schedule": "hourly",
            "start_date": START, "backend": "local", "spark_master": "local[2]",
            "trainer_config": "debug", "warm_start": warm_start, "model_name": "ctr-bench",
            "trainer_overrides": [f"train.steps={steps}", "checkpoint.every=0", *extra],
            "etl": ETL,
        },
    )  # fmt: skip
    return load_delivery_config(path)


def deliver(cfg, interval) -> dict[str, Any]:
    """The DAG's steps in its order, each timed; the gate metric, the warm start, the promotion."""
    from components.steps import data, delivery, training

    seconds: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        seconds[stage] = round(time.perf_counter() - t, 3)
        return out

    status = timed("check_raw", data.check_raw, cfg, interval)
    if not status.ready:
        raise RuntimeError(f"{interval.id}: raw data not ready: {status.reason}")
    raw = timed("validate_raw", data.validate_raw_step, cfg, interval)
    etl = timed("etl", data.etl_step, cfg, interval)
    episodes = timed("validate_episodes", data.validate_episodes_step, cfg, interval)
    train = timed("train", training.train_step, cfg, interval, etl)
    exported = timed("export", delivery.export_step, cfg, interval, train, etl)
    ev = timed("evaluate", delivery.evaluate_step, cfg, interval, exported, etl)
    gate = timed("gate", delivery.gate_step, cfg, interval, ev)
    promoted = timed("promote", delivery.promote_step, cfg, interval, gate)
    return {
        "interval": interval.id, "stage_s": seconds, "total_s": round(sum(seconds.values()), 3),
        "rows_read": etl.rows_read, "validations_passed": raw.success and episodes.success,
        "steps": train.steps, "warm_start": train.warm_start.checkpoint is not None,
        "warm_start_reason": train.warm_start.reason, "metric": ev.metric,
        "auc": ev.challenger_value, "gate": gate.verdict, "promoted": promoted.promoted,
    }  # fmt: skip


def run(args) -> dict[str, Any]:
    from components.steps.data import shared_spark
    from components.steps.layout import Interval, parse_utc

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    total_hours = args.base_hours + args.hours
    raw = generate_raw(work, args.rows_per_hour * total_hours, total_hours, args.seed)
    extra = ["eval.max_episodes=256"]
    start = parse_utc(START)
    base_end = start + timedelta(hours=args.base_hours)
    for d in ("incremental", "scratch"):
        shutil.rmtree(work / d, ignore_errors=True)
    t = time.perf_counter()
    shared_spark("local[2]")  # the long-lived session every Spark step of this process uses
    spark_start_s = round(time.perf_counter() - t, 3)
    inc = delivery_config(work / "incremental", raw, args.incremental_steps, True, extra)
    base_cfg = delivery_config(work / "incremental", raw, args.scratch_steps, True, extra)
    base = deliver(base_cfg, Interval(start, base_end))
    hours = []
    for h in range(args.hours):
        end = base_end + timedelta(hours=h + 1)
        incremental = deliver(inc, Interval(end - timedelta(hours=1), end))
        scratch_cfg = delivery_config(work / "scratch" / f"h{h:02d}", raw, args.scratch_steps,
                                      False, extra)  # fmt: skip
        scratch = deliver(scratch_cfg, Interval(start, end))
        row = {
            "hour": h, "incremental": incremental, "scratch": scratch,
            "speedup": round(scratch["total_s"] / incremental["total_s"], 2),
            "scratch_reached_incremental_auc": _reached(scratch["auc"], incremental["auc"]),
        }  # fmt: skip
        log.info(
            "hour %d: incremental %.1f s (AUC %s), scratch %.1f s (AUC %s): %.2fx",
            h, incremental["total_s"], incremental["auc"], scratch["total_s"], scratch["auc"],
            row["speedup"],
        )  # fmt: skip
        hours.append(row)
    return {"spark_start_s": spark_start_s, "base": base, "hours": hours, **_totals(hours)}


def _reached(scratch_auc: float | None, incremental_auc: float | None) -> bool | None:
    if scratch_auc is None or incremental_auc is None:
        return None
    return scratch_auc >= incremental_auc


def _totals(hours: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in ("incremental", "scratch"):
        out[f"{arm}_stage_s"] = {
            s: round(sum(h[arm]["stage_s"][s] for h in hours), 3) for s in STAGES
        }
        out[f"{arm}_total_s"] = round(sum(h[arm]["total_s"] for h in hours), 3)
        aucs = [h[arm]["auc"] for h in hours if h[arm]["auc"] is not None]
        out[f"{arm}_mean_auc"] = round(sum(aucs) / len(aucs), 4) if aucs else None
    out["speedup"] = round(out["scratch_total_s"] / out["incremental_total_s"], 2)
    out["scratch_cap_hit_hours"] = [
        h["hour"] for h in hours if h["scratch_reached_incremental_auc"] is False
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="2 h base, 2 hours, 2,000 rows/hour, 4 / 8 steps (the test's run)")  # fmt: skip
    p.add_argument("--base-hours", type=int, default=24, help="base period (default: %(default)s)")
    p.add_argument(
        "--hours", type=int, default=12, help="new hourly intervals (default: %(default)s)"
    )
    p.add_argument("--rows-per-hour", type=int, default=5_000, help="raw rows per hour")
    p.add_argument("--incremental-steps", type=int, default=30, help="steps of an incremental run")
    p.add_argument("--scratch-steps", type=int, default=300,
                   help="step cap of a retrain from scratch (and of the base run)")  # fmt: skip
    p.add_argument("--seed", type=int, default=7, help="generator seed (default: %(default)s)")
    p.add_argument("--work", default="out/bench/delivery", help="data and run roots")
    p.add_argument("--out", default="out/bench/delivery.json", help="JSON report")
    args = p.parse_args(argv)
    if args.quick:
        args.base_hours, args.hours, args.rows_per_hour = 2, 2, 2_000
        args.incremental_steps, args.scratch_steps = 4, 8
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    from bench.etl_throughput import machine

    report: dict[str, Any] = {
        "benchmark": "delivery", "machine": machine(), "target": {"speedup": 4.0},
        "settings": {k: getattr(args, k) for k in ("quick", "base_hours", "hours", "rows_per_hour",
                                                   "incremental_steps", "scratch_steps", "seed")},
    }  # fmt: skip
    report.update(run(args))
    report["machine"]["load_average_end"] = list(os.getloadavg())
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"incremental {report['incremental_total_s']} s vs from scratch {report['scratch_total_s']} s "
          f"over {args.hours} hours: {report['speedup']}x; mean AUC {report['incremental_mean_auc']} "
          f"vs {report['scratch_mean_auc']}; cap hit in hours {report['scratch_cap_hit_hours']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
