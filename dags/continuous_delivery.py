"""
### metarec continuous delivery: one data interval per run, from raw logs to a promoted model

Every tick of the schedule (hourly or daily, from the delivery config) covers one data interval
`[data_interval_start, data_interval_end)` (a `CronDataIntervalTimetable`: a plain cron string
would give Airflow 3 runs with no data interval):

1. **wait_for_raw_partitions**: a sensor in reschedule mode until every hourly `dt=/hr=`
   partition of the interval has landed: holds a data file or a `_SUCCESS` marker, the ETL's
   rule (fails after `raw_wait_timeout_s`);
2. **validate_raw**: the great-expectations raw-log suite (fails closed);
3. **run_etl**: the Spark Meta-IO ETL into `<run_root>/episodes/<interval id>/`;
4. **validate_episodes**: the episode suite (pyarrow, no Spark); emits the `metarec_episodes`
   Asset on success;
5. **train**: incremental training warm-started from the champion's checkpoint, on the
   configured backend (`local` or `kubernetes`);
6. **export_model** → **evaluate** (challenger and champion on this interval's episodes) →
   **gate** → **promote** (one atomic pointer swap; emits the model Asset when it moved);
7. **report**: `<run_root>/intervals/<interval id>/report.md`.

The tasks only call `components.steps`; every step is idempotent per interval, so clearing a run,
a retry or a backfill (`airflow backfill create --dag-id continuous_delivery --from-date ...
--to-date ... --max-active-runs 1`, oldest first) never duplicates outputs or promotions; the
promotion is also compare-and-swap against the champion that **evaluate** scored, so a retried
**promote** never moves the pointer twice and never over a champion changed meanwhile.
Trigger with `{"force": true}` to recompute an interval instead of reusing its records.

Production settings (`[airflow]` of the config, `components/steps/dag_policy.py`): Spark tasks
in pool `metarec_spark`, training in `metarec_training` (create them: `airflow pools set`), an
`execution_timeout` on every task, a `dagrun_timeout`, and a failure callback that logs one JSON
line and writes `<run_root>/intervals/<interval id>/failures/<dag>.<task>.try<N>.json`.
Config: the file in `$METAREC_DELIVERY_CONFIG` (required; absolute `run_root` and `raw_root`;
see `components/steps/config.py`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from components.steps import dag_policy as policy
from components.steps.config import load_dag_config
from components.steps.layout import RunLayout, parse_utc
from components.steps.spec import result  # a step result back from its XCom (JSON)

CFG = load_dag_config()  # no config file, or a relative root: an import error naming the variable
LAYOUT = RunLayout.of(CFG.run_root)
EPISODES = Asset(name="metarec_episodes", uri=f"file://{LAYOUT.episodes_root}")
MODEL = Asset(
    name=f"metarec_model_{CFG.model_name}", uri=f"file://{LAYOUT.models_root / CFG.model_name}"
)


def _run() -> tuple[Any, Any, bool]:
    """The config, the run's data interval and the ``force`` param, from the task context."""
    from airflow.sdk import get_current_context

    from components.steps import Interval
    from components.steps.config import load_dag_config

    context = get_current_context()
    interval = Interval(context["data_interval_start"], context["data_interval_end"])
    return load_dag_config(), interval, bool(context["params"].get("force", False))


