"""
### metarec data quality: a daily audit of the raw ad logs and of the episodes made from them

Once a day (a `CronDataIntervalTimetable` over the previous UTC day):

1. **wait_for_raw_day**: a reschedule-mode sensor until all 24 hourly partitions have landed;
2. **validate_raw_day**: the great-expectations raw-log suite over the whole day (nulls, types,
   duplicates, ranges, CTR band, row count against the day before); the report goes to
   `<run_root>/intervals/<day id>/raw_validation/report.{json,md}`; a failure fails the run
   (and alerts through the usual Airflow failure callbacks);
3. **audit_episodes**: every ETL output of the day under `<run_root>/episodes/` that has no
   validation record in its manifest is validated now; the task fails if any of them fails.

It shares the config (`$METAREC_DELIVERY_CONFIG`, required), the step functions and the
production settings (`components/steps/dag_policy.py`: the Spark tasks in pool `metarec_spark`,
timeouts, the failure callback) with `continuous_delivery`, and reruns are idempotent (a passed
check is recorded and reused), so retries are safe.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, dag, task

from components.steps import dag_policy as policy
from components.steps.config import load_dag_config
from components.steps.layout import parse_utc

CFG = load_dag_config()


def _day() -> tuple[Any, Any]:
    from airflow.sdk import get_current_context

    from components.steps import Interval
    from components.steps.config import load_dag_config

    context = get_current_context()
    return load_dag_config(), Interval(context["data_interval_start"], context["data_interval_end"])


@dag(
    dag_id="data_quality",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=parse_utc(CFG.start_date),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=policy.dagrun_timeout(CFG),
    default_args=policy.task_defaults(CFG, retry_delay=timedelta(minutes=10)),
    tags=["metarec", "data-quality"],
    doc_md=__doc__,
)
def data_quality() -> None:
    @task.sensor(
        poke_interval=CFG.raw_poke_interval_s, timeout=CFG.raw_wait_timeout_s, mode="reschedule"
    )
    def wait_for_raw_day():
        from airflow.sdk import PokeReturnValue

        from components.steps.data import check_raw

        cfg, day = _day()
        status = check_raw(cfg, day)
        return PokeReturnValue(is_done=status.ready, xcom_value=status.__dict__)

    @task(**policy.spark_task(CFG))
    def validate_raw_day(raw: dict[str, Any]) -> dict[str, Any]:
        from components.steps.data import validate_raw_step

        cfg, day = _day()
        return validate_raw_step(cfg, day).to_dict()

    @task()  # the episode suite reads with pyarrow, no Spark: a plain task
    def audit_episodes(raw_validation: dict[str, Any]) -> dict[str, Any]:
        from components.steps.quality import audit_episodes as audit

        cfg, day = _day()
        return audit(cfg, day)

    audit_episodes(validate_raw_day(wait_for_raw_day()))


data_quality()
