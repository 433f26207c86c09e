"""The metarec training pipeline (KFP v2): one data interval from raw logs to a promoted model.

    resolve_run -> validate_raw -> run_etl -> validate_episodes
      -> dsl.If(backend == "local"): train (GPU pod: torchrun with nproc ranks)
         dsl.Else:                   train (launcher pod: submits the PyTorchJob/TrainJob, no GPU)
      -> export_model -> evaluate -> gate -> dsl.If(promote): promote -> report | dsl.Else: report

The same step functions as the Airflow ``continuous_delivery`` DAG (``components.steps``), the
same run root layout and per-interval records: a pipeline run and a DAG run of one interval
produce the same outputs, and rerunning either changes nothing. Caching is off for every task:
KFP's cache would skip a task whose outputs on the shared volume were since replaced, or reuse
a resolved spec whose ``delivery_config`` file has changed since.

Training is two tasks of one component under ``dsl.If`` on the ``backend`` parameter, so that
only the task that trains here asks for GPUs: with ``backend = "kubernetes"`` the pod only
submits the PyTorchJob/TrainJob and waits. ``dsl.OneOf`` hands the branch's result to the export.

Compile: ``python -m pipelines.compile`` (writes ``pipelines/compiled/training_pipeline.yaml``).
"""

# ruff: noqa: UP045 (kfp 2.17 reads `Optional[X]` parameters and fails on `X | None`)
from typing import Optional

from kfp import dsl
from kfp.dsl.pipeline_channel import PipelineChannel

from pipelines import platform
from pipelines.ops.evaluate import evaluate
from pipelines.ops.export_model import export_model
from pipelines.ops.gate import gate
from pipelines.ops.promote import promote
from pipelines.ops.report import report
from pipelines.ops.resolve_run import resolve_run
from pipelines.ops.run_etl import run_etl
from pipelines.ops.train import train
from pipelines.ops.validate_episodes import validate_episodes
from pipelines.ops.validate_raw import validate_raw


def _task(
    task: dsl.PipelineTask, kind: str, *, retry: bool, gpus: PipelineChannel | None = None
) -> dsl.PipelineTask:
    """No cache (module docstring); the task's kind and retries (``platform.apply``)."""
    task.set_caching_options(False)
    return platform.apply(task, kind, retry=retry, gpus=gpus)


