"""Open Inference Protocol (v2) requests and responses of the metarec model server.

A request scores the candidates of one page view as one batch; every tensor's first axis is the
sample axis::

    POST /v2/models/<name>/infer
    {"parameters": {"task": "c-17", "task_version": "2026-12-05T10"},        # optional
     "inputs": [
       {"name": "sparse",  "datatype": "INT64", "shape": [n, S],  "data": [...]},  # local ids
       {"name": "dense",   "datatype": "FP32",  "shape": [n, Dn], "data": [...]},
       # optional, with "task": the task's support events (oldest first, at most K)
       {"name": "support_sparse", "datatype": "INT64", "shape": [k, S],  "data": [...]},
       {"name": "support_dense",  "datatype": "FP32",  "shape": [k, Dn], "data": [...]},
       {"name": "support_click",  "datatype": "FP32",  "shape": [k],     "data": [...]},
       {"name": "support_conversion", "datatype": "FP32", "shape": [k], "data": [...]}]}  # -1: unknown

    -> {"model_version": "v7", "parameters": {"adapted": true},
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [n], "data": [...]},
                    {"name": "logit", "datatype": "FP32", "shape": [n], "data": [...]}]}

An ESMM model (``model.task = "esmm"``) answers ``score``/``logit`` from its CTR head plus
``ctcvr_score`` (pCTR x pCVR, the post-view conversion probability) and ``cvr_logit``.

Ids and dense values are the ETL's encoding (``components/score/encode.py`` encodes raw events);
``S`` and ``Dn`` are in the model's metadata (``GET /v2/models/<name>``: the input shapes).
Anything else is refused with a 400 naming the input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from components.serve.host import RequestError, ScoreRequest, ScoreResult

INPUTS = {"sparse": np.int64, "dense": np.float32}
SUPPORT = {
    "support_sparse": np.int64,
    "support_dense": np.float32,
    "support_click": np.float32,
    "support_conversion": np.float32,
}
_INTS = {"INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16", "UINT32"}
_FLOATS = {"FP32", "FP64", "FP16"}


def _array(tensor: Any, want: type) -> np.ndarray:
    kinds = _INTS if want is np.int64 else _FLOATS | _INTS
    if tensor.datatype not in kinds:
        raise RequestError(
            f"input {tensor.name!r} is {tensor.datatype}; expected one of {sorted(kinds)}"
        )
    try:
        array = np.asarray(tensor.as_numpy())
    except (ValueError, TypeError) as e:
        raise RequestError(
            f"input {tensor.name!r}: data does not fit shape {tensor.shape} ({e})"
        ) from None
    if want is np.float32 and not np.all(np.isfinite(array)):
        raise RequestError(f"input {tensor.name!r} holds NaN or infinite values")
    return array.astype(want, copy=False)


def _parameter(request: Any, key: str) -> str | None:
    value = (request.parameters or {}).get(key)
    if value is None:
        return None
    value = getattr(value, "string_param", value)  # gRPC InferParameter or a plain value
    return str(value)


def decode(request: Any) -> ScoreRequest:
    """A :class:`ScoreRequest` from a KServe ``InferRequest`` (REST or gRPC)."""
    from trainer.exported.scoring import SupportSet

    by_name: dict[str, Any] = {}
    for tensor in request.inputs:
        if tensor.name not in INPUTS and tensor.name not in SUPPORT:
            raise RequestError(
                f"unknown input {tensor.name!r}; inputs are {sorted(INPUTS)} and optionally "
                f"{sorted(SUPPORT)}"
            )
        if tensor.name in by_name:
            raise RequestError(f"input {tensor.name!r} is given twice")
        by_name[tensor.name] = tensor
    missing = sorted(INPUTS.keys() - by_name.keys())
    if missing:
        raise RequestError(f"missing input(s) {missing}")
    arrays = {name: _array(by_name[name], want) for name, want in INPUTS.items()}
    task, version = _parameter(request, "task"), _parameter(request, "task_version")
    support = None
    given = [name for name in SUPPORT if name in by_name]
    if given:
        if task is None:
            raise RequestError("support inputs need the request parameter 'task'")
        need = sorted({"support_sparse", "support_dense", "support_click"} - set(given))
        if need:
            raise RequestError(f"support inputs incomplete: missing {need}")
        s = {name: _array(by_name[name], want) for name, want in SUPPORT.items() if name in by_name}
        k = len(s["support_sparse"])
        conversion = s.get("support_conversion", np.full(k, -1, np.float32))
        if not (len(s["support_dense"]) == len(s["support_click"]) == len(conversion) == k):
            raise RequestError(f"support inputs must all have {k} samples (support_sparse's)")
        if k and s["support_sparse"].shape[1:] != arrays["sparse"].shape[1:]:
            raise RequestError("support_sparse must have the slots of sparse")
        support = SupportSet(
            s["support_sparse"], s["support_dense"], s["support_click"], conversion
        )
    return ScoreRequest(arrays["sparse"], arrays["dense"], task, version, support)


def encode(result: ScoreResult, model_name: str, request_id: str | None) -> Any:
    """The ``InferResponse``: ``score`` (sigmoid) and ``logit`` (and ESMM's ``ctcvr_score`` and
    ``cvr_logit``), FP32 ``[n]``."""
    from kserve import InferOutput, InferResponse

    outputs = []
    for name, values in result.outputs().items():
        out = InferOutput(name=name, shape=[len(values)], datatype="FP32")
        out.set_data_from_numpy(np.ascontiguousarray(values, np.float32), binary_data=False)
        outputs.append(out)
    return InferResponse(
        response_id=request_id or "",
        model_name=model_name,
        model_version=result.version,
        infer_outputs=outputs,
        parameters={"adapted": result.adapted},
    )


def metadata_types(
    sparse_width: int, dense_width: int, esmm: bool = False
) -> tuple[list[dict], list[dict]]:
    """Input and output tensor metadata (``GET /v2/models/<name>``; ``esmm``: an ESMM model's)."""
    inputs = [
        {"name": "sparse", "datatype": "INT64", "shape": [-1, sparse_width]},
        {"name": "dense", "datatype": "FP32", "shape": [-1, dense_width]},
        {"name": "support_sparse", "datatype": "INT64", "shape": [-1, sparse_width]},
        {"name": "support_dense", "datatype": "FP32", "shape": [-1, dense_width]},
        {"name": "support_click", "datatype": "FP32", "shape": [-1]},
        {"name": "support_conversion", "datatype": "FP32", "shape": [-1]},
    ]
    outputs = [
        {"name": "score", "datatype": "FP32", "shape": [-1]},
        {"name": "logit", "datatype": "FP32", "shape": [-1]},
    ]
    if esmm:
        outputs += [
            {"name": "ctcvr_score", "datatype": "FP32", "shape": [-1]},
            {"name": "cvr_logit", "datatype": "FP32", "shape": [-1]},
        ]
    return inputs, outputs
