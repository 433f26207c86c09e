"""
### metarec model operations: export an interval's run, roll back, or show the champion

Manual only (no schedule). Trigger with a conf such as:

- `{"action": "rollback", "reason": "CTR dropped after v7"}`: the previous champion serves again
  (one atomic pointer swap; the history records who and why);
- `{"action": "export", "interval_start": "2026-11-01T00", "interval_end": "2026-11-01T01"}`:
  (re-)export the model that `continuous_delivery` trained for that interval (the same version
  comes back when that checkpoint was exported already); it is not promoted;
- `{"action": "status"}`: the champion, its stack and the promotion history.

Every action logs its JSON result and returns it as the task's XCom. Config:
`$METAREC_DELIVERY_CONFIG` (the same as `continuous_delivery`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from components.steps.config import load_delivery_config
from components.steps.layout import parse_utc

CFG = load_delivery_config()


@dag(
    dag_id="model_ops",
    schedule=None,
    start_date=parse_utc(CFG.start_date),
    catchup=False,
    max_active_runs=1,  # one pointer change at a time (the registry also locks)
    default_args={"owner": "ml-platform", "retries": 2, "retry_delay": timedelta(minutes=1)},
    tags=["metarec", "model-ops"],
    params={
        "action": Param("status", enum=["status", "rollback", "export"]),
        "reason": Param("", type="string", description="kept in the promotion history"),
        "interval_start": Param("", type="string", description="export: e.g. 2026-11-01T00"),
        "interval_end": Param("", type="string", description="export: e.g. 2026-11-01T01"),
    },
    doc_md=__doc__,
)
def model_ops() -> None:
    @task.branch
    def choose(params: dict[str, Any] | None = None) -> str:
        return {"status": "status", "rollback": "rollback", "export": "export_interval"}[
            params["action"]
        ]

    @task
    def status() -> dict[str, Any]:
        from components.steps import load_delivery_config
        from components.steps.delivery import champion_status

        return champion_status(load_delivery_config())

    @task
    def rollback(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from components.steps import load_delivery_config
        from components.steps.delivery import rollback_step

        return rollback_step(
            load_delivery_config(), params["reason"] or "manual rollback"
        ).to_dict()

    @task
    def export_interval(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from components.steps import Interval, load_delivery_config
        from components.steps.delivery import export_recorded_run

        if not (params["interval_start"] and params["interval_end"]):
            raise ValueError("action=export needs interval_start and interval_end (UTC hours)")
        interval = Interval(params["interval_start"], params["interval_end"])
        return export_recorded_run(load_delivery_config(), interval).to_dict()

    choose() >> [status(), rollback(), export_interval()]


model_ops()