@dsl.pipeline(
    name="metarec-training",
    description="Meta-learning CTR model of one ad-log interval: validate, ETL, train "
    "(warm-started from the champion), evaluate, gate, promote.",
)
def training_pipeline(
    interval_start: Optional[str] = None,
    interval_end: Optional[str] = None,
    interval_hours: int = 1,
    raw_root: str = "/data/raw",
    run_root: str = "/data/delivery",
    backend: str = "local",
    nproc: int = 1,
    trainer_config: str = "default",
    model_name: str = "ctr-dlrm",
    gate_metric: str = "test_cold.after.auc",
    gate_tolerance: float = 0.001,
    gauc_tolerance: float = 0.002,
    calibration_tolerance: float = 0.05,
    spark_master: str = "local[4]",
    model_arch: Optional[str] = None,
    embedding_dim: Optional[int] = None,
    meta_mode: Optional[str] = None,
    inner_steps: Optional[int] = None,
    inner_lr: Optional[float] = None,
    train_steps: Optional[int] = None,
    delivery_config: Optional[str] = None,
):
    """Train, gate and promote the model of one data interval.

    Each description is one line: the KFP UI shows them as written (pipelines/README.md has more).

    Args:
        interval_start: First UTC hour of a one-off/backfill run (2026-11-01T00); unset: scheduled.
        interval_end: End UTC hour (exclusive) of a one-off/backfill run; unset: scheduled.
        interval_hours: Hours of a scheduled run's interval, which ends at its scheduled time.
        raw_root: Raw ad-log root (dt=/hr= partitions): a path on the shared volume or a URI.
        run_root: Run root on the shared volume: episodes, training runs, models, records.
        backend: Where the ETL and training run: local (in the tasks' pods) or kubernetes (jobs).
        nproc: Training ranks of the local backend, one GPU each.
        trainer_config: Trainer run config: a packaged name (debug, default) or a TOML path.
        model_name: Registry name of the model (models/<name>/v<N>).
        gate_metric: Metric that decides promotion: <split>.<before|after>.<metric>.
        gate_tolerance: Smallest change of gate_metric that counts as better or worse.
        gauc_tolerance: Refuse a challenger whose GAUC drops more than this (1e9: no guard).
        calibration_tolerance: Refuse one whose |pred/obs - 1| grows more than this (1e9: none).
        spark_master: Spark master of the ETL and raw validation tasks (local[4] fits their pods).
        model_arch: Model architecture (dlrm, deepfm, ...); unset keeps the trainer config's.
        embedding_dim: Embedding size; unset keeps the trainer config's.
        meta_mode: Meta-learning mode (maml, fomaml, ...); unset keeps the trainer config's.
        inner_steps: Inner-loop adaptation steps; unset keeps the trainer config's.
        inner_lr: Inner-loop learning rate; unset keeps the trainer config's.
        train_steps: Training steps of the interval; unset keeps the trainer config's.
        delivery_config: DeliveryConfig file (TOML/JSON) on the shared volume for other settings.
    """
    spec = resolve_run(
        schedule_time=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER,
        interval_start=interval_start,
        interval_end=interval_end,
        interval_hours=interval_hours,
        raw_root=raw_root,
        run_root=run_root,
        backend=backend,
        nproc=nproc,
        trainer_config=trainer_config,
        model_name=model_name,
        spark_master=spark_master,
        gate_metric=gate_metric,
        gate_tolerance=gate_tolerance,
        gauc_tolerance=gauc_tolerance,
        calibration_tolerance=calibration_tolerance,
        model_arch=model_arch,
        embedding_dim=embedding_dim,
        meta_mode=meta_mode,
        inner_steps=inner_steps,
        inner_lr=inner_lr,
        train_steps=train_steps,
        delivery_config=delivery_config,
    ).set_display_name("resolve parameters")
    # Not retried: it only validates the parameters, so a failure is a bad parameter.
    _task(spec, "light", retry=False)
    run_spec = spec.output
    # Retried: every step below is idempotent per interval by its records (a rerun with the same
    # inputs returns the recorded result; training resumes its own checkpoints, and a Kubernetes
    # job is named after the interval, so a retried launcher re-attaches to it). A retry also
    # gives late raw partitions time to arrive.
    raw_ok = _task(validate_raw(run_spec=run_spec), "spark", retry=True)
    etl = _task(run_etl(run_spec=run_spec).after(raw_ok), "spark", retry=True)
    episodes = etl.outputs["episodes"]
    valid = _task(validate_episodes(run_spec=run_spec, episodes=episodes), "arrow", retry=True)
    with dsl.If(backend == "local", name="train-in-this-pod"):
        here = train(run_spec=run_spec, episodes=episodes).after(valid)
        _task(here, "gpu", retry=True, gpus=nproc).set_display_name("train (GPU)")
    with dsl.Else(name="train-on-the-cluster"):
        launched = train(run_spec=run_spec, episodes=episodes).after(valid)
        _task(launched, "launcher", retry=True).set_display_name("train (PyTorchJob/TrainJob)")
    trained = dsl.OneOf(here.outputs["Output"], launched.outputs["Output"])
    exported = _task(
        export_model(run_spec=run_spec, episodes=episodes, trained=trained), "torch", retry=True
    )
    model = exported.outputs["model"]
    scored = _task(evaluate(run_spec=run_spec, episodes=episodes, model=model), "torch", retry=True)
    decision = _task(
        gate(run_spec=run_spec, evaluation=scored.outputs["Output"]), "light", retry=True
    )
    with dsl.If(decision.outputs["promote"] == True, name="gate-promotes"):  # noqa: E712
        # Retried too: the swap is compare-and-swap against the champion the gate compared with,
        # keyed by interval, challenger and that champion, so a retry after a swap that went
        # through replays its record instead of promoting twice (components.steps.delivery).
        promoted = _task(
            promote(run_spec=run_spec, decision=decision.outputs["decision"], model=model),
            "light",
            retry=True,
        )
        _task(report(run_spec=run_spec).after(promoted), "light", retry=True)
    with dsl.Else(name="gate-keeps-champion"):
        _task(report(run_spec=run_spec).after(decision), "light", retry=True)
