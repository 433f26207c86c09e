"""Validate the interval's episodes against the contract and the manifest (fails closed)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from pipelines.ops import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def validate_episodes(
    run_spec: str, episodes: Input[Dataset], report: Output[Markdown], metrics: Output[Metrics]
) -> bool:
    """Raises when a check fails, so training never starts on bad episodes; returns True."""
    import os
    import shutil

    from components.steps import spec
    from components.steps.data import validate_episodes_step

    cfg, interval = spec.decode(run_spec)
    result = validate_episodes_step(cfg, interval)
    if os.path.isfile(result.report):
        shutil.copyfile(result.report, report.path)
    else:
        with open(report.path, "w") as f:
            f.write(f"# episodes validation: passed\n\n{result.statistics}\n")
    for key, value in result.statistics.items():
        metrics.log_metric(f"checks_{key}", value)
    return result.success
