"""The continuous-delivery steps of one data interval, as plain functions.

The Airflow DAGs (``dags/``), the KFP pipeline (``pipelines/``) and the command line
(``python -m components.steps``) call these same functions; none of them holds logic of its own.
Each step takes the flow's :class:`~components.steps.config.DeliveryConfig` and an
:class:`~components.steps.layout.Interval`, returns a small dataclass (``to_dict()`` is JSON for
XCom or a KFP output), keeps its outputs under one run root keyed by the interval id, and is
idempotent per interval (``layout.py`` explains the records that make reruns change nothing).

    from components.steps import DeliveryConfig, Interval, deliver_interval
    cfg = DeliveryConfig(run_root="out/delivery", raw_root="out/raw")
    deliver_interval(cfg, Interval.parse("2026-11-01T00/1h"))

Modules: ``config`` (the settings), ``layout`` (folders, interval ids, step records), ``data``
(raw check, raw validation, ETL, episode validation), ``training`` (warm-start choice, launchers),
``delivery`` (export, evaluation, gate, promotion, rollback), ``flow`` (all steps + report).
Only the standard library is imported here: Spark, torch and great-expectations are imported
inside the step functions.
"""

from components.steps.config import DeliveryConfig, load_delivery_config
from components.steps.layout import Interval, RunLayout

__all__ = ["DeliveryConfig", "Interval", "RunLayout", "deliver_interval", "load_delivery_config"]


def deliver_interval(*args, **kwargs):
    """See :func:`components.steps.flow.deliver_interval` (imported lazily)."""
    from components.steps.flow import deliver_interval as run

    return run(*args, **kwargs)
