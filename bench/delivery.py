"""Delivery time, new hour -> promoted model: incremental (warm start) vs retraining from scratch
to the same cold-start AUC.

    python -m bench.delivery                     # 24 h base period, 12 hourly intervals
    python -m bench.delivery --quick             # 2 h base, 2 hours, a tiny model (the test's)

G-Meta's continuous-delivery claim (issue 14 item 3). Seeded raw logs (``components.generate``)
cover a base period and then ``--hours`` hourly intervals. Every path runs the step functions the
Airflow DAG and the KFP pipeline call (``components.steps``: check_raw, validate_raw_step,
etl_step, validate_episodes_step, train_step, export_step, evaluate_step, gate_step,
promote_step), in this process, on the local backend and one long-lived SparkSession
(``data.shared_spark``); the one-rank trainer runs in this process too (``[delivery]
train_in_process = true``: the same run as the subprocess launch, tests/components/steps/
test_in_process_training.py):

- **base**: the incremental run root delivers the base period once, from scratch, for
  ``--base-steps`` steps: the first champion (timed, not counted in the per-hour figures);
- **incremental**, for each new hour: the hour's partition, warm-started from the champion,
  ``--incremental-steps`` steps (``[delivery] warm_start``, the DAG's default). Its training is
  then run once more as a child process (``python -m trainer``, what the DAG's local backend
  does) on the same inputs, into a throw-away folder: ``incremental_spawn`` is the same delivery
  with that train time, the path before the in-process trainer;
- **from scratch**, for each new hour: a fresh run root, everything so far (base + the hours up
  to this one) as one interval, no warm start, trained in chunks of ``--scratch-chunk-steps``
  steps, each resuming the run's own checkpoint, then exported and gate-evaluated by the steps
  (``export_step``, ``evaluate_step``: the gate metric on the run's ``test_cold`` episodes). The
  yardstick is the incremental path's model (the champion after its delivery of the hour) scored
  on those same episodes with the same code and settings (cold tasks are held out by a stable
  hash of the task key, so neither model trained on them; far more episodes than one hour's
  ``test_cold``); it is measured, not timed. The search stops at the first chunk that reaches
  it, or at ``--scratch-max-steps`` (the cap; the hours where it was hit are listed, and their
  speed-up is against a retrain still short of the AUC: a lower bound). That chunk's model is
  then gated and promoted. Counted: every chunk's train, export and evaluation, and the rest;
  ``search_overhead_s`` (the exports and evaluations of the chunks that fell short) is listed
  too, so ``speedup_without_search_overhead`` bounds the speed-up against a retrain that knew
  its step count in advance (it still pays each chunk's trainer start).

Per hour and in total: wall seconds of every stage, the speed-up (scratch / incremental, and
scratch / incremental_spawn), the gate metric (``test_cold.after.auc``: the cold-start AUC after
adaptation) of both on the retrain's episodes, and the incremental run's own gate value on its
hour (``gate_query_samples``: how many query samples each gate value rests on). Writes JSON to
``--out``.
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

from trainer.durable import write_json_atomic

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
            "trainer_config": "debug", "train_in_process": True, "warm_start": warm_start,
            "model_name": "ctr-bench",
            "trainer_overrides": [f"train.steps={steps}", "checkpoint.every=0", *extra],
            "etl": ETL,
        },
    )  # fmt: skip
    return load_delivery_config(path)


def _timer(seconds: dict[str, float]):
    """``timed(stage, fn, *args)``: call ``fn`` and add its wall seconds to ``seconds[stage]``."""

    def timed(stage: str, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - t, 3)
        return out

    return timed


def _data_stages(cfg, interval, timed):
    """check_raw, validate_raw, etl, validate_episodes: (etl result, both validations passed)."""
    from components.steps import data

    status = timed("check_raw", data.check_raw, cfg, interval)
    if not status.ready:
        raise RuntimeError(f"{interval.id}: raw data not ready: {status.reason}")
    raw = timed("validate_raw", data.validate_raw_step, cfg, interval)
    etl = timed("etl", data.etl_step, cfg, interval)
    episodes = timed("validate_episodes", data.validate_episodes_step, cfg, interval)
    return etl, raw.success and episodes.success


def _record(interval, seconds, etl, passed, train, ev, gate, promoted) -> dict[str, Any]:
    split = ev.metric.split(".")[0]
    gated = json.loads(Path(ev.files[ev.challenger]).read_text())["splits"].get(split, {})
    return {
        "interval": interval.id, "stage_s": {s: seconds.get(s, 0.0) for s in STAGES},
        "total_s": round(sum(seconds.values()), 3), "rows_read": etl.rows_read,
        "validations_passed": passed, "steps": train.steps,
        "warm_start": train.warm_start.checkpoint is not None,
        "warm_start_reason": train.warm_start.reason, "metric": ev.metric,
        "auc": ev.challenger_value, "gate_query_samples": gated.get("query_samples", 0),
        "gate": gate.verdict, "promoted": promoted.promoted,
    }  # fmt: skip


def deliver(cfg, interval) -> tuple[dict[str, Any], Any, Any]:
    """The DAG's steps in its order, each timed (the trainer in this process): the run's record,
    its ETL result and its train result."""
    from components.steps import delivery, training

    seconds: dict[str, float] = {}
    timed = _timer(seconds)
    etl, passed = _data_stages(cfg, interval, timed)
    train = timed("train", training.train_step, cfg, interval, etl)
    exported = timed("export", delivery.export_step, cfg, interval, train, etl)
    ev = timed("evaluate", delivery.evaluate_step, cfg, interval, exported, etl)
    gate = timed("gate", delivery.gate_step, cfg, interval, ev)
    promoted = timed("promote", delivery.promote_step, cfg, interval, gate)
    return _record(interval, seconds, etl, passed, train, ev, gate, promoted), etl, train


def spawned_train_s(cfg, etl, train, out: Path) -> float:
    """Wall seconds of ``train``'s run launched as the DAG's local backend does (a child
    ``python -m trainer``), same inputs and warm start, written to ``out`` (then removed)."""
    from components.launchers.local import train_locally
    from components.steps.training import _overrides

    t = time.perf_counter()
    train_locally(cfg.trainer_config, _overrides(cfg, etl.episodes_dir, out, train.warm_start),
                  sink=lambda _: None)  # fmt: skip
    seconds = round(time.perf_counter() - t, 3)
    shutil.rmtree(out)
    return seconds


def gate_value_on(cfg, model_dir: str, episodes_dir: str) -> float | None:
    """The gate metric of the export ``model_dir`` on ``episodes_dir``, with the gate's settings
    (the same code as ``evaluate_step``)."""
    from components.promotion.gate import metric_value
    from trainer.exported import evaluate_exported, load_exported

    split = cfg.gate.metric.split(".")[0]
    evaluation = evaluate_exported(load_exported(model_dir), episodes_dir, (split,),
                                   cfg.gate.batch_episodes, cfg.gate.max_episodes)  # fmt: skip
    return metric_value(evaluation, cfg.gate.metric)


def deliver_from_scratch(cfg, interval, incremental_model: str, chunk_steps: int,
                         max_steps: int) -> dict[str, Any]:  # fmt: skip
    """Retrain on ``interval`` in chunks of ``chunk_steps`` (each resumes the run's checkpoint,
    then is exported and gate-evaluated by the steps) until its gate metric reaches that of
    ``incremental_model`` on the same episodes, or ``max_steps`` are done; then gate and promote
    that chunk's model. Every chunk's train, export and evaluation count."""
    from components.steps import delivery, training
    from components.steps.layout import RunLayout
    from components.train.in_process import train_in_process

    seconds: dict[str, float] = {}
    timed = _timer(seconds)
    etl, passed = _data_stages(cfg, interval, timed)
    # the yardstick, not timed: the incremental path's model on this run's gate episodes
    target = gate_value_on(cfg, incremental_model, etl.episodes_dir)
    run_dir = RunLayout.of(cfg.run_root).train(interval)
    ws = training.choose_warm_start(cfg, interval, etl.episodes_dir)
    flow = training._overrides(cfg, etl.episodes_dir, run_dir, ws)
    chunks: list[dict[str, Any]] = []
    steps, reached = 0, None
    while steps < max_steps and not reached:
        steps = min(steps + chunk_steps, max_steps)
        before = dict(seconds)
        timed("train", train_in_process, cfg.trainer_config, [*flow, f"train.steps={steps}"])
        train = training._finished(run_dir, ws, cfg.backend)
        exported = timed("export", delivery.export_step, cfg, interval, train, etl)
        ev = timed("evaluate", delivery.evaluate_step, cfg, interval, exported, etl)
        chunks.append({
            "steps": steps, "auc": ev.challenger_value,
            **{f"{s}_s": round(seconds[s] - before.get(s, 0.0), 3)
               for s in ("train", "export", "evaluate")},
        })  # fmt: skip
        reached = _reached(ev.challenger_value, target)
        if reached is None:  # nothing to compare: one chunk, reported as such
            break
    gate = timed("gate", delivery.gate_step, cfg, interval, ev)
    promoted = timed("promote", delivery.promote_step, cfg, interval, gate)
    return {
        **_record(interval, seconds, etl, passed, train, ev, gate, promoted),
        "incremental_auc": target, "reached_incremental_auc": reached, "chunks": chunks,
        "search_overhead_s": round(
            sum(c["export_s"] + c["evaluate_s"] for c in chunks[:-1]), 3
        ),
    }  # fmt: skip


def run(args) -> dict[str, Any]:
    from components.steps.data import shared_spark
    from components.steps.delivery import read_champion_version
    from components.steps.layout import Interval, RunLayout, parse_utc

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    total_hours = args.base_hours + args.hours
    raw = generate_raw(work, args.rows_per_hour * total_hours, total_hours, args.seed)
    extra = ["eval.max_episodes=256"]
    start = parse_utc(START)
    base_end = start + timedelta(hours=args.base_hours)
    for d in ("incremental", "scratch", "spawn"):
        shutil.rmtree(work / d, ignore_errors=True)
    t = time.perf_counter()
    shared_spark("local[2]")  # the long-lived session every Spark step of this process uses
    spark_start_s = round(time.perf_counter() - t, 3)
    inc = delivery_config(work / "incremental", raw, args.incremental_steps, True, extra)
    base_cfg = delivery_config(work / "incremental", raw, args.base_steps, True, extra)
    base, _, _ = deliver(base_cfg, Interval(start, base_end))
    hours = []
    for h in range(args.hours):
        end = base_end + timedelta(hours=h + 1)
        incremental, etl, train = deliver(inc, Interval(end - timedelta(hours=1), end))
        spawn_s = spawned_train_s(inc, etl, train, work / "spawn" / f"h{h:02d}")
        spawned = {**incremental, "stage_s": {**incremental["stage_s"], "train": spawn_s}}
        spawned["total_s"] = round(sum(spawned["stage_s"].values()), 3)
        champion = read_champion_version(inc)  # what serves after the incremental delivery
        scratch_cfg = delivery_config(work / "scratch" / f"h{h:02d}", raw,
                                      args.scratch_chunk_steps, False, extra)  # fmt: skip
        models = RunLayout.of(inc.run_root).models_root / inc.model_name
        scratch = deliver_from_scratch(scratch_cfg, Interval(start, end), str(models / champion),
                                       args.scratch_chunk_steps, args.scratch_max_steps)  # fmt: skip
        row = {
            "hour": h, "incremental": incremental, "incremental_spawn": spawned,
            "scratch": scratch, "incremental_champion": champion,
            "speedup": round(scratch["total_s"] / incremental["total_s"], 2),
            "speedup_vs_spawn": round(scratch["total_s"] / spawned["total_s"], 2),
            "scratch_reached_incremental_auc": scratch["reached_incremental_auc"],
        }  # fmt: skip
        log.info(
            "hour %d: incremental %.1f s (%.1f s spawned), scratch %.1f s, %d steps; AUC on the "
            "retrain's gate episodes: incremental %s (%s), scratch %s, reached: %s; %.2fx "
            "(%.2fx vs spawned)",
            h, incremental["total_s"], spawned["total_s"], scratch["total_s"], scratch["steps"],
            scratch["incremental_auc"], champion, scratch["auc"],
            row["scratch_reached_incremental_auc"], row["speedup"], row["speedup_vs_spawn"],
        )  # fmt: skip
        hours.append(row)
    return {"spark_start_s": spark_start_s, "base": base, "hours": hours, **_totals(hours)}


def _reached(scratch_auc: float | None, incremental_auc: float | None) -> bool | None:
    if scratch_auc is None or incremental_auc is None:
        return None
    return scratch_auc >= incremental_auc


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def _totals(hours: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in ("incremental", "incremental_spawn", "scratch"):
        out[f"{arm}_stage_s"] = {
            s: round(sum(h[arm]["stage_s"][s] for h in hours), 3) for s in STAGES
        }
        out[f"{arm}_total_s"] = round(sum(h[arm]["total_s"] for h in hours), 3)
    out["incremental_mean_auc_own_hour"] = _mean([h["incremental"]["auc"] for h in hours])
    out["incremental_mean_auc"] = _mean([h["scratch"]["incremental_auc"] for h in hours])
    out["scratch_mean_auc"] = _mean([h["scratch"]["auc"] for h in hours])
    out["scratch_mean_steps"] = _mean([h["scratch"]["steps"] for h in hours])
    out["speedup"] = round(out["scratch_total_s"] / out["incremental_total_s"], 2)
    out["speedup_vs_spawn"] = round(out["scratch_total_s"] / out["incremental_spawn_total_s"], 2)
    overhead = sum(h["scratch"]["search_overhead_s"] for h in hours)
    out["scratch_search_overhead_s"] = round(overhead, 3)
    out["speedup_without_search_overhead"] = round(
        (out["scratch_total_s"] - overhead) / out["incremental_total_s"], 2
    )
    out["scratch_cap_hit_hours"] = [
        h["hour"] for h in hours if h["scratch_reached_incremental_auc"] is False
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="2 h base, 2 hours, 2,000 rows/hour, 8 / 4 steps, chunks of 4 up to 12 "
                        "(the test's run)")  # fmt: skip
    p.add_argument("--base-hours", type=int, default=24, help="base period (default: %(default)s)")
    p.add_argument(
        "--hours", type=int, default=12, help="new hourly intervals (default: %(default)s)"
    )
    p.add_argument("--rows-per-hour", type=int, default=5_000, help="raw rows per hour")
    p.add_argument("--base-steps", type=int, default=300, help="steps of the base (first) model")
    p.add_argument("--incremental-steps", type=int, default=30, help="steps of an incremental run")
    p.add_argument("--scratch-chunk-steps", type=int, default=50,
                   help="steps between two AUC checks of a retrain from scratch")  # fmt: skip
    p.add_argument("--scratch-max-steps", type=int, default=1_000,
                   help="cap of a retrain from scratch: the base's steps plus every hour's "
                        "incremental steps fit under the default")  # fmt: skip
    p.add_argument("--seed", type=int, default=7, help="generator seed (default: %(default)s)")
    p.add_argument("--work", default="out/bench/delivery", help="data and run roots")
    p.add_argument("--out", default="out/bench/delivery.json", help="JSON report")
    args = p.parse_args(argv)
    if args.quick:
        args.base_hours, args.hours, args.rows_per_hour = 2, 2, 2_000
        args.base_steps, args.incremental_steps = 8, 4
        args.scratch_chunk_steps, args.scratch_max_steps = 4, 12
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    from bench.etl_throughput import machine

    keys = ("quick", "base_hours", "hours", "rows_per_hour", "base_steps", "incremental_steps",
            "scratch_chunk_steps", "scratch_max_steps", "seed")  # fmt: skip
    report: dict[str, Any] = {
        "benchmark": "delivery", "machine": machine(), "target": {"speedup": 4.0},
        "settings": {k: getattr(args, k) for k in keys},
    }  # fmt: skip
    report.update(run(args))
    report["machine"]["load_average_end"] = list(os.getloadavg())
    write_json_atomic(Path(args.out), report)
    print(f"incremental {report['incremental_total_s']} s ({report['incremental_spawn_total_s']} s "
          f"with the trainer spawned) vs from scratch {report['scratch_total_s']} s over "
          f"{args.hours} hours: {report['speedup']}x ({report['speedup_vs_spawn']}x); mean AUC "
          f"{report['incremental_mean_auc']} vs {report['scratch_mean_auc']} on the same episodes; "
          f"cap hit in hours {report['scratch_cap_hit_hours']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
