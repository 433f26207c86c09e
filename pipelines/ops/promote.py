"""Promote the challenger: one atomic swap of the CHAMPION pointer, recorded in the history."""

from kfp import dsl
from kfp.dsl import Input, Model

from pipelines.ops import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def promote(run_spec: str, decision: str, model: Input[Model]) -> str:
    """Returns the promotion result (JSON); a rerun of the interval changes nothing."""
    import json

    from components.steps import spec
    from components.steps.delivery import GateResult, promote_step

    cfg, interval = spec.decode(run_spec)
    r = promote_step(cfg, interval, spec.result(GateResult, decision))
    return json.dumps(r.to_dict())
