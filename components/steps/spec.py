"""The run spec: a DeliveryConfig plus an Interval as one JSON string, passed between the KFP
components of a pipeline run (pipeline parameters are resolved once, into this, by the first
component; every later component reads the same spec with the project's config loader, so each
gets the same typed, validated config as the Airflow DAG reads from its file).

    text = encode(cfg, interval)
    cfg, interval = decode(text)
    etl = result(EtlStepResult, xcom_or_json)   # a step's result, back from the orchestrator

Where a pipeline run's settings come from (``from_pipeline_parameters``):

- the typed pipeline parameters name the common settings (``PIPELINE_FIELDS``, the gate metric
  and tolerance, the model and meta-learning parameters of ``PIPELINE_OVERRIDES``);
- the optional ``delivery_config`` file (the DAGs' TOML/JSON format) holds the rest: ``[etl]``,
  ``[validation]``, ``[kubernetes]``, other ``[gate]`` keys, ``trainer_overrides``, ...
  A file that sets a parameter's setting to another value is refused (one place per setting).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, TypeVar

from components.steps.config import DeliveryConfig, load_delivery_config
from components.steps.layout import Interval, parse_utc
from trainer.config_loader import build, read_file

T = TypeVar("T")

PIPELINE_OVERRIDES = {
    "model_arch": "model.arch",
    "embedding_dim": "model.embedding_dim",
    "meta_mode": "meta.mode",
    "inner_steps": "meta.inner_steps",
    "inner_lr": "meta.inner_lr",
    "train_steps": "train.steps",
}
"""Pipeline parameters that become trainer overrides (``section.key=value``); None keeps the
trainer config's value."""
PIPELINE_FIELDS = (
    "raw_root",
    "run_root",
    "backend",
    "nproc",
    "trainer_config",
    "model_name",
    "spark_master",
)
"""DeliveryConfig fields that are pipeline parameters of the same name."""
PIPELINE_GATE = {
    "gate_metric": "metric",
    "gate_tolerance": "tolerance",
    "gauc_tolerance": "gauc_tolerance",
    "calibration_tolerance": "calibration_tolerance",
}
"""Pipeline parameters that are ``[gate]`` keys."""


def encode(cfg: DeliveryConfig, interval: Interval) -> str:
    return json.dumps({"config": cfg.to_dict(), "interval": interval.to_dict()}, sort_keys=True)


def decode(text: str) -> tuple[DeliveryConfig, Interval]:
    data = json.loads(text)
    return DeliveryConfig.from_dict(data["config"]), Interval.from_dict(data["interval"])


def result(cls: type[T], data: str | dict[str, Any]) -> T:
    """A step result (``EtlStepResult``, ``GateResult``, ...) from the JSON it crossed a task
    boundary as (a KFP parameter or artifact file, an Airflow XCom), typed by the config loader:
    the one way back from the orchestrators' JSON; ``result.to_dict()`` is the way there."""
    return build(cls, json.loads(data) if isinstance(data, str) else data)


def pipeline_interval(
    interval_start: str | None, interval_end: str | None, schedule_time: str, hours: int
) -> Interval:
    """The run's data interval: the explicit one when given (a one-off or backfill run), else the
    ``hours`` ending at the whole hour at or before ``schedule_time`` (a recurring run: KFP's
    scheduled time; a one-off run without an interval gets its creation time there).

    >>> pipeline_interval(None, None, "2026-11-01T05:00:00Z", 1).id
    'interval=20261101T04-20261101T05'

    Raises:
        ValueError: only one end given, ``hours`` < 1, or no interval and no usable time.
    """
    if interval_start or interval_end:
        if not (interval_start and interval_end):
            raise ValueError(
                "interval_start and interval_end: give both (a one-off or backfill run) or "
                "neither (the interval ends at the run's scheduled time)"
            )
        return Interval(interval_start, interval_end)  # type: ignore[arg-type]
    if hours < 1:
        raise ValueError(f"interval_hours must be >= 1, got {hours}")
    try:
        scheduled = parse_utc(schedule_time)
    except ValueError:
        raise ValueError(
            f"no data interval: interval_start/interval_end are unset and the scheduled time "
            f"{schedule_time!r} is not a time (kfp.local does not fill it in): pass "
            "interval_start and interval_end"
        ) from None
    end = scheduled.replace(minute=0, second=0, microsecond=0)
    return Interval(end - timedelta(hours=hours), end)


def _file_settings(path: str) -> dict[str, Any]:
    """The settings that the DeliveryConfig file at ``path`` sets, validated as a whole."""
    load_delivery_config(path)
    return read_file(path)


def _refuse_conflicts(path: str, file: dict[str, Any], params: dict[str, Any]) -> None:
    gate = file.get("gate", {})
    clashes = [
        f"{k} = {file[k]!r} (parameter {k}: {params[k]!r})"
        for k in PIPELINE_FIELDS
        if k in file and file[k] != params[k]
    ] + [
        f"[gate] {key} = {gate[key]!r} (parameter {p}: {params[p]!r})"
        for p, key in PIPELINE_GATE.items()
        if key in gate and gate[key] != params[p]
    ]
    if clashes:
        raise ValueError(
            f"delivery_config {path} sets what pipeline parameters set: {'; '.join(clashes)}. "
            "Set each in one place: drop them from the file, or pass the file's values as the "
            "parameters"
        )


def from_pipeline_parameters(
    params: dict[str, Any],
    model: dict[str, Any],
    interval: Interval,
    delivery_config: str | None = None,
) -> str:
    """The run spec of a pipeline run (module docstring: where each setting comes from).

    Args:
        params: the ``PIPELINE_FIELDS`` and ``PIPELINE_GATE`` parameters, all of them.
        model: the ``PIPELINE_OVERRIDES`` parameters, applied after the file's
            ``trainer_overrides``; None (or a blank string) keeps the trainer config's value.
        interval: the data interval (``pipeline_interval``).
        delivery_config: a DeliveryConfig file (TOML/JSON) with the other settings, or None.

    Raises:
        ValueError: an unknown or missing parameter, a relative root, a file setting a
            parameter's setting to another value, or an invalid config (before anything runs).
    """
    expected = {*PIPELINE_FIELDS, *PIPELINE_GATE}
    if set(params) != expected or not set(model) <= set(PIPELINE_OVERRIDES):
        raise ValueError(
            f"pipeline parameters: expected {sorted(expected)} and model parameters among "
            f"{sorted(PIPELINE_OVERRIDES)}; got {sorted(params)} and {sorted(model)}"
        )
    file = _file_settings(delivery_config) if delivery_config else {}
    if delivery_config:
        _refuse_conflicts(delivery_config, file, params)
    overrides = [
        f"{PIPELINE_OVERRIDES[k]}={json.dumps(v)}"
        for k, v in sorted(model.items())
        if v not in (None, "")  # "": a blank UI field, unset like None (never a valid value)
    ]
    data = {
        **file,
        **{k: params[k] for k in PIPELINE_FIELDS},
        "gate": {**file.get("gate", {}), **{key: params[p] for p, key in PIPELINE_GATE.items()}},
        "trainer_overrides": [*file.get("trainer_overrides", []), *overrides],
    }
    cfg = DeliveryConfig.from_dict(data)
    if relative := cfg.relative_roots():
        raise ValueError(
            f"{', '.join(relative)}: give absolute paths (every task's pod mounts the shared "
            "volume at the same place; a relative path depends on the image's working directory)"
        )
    return encode(cfg, interval)