@dag(
    dag_id="continuous_delivery",
    schedule=CronDataIntervalTimetable(CFG.cron, timezone="UTC"),
    start_date=parse_utc(CFG.start_date),
    catchup=False,
    max_active_runs=1,  # interval N warm-starts from the champion that interval N-1 promoted
    dagrun_timeout=policy.dagrun_timeout(CFG),
    default_args=policy.task_defaults(CFG, retry_delay=timedelta(minutes=5)),
    tags=["metarec", "training", "continuous-delivery"],
    params={"force": Param(False, type="boolean", description="recompute, do not reuse records")},
    doc_md=__doc__,
)
def continuous_delivery() -> None:
    @task.sensor(
        poke_interval=CFG.raw_poke_interval_s, timeout=CFG.raw_wait_timeout_s, mode="reschedule"
    )
    def wait_for_raw_partitions():
        from airflow.sdk import PokeReturnValue

        from components.steps.data import check_raw

        cfg, interval, _ = _run()
        status = check_raw(cfg, interval)
        return PokeReturnValue(is_done=status.ready, xcom_value=status.__dict__)

    @task(**policy.spark_task(CFG))
    def validate_raw(raw: dict[str, Any]) -> dict[str, Any]:
        from components.steps.data import validate_raw_step

        cfg, interval, force = _run()
        return validate_raw_step(cfg, interval, force=force).to_dict()

    @task(**policy.spark_task(CFG))
    def run_etl(raw_validation: dict[str, Any]) -> dict[str, Any]:
        from components.steps.data import etl_step

        cfg, interval, force = _run()
        return etl_step(cfg, interval, force=force).to_dict()

    @task(outlets=[EPISODES])  # pyarrow, no Spark: a plain task (default pool and timeout)
    def validate_episodes(etl: dict[str, Any], *, outlet_events=None) -> dict[str, Any]:
        from components.steps.data import validate_episodes_step

        cfg, interval, force = _run()
        validated = validate_episodes_step(cfg, interval, force=force).to_dict()
        outlet_events[EPISODES].extra = {
            "interval": interval.id,
            "path": etl["episodes_dir"],
            "content_hash": etl["content_hash"],
        }
        return validated

    @task(**policy.training_task(CFG))
    def train(etl: dict[str, Any], validation: dict[str, Any]) -> dict[str, Any]:
        from components.steps.data import EtlStepResult
        from components.steps.training import train_step

        cfg, interval, force = _run()
        return train_step(cfg, interval, result(EtlStepResult, etl), force=force).to_dict()

    @task
    def export_model(trained: dict[str, Any], etl: dict[str, Any]) -> dict[str, Any]:
        from components.steps.data import EtlStepResult
        from components.steps.delivery import export_step
        from components.steps.training import TrainStepResult

        cfg, interval, _ = _run()
        t, e = result(TrainStepResult, trained), result(EtlStepResult, etl)
        return export_step(cfg, interval, t, e).to_dict()

    @task
    def evaluate(exported: dict[str, Any], etl: dict[str, Any]) -> dict[str, Any]:
        from components.steps.data import EtlStepResult
        from components.steps.delivery import ExportStepResult, evaluate_step

        cfg, interval, force = _run()
        ex, e = result(ExportStepResult, exported), result(EtlStepResult, etl)
        return evaluate_step(cfg, interval, ex, e, force=force).to_dict()

    @task
    def gate(evaluation: dict[str, Any]) -> dict[str, Any]:
        from components.steps.delivery import EvaluationResult, gate_step

        cfg, interval, force = _run()
        return gate_step(cfg, interval, result(EvaluationResult, evaluation), force=force).to_dict()

    @task(outlets=[MODEL])
    def promote(decision: dict[str, Any], *, outlet_events=None) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from components.steps.delivery import GateResult, promote_step

        cfg, interval, _ = _run()
        moved = promote_step(cfg, interval, result(GateResult, decision))
        if not moved.promoted or moved.reused:
            # Skipped: no model Asset event when the pointer did not move in this run.
            raise AirflowSkipException(f"champion unchanged ({moved.reason})")
        outlet_events[MODEL].extra = {
            "interval": interval.id,
            "version": moved.champion,
            "previous": moved.previous,
        }
        return moved.to_dict()

    @task(trigger_rule="none_failed")
    def report() -> str:
        from components.steps.flow import recorded_results, write_report

        cfg, interval, _ = _run()
        return write_report(cfg, interval, recorded_results(cfg, interval))

    raw = wait_for_raw_partitions()
    raw_ok = validate_raw(raw)
    etl = run_etl(raw_ok)
    valid = validate_episodes(etl)
    trained = train(etl, valid)
    exported = export_model(trained, etl)
    evaluation = evaluate(exported, etl)
    decision = gate(evaluation)
    promoted = promote(decision)
    promoted >> report()


continuous_delivery()
