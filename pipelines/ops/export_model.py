"""Export the trained checkpoint as an immutable model version (a candidate, not serving yet)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from pipelines.ops import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def export_model(run_spec: str, episodes: Input[Dataset], trained: str, model: Output[Model]):
    """``trained`` is the train task's result (JSON: a parameter, so that the pipeline can pick
    it from either training branch with ``dsl.OneOf``, which kfp.local supports for parameters
    only); ``model`` names ``<run_root>/models/<name>/v<N>`` (the same version on a rerun)."""
    import json

    from components.steps import spec
    from components.steps.data import EtlStepResult
    from components.steps.delivery import export_step
    from components.steps.training import TrainStepResult

    cfg, interval = spec.decode(run_spec)
    with open(episodes.path) as f:
        etl = spec.result(EtlStepResult, f.read())
    r = export_step(cfg, interval, spec.result(TrainStepResult, trained), etl)
    with open(model.path, "w") as f:
        json.dump(r.to_dict(), f)
    model.metadata.update({"path": r.model_dir, "name": r.name, "version": r.version})
