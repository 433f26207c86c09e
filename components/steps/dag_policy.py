"""What every metarec Airflow task gets: retries, timeouts, pools and the failure callback.

Standard library only: the DAG files call these at parse time. The numbers come from the delivery
config's ``[airflow]`` section (every key optional; :class:`~components.steps.config.AirflowSettings` has the defaults)::

    [airflow]
    spark_pool = "metarec_spark"        # the Spark tasks: raw validation, the ETL
    training_pool = "metarec_training"  # the training task (a local run or a cluster job)
    spark_timeout_s = 10800             # execution_timeout of each Spark task
    training_timeout_s = 43200          # execution_timeout of the training task
    task_timeout_s = 3600               # every other task, and each run of the raw-data sensor
    dagrun_timeout_s = 86400            # a whole DAG run (the sensor's wait included)

The pools must exist before the DAGs run (``airflow pools set metarec_spark 2 "..."``, see
``dags/README.md``): the scheduler leaves the tasks of a missing pool unscheduled.

Retries: every task of the DAGs may be retried, because every step is idempotent per data interval
(step records) and the two that change the champion are compare-and-swap with an idempotency key
(``components/promotion/registry.py``): a retry returns what the first try did.

A task that fails for good (retries spent) calls :func:`on_task_failure`: one structured log line
(``metarec task failed {...}``) and a failure record under the interval's records,
``<run_root>/intervals/<interval id>/failures/<dag>.<task>.try<N>.json``, or for a run without a
data interval (``model_ops``) ``<run_root>/failures/<run id>/<dag>.<task>.try<N>.json``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.steps.layout import Interval, RunLayout
from trainer.durable import write_json_atomic

if TYPE_CHECKING:
    from components.steps.config import DeliveryConfig

log = logging.getLogger(__name__)
OWNER = "ml-platform"
RETRIES = 2
FAILURE_FORMAT = "metarec.failure"


def task_defaults(cfg: DeliveryConfig, retry_delay: timedelta) -> dict[str, Any]:
    """The ``default_args`` of a metarec DAG: owner, retries, the step timeout, the callback."""
    return {
        "owner": OWNER,
        "retries": RETRIES,
        "retry_delay": retry_delay,
        "execution_timeout": timedelta(seconds=cfg.airflow.task_timeout_s),
        "on_failure_callback": on_task_failure,
    }


def spark_task(cfg: DeliveryConfig) -> dict[str, Any]:
    """``@task`` arguments of a Spark task: its pool and timeout."""
    s = cfg.airflow
    return {"pool": s.spark_pool, "execution_timeout": timedelta(seconds=s.spark_timeout_s)}


def training_task(cfg: DeliveryConfig) -> dict[str, Any]:
    """``@task`` arguments of the training task: its pool and timeout."""
    s = cfg.airflow
    return {"pool": s.training_pool, "execution_timeout": timedelta(seconds=s.training_timeout_s)}


def dagrun_timeout(cfg: DeliveryConfig) -> timedelta:
    return timedelta(seconds=cfg.airflow.dagrun_timeout_s)


def failure_record_path(
    run_root: str,
    dag_id: str,
    task_id: str,
    run_id: str,
    try_number: int,
    interval: Interval | None,
) -> Path:
    """Where :func:`on_task_failure` writes (module docstring)."""
    layout = RunLayout.of(run_root)
    name = f"{dag_id}.{task_id}.try{try_number}.json"
    if interval is not None:
        return layout.records(interval) / "failures" / name
    return layout.root / "failures" / re.sub(r"[^A-Za-z0-9._+-]", "_", run_id) / name


def _interval(context: Mapping[str, Any]) -> Interval | None:
    """The run's data interval, or None (a manual run of an unscheduled DAG has none)."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    try:
        return Interval(start, end) if start is not None and end is not None else None
    except ValueError:  # not whole hours, or empty
        return None


def on_task_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` of every task: log one JSON line and write a failure record.

    Never raises (a callback's error would hide the task's): a record that cannot be written is
    logged instead.
    """
    from components.steps.config import load_dag_config

    ti = context["ti"]
    interval = _interval(context)
    record = {
        "format": FAILURE_FORMAT,
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "try_number": ti.try_number,
        "interval": interval.id if interval else None,
        "error": repr(context.get("exception")),
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    log.error("metarec task failed %s", json.dumps(record, sort_keys=True))
    try:
        path = failure_record_path(
            load_dag_config().run_root, ti.dag_id, ti.task_id, ti.run_id, ti.try_number, interval
        )
        write_json_atomic(path, record)
    except (OSError, ValueError) as e:
        log.error(
            "metarec: could not write the failure record of %s.%s: %s", ti.dag_id, ti.task_id, e
        )
