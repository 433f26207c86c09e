"""The metarec training pipeline (KFP v2): one data interval from raw logs to a promoted model.

    resolve_run -> validate_raw -> run_etl -> validate_episodes -> train -> export_model
      -> evaluate -> gate -> dsl.If(promote): promote -> report | dsl.Else: report

The same step functions as the Airflow ``continuous_delivery`` DAG (``components.steps``), the
same run root layout and per-interval records: a pipeline run and a DAG run of one interval
produce the same outputs, and rerunning either changes nothing. Caching is off for every
side-effecting task (all but ``resolve_run``): KFP's cache would skip a task whose outputs on
the shared volume were since replaced.

Compile: ``python -m pipelines.compile`` (writes ``pipelines/compiled/training_pipeline.yaml``).
"""

import json

from kfp import dsl

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

DEFAULT_BASE_CONFIG = json.dumps(
    {
        "backend": "local",
        "trainer_config": "default",
        "model_name": "ctr-dlrm",
        "spark_master": "local[4]",
        "etl": {},
        "gate": {"metric": "test_cold.after.auc", "tolerance": 0.001},
    },
    sort_keys=True,
)
"""DeliveryConfig fields (``components/steps/config.py``) besides the roots, which are parameters
of their own: backend, trainer config, [etl]/[validation]/[gate]/[kubernetes] sections."""


def _side_effecting(task, role: str = "cpu"):
    task.set_caching_options(False)
    return platform.apply(task, role)


@dsl.pipeline(
    name="metarec-training",
    description="Meta-learning CTR model of one ad-log interval: validate, ETL, train "
    "(warm-started from the champion), evaluate, gate, promote.",
)
def training_pipeline(
    interval_start: str = "2026-11-01T00",
    interval_end: str = "2026-11-01T01",
    raw_root: str = "/data/raw",
    run_root: str = "/data/delivery",
    base_config: str = DEFAULT_BASE_CONFIG,
    model_arch: str = "dlrm",
    embedding_dim: int = 0,
    meta_mode: str = "maml",
    inner_steps: int = 0,
    inner_lr: float = 0.0,
    train_steps: int = 0,
):
    """Parameters: the data interval (UTC hours); the raw logs' URI and the run root on the
    shared volume; ``base_config``, the rest of the DeliveryConfig as JSON (backend, trainer
    config, ETL/validation/gate/kubernetes settings); the model and meta-learning parameters
    (0 or "" keeps the trainer config's value)."""
    spec = resolve_run(
        interval_start=interval_start,
        interval_end=interval_end,
        raw_root=raw_root,
        run_root=run_root,
        base_config=base_config,
        model_arch=model_arch,
        embedding_dim=embedding_dim,
        meta_mode=meta_mode,
        inner_steps=inner_steps,
        inner_lr=inner_lr,
        train_steps=train_steps,
    ).set_display_name("resolve parameters")
    run_spec = spec.output
    raw_ok = _side_effecting(validate_raw(run_spec=run_spec))
    etl = _side_effecting(run_etl(run_spec=run_spec).after(raw_ok))
    episodes = etl.outputs["episodes"]
    valid = _side_effecting(validate_episodes(run_spec=run_spec, episodes=episodes))
    trained = _side_effecting(train(run_spec=run_spec, episodes=episodes).after(valid), "gpu")
    exported = _side_effecting(
        export_model(run_spec=run_spec, episodes=episodes, checkpoint=trained.outputs["checkpoint"])
    )
    model = exported.outputs["model"]
    scored = _side_effecting(evaluate(run_spec=run_spec, episodes=episodes, model=model))
    decision = _side_effecting(gate(run_spec=run_spec, evaluation=scored.outputs["Output"]))
    with dsl.If(decision.outputs["promote"] == True, name="gate-promotes"):  # noqa: E712
        promoted = _side_effecting(
            promote(run_spec=run_spec, decision=decision.outputs["decision"], model=model)
        )
        _side_effecting(report(run_spec=run_spec).after(promoted)).set_display_name("report")
    with dsl.Else(name="gate-keeps-champion"):
        _side_effecting(report(run_spec=run_spec).after(decision)).set_display_name("report")
