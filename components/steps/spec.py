"""The run spec: a DeliveryConfig plus an Interval as one JSON string, passed between the KFP
components of a pipeline run (pipeline parameters are resolved once, into this, by the first
component; every later component decodes the same spec).

    text = encode(cfg, interval)
    cfg, interval = decode(text)
"""

from __future__ import annotations

import json
from typing import Any

from components.steps.config import DeliveryConfig
from components.steps.layout import Interval

PIPELINE_OVERRIDES = {
    "model_arch": "model.arch",
    "embedding_dim": "model.embedding_dim",
    "meta_mode": "meta.mode",
    "inner_steps": "meta.inner_steps",
    "inner_lr": "meta.inner_lr",
    "train_steps": "train.steps",
}
"""Pipeline parameters that become trainer overrides (``section.key=value``)."""


def encode(cfg: DeliveryConfig, interval: Interval) -> str:
    return json.dumps({"config": cfg.to_dict(), "interval": interval.to_dict()}, sort_keys=True)


def decode(text: str) -> tuple[DeliveryConfig, Interval]:
    data = json.loads(text)
    return DeliveryConfig.from_dict(data["config"]), Interval.from_dict(data["interval"])


def from_pipeline_parameters(
    base: dict[str, Any],
    model: dict[str, Any],
    interval_start: str,
    interval_end: str,
    roots: dict[str, str] | None = None,
) -> str:
    """The run spec of a pipeline run.

    Args:
        base: DeliveryConfig fields (run_root, raw_root, backend, etl, gate, ...).
        model: the model and meta-learning parameters (keys of ``PIPELINE_OVERRIDES``); a value of
            None, "" or 0 keeps the trainer config's own.
        interval_start, interval_end: the data interval (UTC hours).
        roots: ``raw_root`` / ``run_root`` overriding ``base``'s (an empty value keeps it).

    Raises:
        ValueError: an unknown parameter or an invalid config (before anything runs).
    """
    unknown = sorted(set(model) - set(PIPELINE_OVERRIDES))
    if unknown:
        raise ValueError(f"unknown model parameters {unknown}; known: {sorted(PIPELINE_OVERRIDES)}")
    overrides = [
        f"{PIPELINE_OVERRIDES[k]}={json.dumps(v)}"
        for k, v in sorted(model.items())
        if v not in (None, "", 0)
    ]
    data = {**base, **{k: v for k, v in (roots or {}).items() if v}}
    data["trainer_overrides"] = [*data.get("trainer_overrides", []), *overrides]
    return encode(DeliveryConfig.from_dict(data), Interval(interval_start, interval_end))  # type: ignore[arg-type]
