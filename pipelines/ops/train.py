"""Incremental training of the interval, warm-started from the champion, via the launcher."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from pipelines.ops import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train(
    run_spec: str, episodes: Input[Dataset], checkpoint: Output[Model], metrics: Output[Metrics]
) -> str:
    """Returns the training result (JSON) for the export; ``checkpoint`` names the run's final
    checkpoint and its warm start; ``metrics`` holds the run's own evaluation (AUC before/after
    adaptation per split). With ``backend = "kubernetes"`` this submits the PyTorchJob/TrainJob
    and waits for it (``components.steps.training``)."""
    import json

    from components.steps import spec
    from components.steps.data import EtlStepResult
    from components.steps.training import train_step

    cfg, interval = spec.decode(run_spec)
    with open(episodes.path) as f:
        etl = spec.result(EtlStepResult, f.read())
    r = train_step(cfg, interval, etl)
    with open(checkpoint.path, "w") as f:
        json.dump(r.to_dict(), f)
    checkpoint.metadata.update(
        {
            "checkpoint": r.checkpoint,
            "steps": r.steps,
            "warm_start": r.warm_start.checkpoint or "",
            "warm_start_reason": r.warm_start.reason,
        }
    )
    for split, m in r.evaluation.items():
        for when in ("before", "after"):
            value = m.get(when, {}).get("auc") if isinstance(m, dict) else None
            if isinstance(value, float) and value == value:  # finite, not NaN
                metrics.log_metric(f"{split}_{when}_auc", value)
    return json.dumps(r.to_dict())
