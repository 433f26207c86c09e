"""``DeliveryConfig``: what the continuous-delivery flow reads, runs and writes, from one file.

Standard library only: the Airflow DAG files read it at parse time (the schedule), so it must be
cheap. Airflow and KFP pass the same config; the backend (local or kubernetes) is a field, not a
different DAG or pipeline. Load order: the file named by ``$METAREC_DELIVERY_CONFIG`` (TOML or
JSON), else the defaults below (a laptop run under ``out/delivery``). The Airflow DAGs take no
defaults: :func:`load_dag_config` requires the file and absolute roots. Example::

    run_root = "/data/metarec/delivery"   # episodes/, train/, models/, intervals/ (a PVC in k8s)
    raw_root = "s3://ads/raw"             # dt=YYYY-MM-DD/hr=HH/ partitions
    schedule = "hourly"                   # hourly | daily | a 5-field cron
    start_date = "2026-11-01T00"
    backend = "kubernetes"                # local | kubernetes (the ETL and training)
    trainer_config = "default"            # a packaged run or a TOML path
    trainer_overrides = ["train.steps=200", "meta.mode=\\"fomaml\\""]
    model_name = "ctr-dlrm"
    [etl]                                 # any EtlConfig field
    k_support = 32
    [validation]                          # Thresholds fields
    ctr_max = 0.2
    [gate]
    metric = "test_cold.after.auc"
    tolerance = 0.001
    [kubernetes]                          # backend = "kubernetes": the jobs (see below)
    variant = "pytorchjob-gpu"
    image = "registry.example.com/metarec-trainer:0.1.0"
    etl_image = "registry.example.com/metarec-components:0.1.0"
    etl_executors = 8
    [airflow]                             # the DAGs' pools and timeouts (dag_policy.py)
    spark_pool = "metarec_spark"
    training_timeout_s = 43200

``[kubernetes]`` keys (:data:`K8S_KEYS`), read only with ``backend = "kubernetes"``: ``namespace``
(default ``metarec``), ``timeout_s`` (per job, default 1 day) and ``cleanup`` (``on-success``:
a failed job is kept for ``kubectl describe`` until a retry runs it again; ``always``; ``never``)
apply to both jobs;
``variant``, ``image``, ``nodes``, ``nproc_per_node``, ``gpus_per_node`` to the training job
(``TrainRunParams``); ``etl_image``, ``etl_executors``, ``etl_executor_cores``,
``etl_executor_memory`` (``8g``) and ``etl_driver_memory`` to the ETL's SparkApplication
(``EtlRunParams``); ``data_mount`` to both: where the pods mount the ``metarec-data`` volume (default
``/data``, the KFP tasks' mount), which must be where this worker sees it, so that ``run_root`` and
``raw_root`` name the same files in the worker and in the pods (the launcher refuses a job whose
paths lie on no volume of its pods). Unset keys keep the overlay's values.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_ENV = "METAREC_DELIVERY_CONFIG"
SCHEDULES = {"hourly": "0 * * * *", "daily": "0 0 * * *"}
BACKENDS = ("local", "kubernetes")
ETL_FIXED = ("input", "output", "start", "end")
"""EtlConfig fields the flow sets itself (from raw_root, run_root and the interval)."""
GATE_KEYS = ("metric", "tolerance", "promote_on_equal", "batch_episodes", "max_episodes")
K8S_KEYS = (
    "variant",
    "namespace",
    "image",
    "nodes",
    "nproc_per_node",
    "gpus_per_node",
    "timeout_s",
    "cleanup",
    "etl_image",
    "etl_executors",
    "etl_executor_cores",
    "etl_executor_memory",
    "etl_driver_memory",
    "data_mount",
)
"""``[kubernetes]`` keys: training job, ETL job (``etl_*``) and both (see the module docstring)."""


@dataclass(frozen=True)
class DeliveryConfig:
    """The flow's settings; validated on construction (every message names the field)."""

    run_root: str = "out/delivery"
    """Local or mounted folder for every output (see ``components/steps/layout.py``)."""
    raw_root: str = "out/raw"
    """Raw ad-log root (``dt=/hr=`` partitions), a local path or any pyarrow.fs URI."""
    schedule: str = "hourly"
    """``hourly``, ``daily`` or a 5-field cron: one run (and one data interval) per tick."""
    start_date: str = "2026-11-01T00"
    """First interval start of the schedule (UTC)."""
    backend: str = "local"
    """Where the ETL and training run: ``local`` (in this process: Spark ``spark_master``, torchrun)
    or ``kubernetes`` (a SparkApplication and a PyTorchJob/TrainJob, watched from here)."""
    spark_master: str = "local[2]"
    """Spark master of the in-process Spark steps (the validations; the ETL on ``local``)."""
    raw_wait_timeout_s: int = 6 * 3600
    """How long the DAG waits for an interval's raw partitions before failing."""
    raw_poke_interval_s: int = 300
    """How often it looks (the sensor reschedules in between: no worker slot held)."""
    etl: dict[str, Any] = field(default_factory=dict)
    """EtlConfig fields (task_key, k_support, q_query, num_buckets, ...)."""
    validation: dict[str, Any] = field(default_factory=dict)
    """``components.validation.Thresholds`` fields (ctr_min, ctr_max, row_count_ratio, ...)."""
    trainer_config: str = "debug"
    """Trainer run config: a packaged name (debug, default) or a TOML path."""
    trainer_overrides: tuple[str, ...] = ()
    """``section.key=value`` trainer overrides (data.path, output_dir and warm_start are set by
    the flow)."""
    nproc: int = 1
    """Local backend: ranks (torchrun when > 1)."""
    warm_start: bool = True
    """Start each interval's training from the champion's checkpoint when it fits."""
    model_name: str = "ctr-dlrm"
    """Registry name of the model (``models/<name>/v<N>``)."""
    gate: dict[str, Any] = field(default_factory=dict)
    """metric, tolerance, promote_on_equal; batch_episodes/max_episodes of the gate's evaluation."""
    kubernetes: dict[str, Any] = field(default_factory=dict)
    """``backend = "kubernetes"``: the jobs' settings (:data:`K8S_KEYS`, module docstring)."""
    airflow: dict[str, Any] = field(default_factory=dict)
    """The DAGs' pools and timeouts (``components.steps.dag_policy.AirflowSettings`` fields)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "trainer_overrides", tuple(self.trainer_overrides))
        for name in ("run_root", "raw_root", "trainer_config", "spark_master"):
            if not getattr(self, name):
                raise ValueError(f"delivery config: {name} must not be empty")
        cron_of(self.schedule)
        from components.steps.layout import RunLayout, parse_utc

        parse_utc(self.start_date)
        RunLayout.of(self.run_root)
        if self.backend not in BACKENDS:
            raise ValueError(
                f"delivery config: backend must be one of {BACKENDS}, got {self.backend!r}"
            )
        if self.nproc < 1 or self.raw_wait_timeout_s < 1 or self.raw_poke_interval_s < 1:
            raise ValueError(
                "delivery config: nproc, raw_wait_timeout_s and raw_poke_interval_s must be >= 1"
            )
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", self.model_name):
            raise ValueError(f"delivery config: model_name {self.model_name!r} is not a valid name")
        fixed = [k for k in ETL_FIXED if k in self.etl]
        if fixed:
            raise ValueError(
                f"delivery config: [etl] must not set {fixed}: they come from raw_root, run_root "
                "and the interval"
            )
        for section, allowed in (("gate", GATE_KEYS), ("kubernetes", K8S_KEYS)):
            unknown = sorted(set(getattr(self, section)) - set(allowed))
            if unknown:
                raise ValueError(
                    f"delivery config: unknown [{section}] keys {unknown}; allowed: {list(allowed)}"
                )
        for o in self.trainer_overrides:
            if "=" not in o:
                raise ValueError(
                    f"delivery config: trainer override {o!r} is not section.key=value"
                )
        self.gate_policy()  # validates metric and tolerance
        self.thresholds()
        if self.airflow_settings().dagrun_timeout_s <= self.raw_wait_timeout_s:
            raise ValueError(
                f"delivery config: [airflow] dagrun_timeout_s must exceed raw_wait_timeout_s "
                f"({self.raw_wait_timeout_s}): a run would time out while it waits for its data"
            )

    # Derived settings -----------------------------------------------------------------------------

    @property
    def cron(self) -> str:
        return cron_of(self.schedule)

    def gate_policy(self):  # -> components.promotion.gate.GatePolicy
        from components.promotion.gate import GatePolicy

        keys = ("metric", "tolerance", "promote_on_equal")
        return GatePolicy(**{k: v for k, v in self.gate.items() if k in keys})

    def thresholds(self):  # -> components.validation.suites.Thresholds
        from components.validation.suites import Thresholds

        try:
            return Thresholds(**self.validation)
        except TypeError as e:
            raise ValueError(f"delivery config: [validation]: {e}") from None

    def airflow_settings(self):  # -> components.steps.dag_policy.AirflowSettings
        from components.steps.dag_policy import AirflowSettings

        try:
            return AirflowSettings(**self.airflow)
        except TypeError as e:
            raise ValueError(f"delivery config: [airflow]: {e}") from None

    def relative_roots(self) -> list[str]:
        """``name = 'value'`` of each root that is a relative local path: the orchestrators refuse
        them (each process, pod and image has its own working directory)."""
        return [
            f"{name} = {value!r}"
            for name, value in (("run_root", self.run_root), ("raw_root", self.raw_root))
            if "://" not in value and not Path(value).is_absolute()
        ]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trainer_overrides"] = list(self.trainer_overrides)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeliveryConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"delivery config: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)


def cron_of(schedule: str) -> str:
    """``hourly``/``daily`` -> their cron; a 5-field cron is returned as is."""
    if schedule in SCHEDULES:
        return SCHEDULES[schedule]
    if len(str(schedule).split()) != 5:
        raise ValueError(
            f"delivery config: schedule {schedule!r} must be 'hourly', 'daily' or a 5-field cron"
        )
    return schedule


def load_delivery_config(path: str | os.PathLike[str] | None = None) -> DeliveryConfig:
    """The config from ``path``, else from ``$METAREC_DELIVERY_CONFIG``, else the defaults.

    Raises:
        ValueError: an unreadable file, an unknown key or an invalid value (the message names it).
    """
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return DeliveryConfig()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(
            f"delivery config {p} (${CONFIG_ENV}): cannot read it ({e.strerror})"
        ) from None
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except ValueError as e:
        raise ValueError(
            f"delivery config {p}: not valid {p.suffix.lstrip('.') or 'TOML'}: {e}"
        ) from None
    return DeliveryConfig.from_dict(data)


def load_dag_config() -> DeliveryConfig:
    """The config the Airflow DAGs run on: the file ``$METAREC_DELIVERY_CONFIG`` names, never the
    built-in defaults, with absolute local roots.

    Airflow parses and runs the DAG files in several processes (dag-processor, workers, triggerer)
    whose working directories differ, so a relative path would name another folder in each (and
    the Asset URIs would change with it): relative ``run_root`` or local ``raw_root`` are refused,
    not resolved.

    Raises:
        ValueError: the variable is unset or relative, the file is invalid, or a root is relative.
    """
    path = os.environ.get(CONFIG_ENV, "")
    if not path:
        raise ValueError(
            f"${CONFIG_ENV} is not set: the metarec DAGs run only on an explicit delivery config. "
            f"Set {CONFIG_ENV}=/absolute/path/to/delivery.toml in the environment of the "
            "dag-processor, scheduler, workers and triggerer (dags/README.md)"
        )
    if not Path(path).is_absolute():
        raise ValueError(f"${CONFIG_ENV}={path!r} must be an absolute path")
    cfg = load_delivery_config(path)
    relative = cfg.relative_roots()
    if relative:
        raise ValueError(
            f"delivery config {path} (${CONFIG_ENV}): {', '.join(relative)} must be absolute for "
            "the DAGs (each Airflow process has its own working directory): use the path mounted "
            'everywhere, e.g. run_root = "/data/metarec/delivery"'
        )
    return cfg
