"""The demo's last stage: one hourly interval through the ``continuous_delivery`` Airflow DAG.

It shows the production path on the same raw logs: the DAG (``dags/continuous_delivery.py``, the
same file a scheduler would run) waits for the interval's partition, validates it, runs the ETL,
validates the episodes, trains (warm-started from the champion when there is one), exports,
evaluates, gates and promotes, with every step's record under ``<out>/delivery/run/intervals/``.
It runs as ``airflow dags test`` in a child process with its own ``AIRFLOW_HOME`` (SQLite), so
nothing of a user's Airflow installation is touched:

    AIRFLOW_HOME=<out>/delivery/airflow AIRFLOW__CORE__DAGS_FOLDER=<repo>/dags \\
    METAREC_DELIVERY_CONFIG=<out>/delivery/delivery.json \\
        airflow dags test continuous_delivery <interval end>
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from components.demo.settings import DemoConfig

log = logging.getLogger("metarec.demo")
DAG_ID = "continuous_delivery"
REPO = Path(__file__).resolve().parents[2]
TRAINER_OVERRIDES = ["train.steps=30", "checkpoint.every=0", "eval.max_episodes=256"]
"""The debug trainer, a little longer: a delivery interval is an incremental update."""
ETL = {"k_support": 4, "q_query": 4, "min_support": 2, "min_query": 2, "num_buckets": 2,
       "shuffle_partitions": 4, "cold_fraction": 0.3}  # fmt: skip
"""One hour of demo traffic is a few thousand rows: small episodes, few files."""


def delivery_config(config: DemoConfig) -> dict[str, Any]:
    """The DAG's configuration (``components/steps/config.py``): the demo's raw logs, local backend."""
    p = config.paths()
    return {
        "run_root": str(p["delivery"] / "run"),
        "raw_root": str(p["raw"]),
        "schedule": "hourly",
        "start_date": config.start,
        "backend": "local",
        "trainer_config": "debug",
        "trainer_overrides": TRAINER_OVERRIDES,
        "model_name": "ctr-delivery",
        "etl": ETL,
        "raw_poke_interval_s": 5,
        "raw_wait_timeout_s": 60,
    }


def _environment(home: Path, config_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "METAREC_DELIVERY_CONFIG": str(config_file),
    })  # fmt: skip
    return env


def _airflow(args: list[str], env: dict[str, str], sink: IO[str], log_file: Path) -> None:
    """Run ``airflow <args>`` with its output written to ``sink``; fail with its tail."""
    tail: deque[str] = deque(maxlen=30)
    proc = subprocess.Popen([sys.executable, "-m", "airflow", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.write(line)
        tail.append(line.rstrip())
        if "[DAG TEST] end task" in line:  # progress: one line per finished task
            task = line.split("task_id=")[-1].split()[0]
            log.info("    airflow task %s done", task)
    code = proc.wait()
    if code != 0:
        raise RuntimeError(
            f"`airflow {' '.join(args)}` failed (exit {code}); log {log_file}:\n" + "\n".join(tail)
        )


def run_delivery(config: DemoConfig) -> dict[str, Any]:
    """Run the DAG for the demo's last hour; return the interval's step records, summarised.

    The DAG's own step records decide what a rerun redoes (nothing, when the hour was delivered).
    """
    from components.steps.layout import Interval
    from trainer.durable import write_json_atomic

    out = config.paths()["delivery"]
    config_file = out / "delivery.json"
    settings = delivery_config(config)
    write_json_atomic(config_file, settings)
    env = _environment(out / "airflow", config_file)
    log_file = out / "airflow.log"
    end = Interval(config.start, config.end).end
    with log_file.open("w") as sink:
        log.info("  initialising Airflow's metadata DB (SQLite) in %s ...", out / "airflow")
        _airflow(["db", "migrate"], env, sink, log_file)
        log.info("  airflow dags test %s %s:00 (the hour before it) ...", DAG_ID, config.end)
        _airflow(["dags", "test", DAG_ID, f"{config.end}:00:00"], env, sink, log_file)
    return summarise(settings["run_root"], Interval(end - timedelta(hours=1), end), log_file)


def summarise(run_root: str, interval, log_file: Path) -> dict[str, Any]:
    """What the DAG's step records of ``interval`` say: data, gate, promotion.

    Raises:
        RuntimeError: the DAG recorded no ETL, gate or promotion for the interval.
    """
    from components.steps.layout import RunLayout, read_record

    layout = RunLayout.of(run_root)
    records = {s: read_record(layout, interval, s) for s in ("etl", "gate", "promote")}
    missing = [s for s, r in records.items() if r is None]
    if missing:
        raise RuntimeError(
            f"the DAG ran but recorded no {missing} for {interval.id} under {run_root}; see {log_file}"
        )
    etl, gate, promote = records["etl"], records["gate"], records["promote"]
    return {
        "dag": DAG_ID,
        "interval": interval.id,
        "rows_read": etl["rows_read"],
        "episodes": etl["episodes"],
        "verdict": gate["verdict"],
        "gate_metric": gate["metric"],
        "challenger": gate["challenger"],
        "challenger_value": gate["challenger_value"],
        "champion": promote["champion"],
        "promoted": promote["promoted"],
        "report": str(layout.records(interval) / "report.md"),
        "records": str(layout.records(interval)),
        "log": str(log_file),
    }
