"""Resolve the pipeline parameters into the run spec that every later component reads."""

# ruff: noqa: UP045 (kfp 2.17 reads `Optional[X]` parameters and fails on `X | None`)
from typing import Optional

from kfp import dsl

from pipelines.ops import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def resolve_run(
    schedule_time: str,
    interval_hours: int,
    raw_root: str,
    run_root: str,
    backend: str,
    nproc: int,
    trainer_config: str,
    model_name: str,
    spark_master: str,
    gate_metric: str,
    gate_tolerance: float,
    gauc_tolerance: float,
    calibration_tolerance: float,
    interval_start: Optional[str] = None,
    interval_end: Optional[str] = None,
    model_arch: Optional[str] = None,
    embedding_dim: Optional[int] = None,
    meta_mode: Optional[str] = None,
    inner_steps: Optional[int] = None,
    inner_lr: Optional[float] = None,
    train_steps: Optional[int] = None,
    delivery_config: Optional[str] = None,
) -> str:
    """Validate the parameters (a bad one fails here, before any work) and return the run spec
    (``components.steps.spec``: the interval, the parameters and the ``delivery_config`` file's
    other settings). ``schedule_time`` is KFP's scheduled time placeholder."""
    from components.steps.spec import from_pipeline_parameters, pipeline_interval

    interval = pipeline_interval(interval_start, interval_end, schedule_time, interval_hours)
    params = {
        "raw_root": raw_root,
        "run_root": run_root,
        "backend": backend,
        "nproc": nproc,
        "trainer_config": trainer_config,
        "model_name": model_name,
        "spark_master": spark_master,
        "gate_metric": gate_metric,
        "gate_tolerance": gate_tolerance,
        "gauc_tolerance": gauc_tolerance,
        "calibration_tolerance": calibration_tolerance,
    }
    model = {
        "model_arch": model_arch,
        "embedding_dim": embedding_dim,
        "meta_mode": meta_mode,
        "inner_steps": inner_steps,
        "inner_lr": inner_lr,
        "train_steps": train_steps,
    }
    return from_pipeline_parameters(params, model, interval, delivery_config)
