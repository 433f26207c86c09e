"""Resolve the pipeline parameters into the run spec that every later component reads."""

from kfp import dsl

from pipelines.ops import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def resolve_run(
    interval_start: str,
    interval_end: str,
    raw_root: str,
    run_root: str,
    base_config: str,
    model_arch: str,
    embedding_dim: int,
    meta_mode: str,
    inner_steps: int,
    inner_lr: float,
    train_steps: int,
) -> str:
    """Validate the parameters (a bad one fails here, before any work) and return the run spec:
    ``base_config`` (DeliveryConfig fields as JSON) with the data roots (when given) plus the model/meta-learning parameters as
    trainer overrides, and the interval."""
    import json

    from components.steps.spec import from_pipeline_parameters

    model = {
        "model_arch": model_arch,
        "embedding_dim": embedding_dim,
        "meta_mode": meta_mode,
        "inner_steps": inner_steps,
        "inner_lr": inner_lr,
        "train_steps": train_steps,
    }
    roots = {"raw_root": raw_root, "run_root": run_root}
    return from_pipeline_parameters(
        json.loads(base_config), model, interval_start, interval_end, roots
    )
