"""The run's Markdown report, from the interval's step records."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from pipelines.ops import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def report(run_spec: str, report: Output[Markdown]):
    """Also written to ``<run_root>/intervals/<interval id>/report.md``."""
    import shutil

    from components.steps import spec
    from components.steps.flow import recorded_results, write_report

    cfg, interval = spec.decode(run_spec)
    shutil.copyfile(write_report(cfg, interval, recorded_results(cfg, interval)), report.path)
