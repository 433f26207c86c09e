"""The promotion gate: challenger vs champion on the same evaluation data."""

from typing import NamedTuple

from kfp import dsl

from pipelines.ops import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def gate(run_spec: str, evaluation: str) -> NamedTuple(
    "GateOutputs", promote=bool, verdict=str, decision=str
):
    """``promote`` drives the pipeline's ``dsl.If``; ``decision`` is the full result (JSON)."""
    import json
    from collections import namedtuple

    from components.steps import spec
    from components.steps.delivery import EvaluationResult, gate_step

    cfg, interval = spec.decode(run_spec)
    r = gate_step(cfg, interval, spec.result(EvaluationResult, evaluation))
    outputs = namedtuple("GateOutputs", ["promote", "verdict", "decision"])
    return outputs(r.promote, r.verdict, json.dumps(r.to_dict()))
