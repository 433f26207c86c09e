"""Validate the interval's raw ad logs (great-expectations; fails closed)."""

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from pipelines.ops import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def validate_raw(run_spec: str, report: Output[Markdown], metrics: Output[Metrics]) -> bool:
    """Raises (the run fails) when a check fails; otherwise returns True."""
    import shutil

    from components.steps import spec
    from components.steps.data import check_raw, validate_raw_step

    cfg, interval = spec.decode(run_spec)
    status = check_raw(cfg, interval)
    if not status.ready:
        raise ValueError(f"{interval.id}: raw data not ready: {status.reason}")
    result = validate_raw_step(cfg, interval)
    shutil.copyfile(result.report, report.path)
    for key, value in result.statistics.items():
        metrics.log_metric(f"checks_{key}", value)
    return result.success
