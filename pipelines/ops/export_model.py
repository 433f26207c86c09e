"""Export the trained checkpoint as an immutable model version (a candidate, not serving yet)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from pipelines.ops import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def export_model(
    run_spec: str, episodes: Input[Dataset], checkpoint: Input[Model], model: Output[Model]
):
    """``model`` names ``<run_root>/models/<name>/v<N>`` (the same version on a rerun)."""
    import json

    from components.steps import spec
    from components.steps.data import EtlStepResult
    from components.steps.delivery import export_step
    from components.steps.training import TrainStepResult

    cfg, interval = spec.decode(run_spec)
    with open(episodes.path) as f:
        etl = EtlStepResult.from_dict(json.load(f))
    with open(checkpoint.path) as f:
        trained = TrainStepResult.from_dict(json.load(f))
    r = export_step(cfg, interval, trained, etl)
    with open(model.path, "w") as f:
        json.dump(r.to_dict(), f)
    model.metadata.update({"path": r.model_dir, "name": r.name, "version": r.version})
