"""Evaluate the challenger and the champion on this interval's episodes (the gate's data)."""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from pipelines.ops import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def evaluate(
    run_spec: str,
    episodes: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
) -> str:
    """Returns the evaluation (JSON) for the gate; ``metrics`` has both models' gate metric,
    ``roc`` the challenger's ROC curve and confusion matrix after adaptation."""
    import json

    from components.steps import spec
    from components.steps.data import EtlStepResult
    from components.steps.delivery import ExportStepResult, evaluate_step

    cfg, interval = spec.decode(run_spec)
    with open(episodes.path) as f:
        etl = spec.result(EtlStepResult, f.read())
    with open(model.path) as f:
        exported = spec.result(ExportStepResult, f.read())
    r = evaluate_step(cfg, interval, exported, etl)
    for role, value in (("challenger", r.challenger_value), ("champion", r.champion_value)):
        if value is not None:
            metrics.log_metric(f"{role}_{r.metric}", value)
    if r.roc["fpr"]:
        roc.log_roc_curve(r.roc["fpr"], r.roc["tpr"], r.roc["thresholds"])
    roc.log_confusion_matrix(["no click", "click"], r.confusion)
    return json.dumps(r.to_dict())
