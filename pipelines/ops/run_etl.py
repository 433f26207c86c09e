"""The Spark Meta-IO ETL of the interval into ``<run_root>/episodes/<interval id>/``."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from pipelines.ops import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def run_etl(run_spec: str, episodes: Output[Dataset], metrics: Output[Metrics]):
    """``episodes`` names the ETL output (path, content hash); ``metrics`` holds the accounting
    (rows read = kept + quarantined) and the episodes per split."""
    import json

    from components.steps import spec
    from components.steps.data import etl_step

    cfg, interval = spec.decode(run_spec)
    r = etl_step(cfg, interval)
    with open(episodes.path, "w") as f:
        json.dump(r.to_dict(), f)
    episodes.metadata.update(
        {"path": r.episodes_dir, "content_hash": r.content_hash, "interval": interval.id}
    )
    for key in ("rows_read", "rows_kept", "rows_quarantined"):
        metrics.log_metric(key, getattr(r, key))
    for split, n in r.episodes.items():
        metrics.log_metric(f"episodes_{split}", n)
