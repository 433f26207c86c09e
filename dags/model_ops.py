"""
### metarec model operations: export an interval's run, roll back, or show the champion

Manual only (no schedule). Trigger with a conf such as:

- `{"action": "rollback", "reason": "CTR dropped after v7", "expect": "v7"}`: the previous
  champion serves again (one atomic pointer swap; the history records who and why). The swap is
  compare-and-swap: it happens only if `expect` (default: the champion when the run started,
  read once by **champion_at_start**) still serves, and it carries the run id as its key, so a
  retried **rollback** finds its own change and returns it instead of rolling back twice;
- `{"action": "export", "interval_start": "2026-11-01T00", "interval_end": "2026-11-01T01"}`:
  (re-)export the model that `continuous_delivery` trained for that interval (the same version
  comes back when that checkpoint was exported already); it is not promoted;
- `{"action": "status"}`: the champion, its stack and the promotion history.

Every action logs its JSON result and returns it as the task's XCom; every task may be retried
(status and export are idempotent, rollback is guarded as above). Timeouts and the failure
callback: `components/steps/dag_policy.py` (a failure record goes to
`<run_root>/failures/<run id>/`). Config: `$METAREC_DELIVERY_CONFIG` (required; the same as
`continuous_delivery`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from components.steps import dag_policy as policy
from components.steps.config import load_dag_config
from components.steps.layout import parse_utc

CFG = load_dag_config()


@dag(
    dag_id="model_ops",
    schedule=None,
    start_date=parse_utc(CFG.start_date),
    catchup=False,
    max_active_runs=1,  # one pointer change at a time (the registry also locks)
    dagrun_timeout=policy.dagrun_timeout(CFG),
    default_args=policy.task_defaults(CFG, retry_delay=timedelta(minutes=1)),
    tags=["metarec", "model-ops"],
    params={
        "action": Param("status", enum=["status", "rollback", "export"]),
        "reason": Param("", type="string", description="kept in the promotion history"),
        "expect": Param(
            "",
            type="string",
            pattern=r"^(v[0-9]+)?$",
            description="rollback: the champion to roll back from, e.g. v7 (refused if another "
            "one serves); empty: the champion when the run starts",
        ),
        "interval_start": Param("", type="string", description="export: e.g. 2026-11-01T00"),
        "interval_end": Param("", type="string", description="export: e.g. 2026-11-01T01"),
    },
    doc_md=__doc__,
)
def model_ops() -> None:
    @task
    def champion_at_start() -> str | None:
        from components.steps.delivery import read_champion_version

        return read_champion_version(load_dag_config())

    @task.branch
    def choose(params: dict[str, Any] | None = None) -> str:
        return {"status": "status", "rollback": "rollback", "export": "export_interval"}[
            params["action"]
        ]

    @task
    def status() -> dict[str, Any]:
        from components.steps.delivery import champion_status

        return champion_status(load_dag_config())

    @task
    def rollback(
        at_start: str | None, params: dict[str, Any] | None = None, run_id: str | None = None
    ) -> dict[str, Any]:
        from components.steps.delivery import rollback_step

        expect = params["expect"] or at_start
        reason = params["reason"] or "manual rollback"
        key = f"model_ops {run_id}"
        return rollback_step(load_dag_config(), reason, expect=expect, key=key).to_dict()

    @task
    def export_interval(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from components.steps import Interval
        from components.steps.delivery import export_recorded_run

        if not (params["interval_start"] and params["interval_end"]):
            raise ValueError("action=export needs interval_start and interval_end (UTC hours)")
        interval = Interval(params["interval_start"], params["interval_end"])
        return export_recorded_run(load_dag_config(), interval).to_dict()

    choose() >> [status(), rollback(champion_at_start()), export_interval()]


model_ops()
