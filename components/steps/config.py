"""``DeliveryConfig``: what the continuous-delivery flow reads, runs and writes, from one file.

Standard library only (with the sections' own modules, torch- and Spark-free): the Airflow DAG
files read it at parse time (the schedule), so it must be cheap. Airflow and KFP pass the same config; the backend (local or kubernetes) is a field, not a
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
    [etl]                                 # EtlSettings fields
    k_support = 32
    [validation]                          # Thresholds fields
    ctr_max = 0.2
    [gate]
    metric = "test_cold.after.auc"
    tolerance = 0.001
    gauc_tolerance = 0.002                # refuse a GAUC drop beyond this (inf: off)
    calibration_tolerance = 0.05          # ... or a growth of |pred/obs - 1| beyond this
    [kubernetes]                          # backend = "kubernetes": the jobs (see below)
    variant = "pytorchjob-gpu"
    image = "registry.example.com/metarec-trainer:0.1.0"
    etl_image = "registry.example.com/metarec-components:0.1.0"
    etl_executors = 8
    [airflow]                             # the DAGs' pools and timeouts (dag_policy.py)
    spark_pool = "metarec_spark"
    training_timeout_s = 43200

Every section is a dataclass with its defaults, stated once: ``[etl]`` is
:class:`~components.etl.config.EtlSettings`, ``[validation]``
:class:`~components.validation.suites.Thresholds`, ``[gate]`` :class:`GateSettings`,
``[kubernetes]`` :class:`KubernetesSettings` (read only with ``backend = "kubernetes"``; its unset
job settings keep ``TrainRunParams``/``EtlRunParams``'s defaults), ``[airflow]``
:class:`AirflowSettings`. The file is read by the project's one
config loader (``trainer.config_loader``): an unknown key or a wrong type is refused with its
dotted name (``delivery config: unknown config key(s) k_suport in [etl]; ...``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from components.etl.config import EtlSettings
from components.promotion.gate import GatePolicy
from components.validation.suites import Thresholds
from trainer.config_loader import build, read_file, to_dict

if TYPE_CHECKING:
    from components.launchers.render import TrainRunParams
    from components.launchers.render_etl import EtlRunParams

CONFIG_ENV = "METAREC_DELIVERY_CONFIG"
SCHEDULES = {"hourly": "0 * * * *", "daily": "0 0 * * *"}
Backend = Literal["local", "kubernetes"]
BACKENDS = get_args(Backend)


@dataclass(frozen=True, kw_only=True)
class GateSettings(GatePolicy):
    """``[gate]``: the gate's policy (metric, tolerance, promote_on_equal, and the guards
    gauc_tolerance and calibration_tolerance: ``components.promotion.gate``) and its evaluation."""

    batch_episodes: int = 64
    """Episodes per batch when the challenger and the champion are evaluated."""
    max_episodes: int = 0
    """Evaluate on at most this many episodes of the metric's split (0: all)."""

    def policy(self) -> GatePolicy:
        """The policy alone (what ``gate.decide`` reads and the gate's record keeps)."""
        return GatePolicy(**{f.name: getattr(self, f.name) for f in fields(GatePolicy)})


@dataclass(frozen=True, kw_only=True)
class KubernetesSettings:
    """``[kubernetes]``: the jobs of ``backend = "kubernetes"`` (module docstring). A job setting
    left unset keeps the run parameters' default (:class:`TrainRunParams`,
    :class:`EtlRunParams`: the one place of those defaults), which mostly keeps the overlay's."""

    namespace: str | None = None
    """Namespace of both jobs."""
    timeout_s: float = 24 * 3600.0
    """Give up on a job (and stop it) after this many seconds."""
    cleanup: Literal["on-success", "always", "never"] = "on-success"
    """Delete a job when done: ``on-success`` (a failed job is kept for ``kubectl describe``
    until a retry runs it again), ``always`` or ``never``."""
    variant: str | None = None
    """Training: the overlay of ``manifests/overlays`` (pytorchjob-gpu, trainjob-gpu, ...)."""
    image: str | None = None
    """Training: the trainer image."""
    nodes: int | None = None
    """Training: pods of the job."""
    nproc_per_node: int | None = None
    """Training: ranks per pod."""
    gpus_per_node: int | None = None
    """Training: ``nvidia.com/gpu`` per pod (0: none)."""
    etl_image: str | None = None
    """ETL: the components image of the SparkApplication."""
    etl_executors: int | None = None
    """ETL: Spark executors."""
    etl_executor_cores: int | None = None
    """ETL: cores per executor."""
    etl_executor_memory: str | None = None
    """ETL: memory per executor, Spark's notation (``8g``)."""
    etl_driver_memory: str | None = None
    """ETL: the driver's memory."""
    data_mount: str | None = None
    """Both jobs: where the pods mount the ``metarec-data`` volume (the overlays' ``/data``): where
    this worker sees it, so that ``run_root`` and ``raw_root`` name the same files here and there."""

    def train_params(self, **run: object) -> TrainRunParams:
        """The training job's parameters: the per-run ones (``run_id``, ``overrides``, ...) and
        the settings of this section that are set."""
        from components.launchers.render import TrainRunParams

        keys = ("namespace", "variant", "image", "nodes", "nproc_per_node", "gpus_per_node")
        return TrainRunParams(**self._set(dict(zip(keys, keys, strict=True))), **run)

    def etl_params(self, **run: object) -> EtlRunParams:
        """The ETL job's parameters: the per-run ones and the ``etl_*`` settings that are set."""
        from components.launchers.render_etl import EtlRunParams

        keys = {"namespace": "namespace", "etl_image": "image", "etl_executors": "executors",
                "etl_executor_cores": "executor_cores", "etl_executor_memory": "executor_memory",
                "etl_driver_memory": "driver_memory"}  # fmt: skip
        return EtlRunParams(**self._set(keys), **run)

    def _set(self, keys: dict[str, str]) -> dict[str, object]:
        pairs = {**keys, "data_mount": "data_mount"}.items()
        return {param: getattr(self, k) for k, param in pairs if getattr(self, k) is not None}


@dataclass(frozen=True)
class AirflowSettings:
    """The ``[airflow]`` section of the delivery config (module docstring)."""

    spark_pool: str = "metarec_spark"
    """Pool of the Spark tasks (its slots bound the Spark jobs running at once)."""
    training_pool: str = "metarec_training"
    """Pool of the training task (its slots bound the training runs at once)."""
    spark_timeout_s: int = 3 * 3600
    """``execution_timeout`` of each Spark task (raw validation, ETL, episode validation)."""
    training_timeout_s: int = 12 * 3600
    """``execution_timeout`` of the training task."""
    task_timeout_s: int = 3600
    """``execution_timeout`` of every other task (export, evaluation, gate, promotion, ...)."""
    dagrun_timeout_s: int = 24 * 3600
    """``dagrun_timeout``: a run still going after this long fails."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_pool"):
                if not (isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,256}", value)):
                    raise ValueError(
                        f"delivery config: [airflow] {f.name} {value!r} is no pool name"
                    )
            elif not (isinstance(value, int) and value > 0):
                raise ValueError(
                    f"delivery config: [airflow] {f.name} must be a whole number of seconds > 0, "
                    f"got {value!r}"
                )


@dataclass(frozen=True, kw_only=True)
class DeliveryConfig:
    """The flow's settings; validated on construction (every message names the field). Build it
    from plain data (a TOML/JSON file, a dict) with :meth:`from_dict`."""

    run_root: str = "out/delivery"
    """Local or mounted folder for every output (see ``components/steps/layout.py``)."""
    raw_root: str = "out/raw"
    """Raw ad-log root (``dt=/hr=`` partitions), a local path or any pyarrow.fs URI."""
    schedule: str = "hourly"
    """``hourly``, ``daily`` or a 5-field cron: one run (and one data interval) per tick."""
    start_date: str = "2026-11-01T00"
    """First interval start of the schedule (UTC)."""
    backend: Backend = "local"
    """Where the ETL and training run: ``local`` (in this process: Spark ``spark_master``, torchrun)
    or ``kubernetes`` (a SparkApplication and a PyTorchJob/TrainJob, watched from here)."""
    spark_master: str = "local[2]"
    """Spark master of the in-process Spark steps (the raw validation; the ETL on ``local``)."""
    raw_wait_timeout_s: int = 6 * 3600
    """How long the DAG waits for an interval's raw partitions before failing."""
    raw_poke_interval_s: int = 300
    """How often it looks (the sensor reschedules in between: no worker slot held)."""
    etl: EtlSettings = field(default_factory=EtlSettings)
    """``[etl]``: the ETL's settings (task_key, k_support, q_query, num_buckets, ...); the input,
    output and interval come from raw_root, run_root and the run."""
    validation: Thresholds = field(default_factory=Thresholds)
    """``[validation]``: the suites' thresholds (ctr_min, ctr_max, row_count_ratio, ...)."""
    trainer_config: str = "debug"
    """Trainer run config: a packaged name (debug, default) or a TOML path."""
    trainer_overrides: tuple[str, ...] = ()
    """``section.key=value`` trainer overrides (data.path, output_dir and warm_start are set by
    the flow)."""
    nproc: int = 1
    """Local backend: ranks (torchrun when > 1)."""
    train_in_process: bool = False
    """Local backend, one rank: run the trainer inside the training step's own process
    (``components/train/in_process.py``) instead of a child ``python -m trainer``. Same run, same
    outputs, minus an interpreter start and a torch import per interval (``bench/delivery.py``
    measures both). Off by default: a child process keeps a crash or a leak in training out of
    the caller; turn it on for frequent short local runs (an Airflow task is a process of its own)."""
    warm_start: bool = True
    """Start each interval's training from the champion's checkpoint when it fits."""
    model_name: str = "ctr-dlrm"
    """Registry name of the model (``models/<name>/v<N>``)."""
    gate: GateSettings = field(default_factory=GateSettings)
    """``[gate]``: metric, tolerance, promote_on_equal; the gate evaluation's batch_episodes and
    max_episodes."""
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    """``[kubernetes]``: the jobs of ``backend = "kubernetes"`` (module docstring)."""
    airflow: AirflowSettings = field(default_factory=AirflowSettings)
    """``[airflow]``: the DAGs' pools and timeouts (``components.steps.dag_policy``)."""

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
        if self.train_in_process and (self.backend != "local" or self.nproc != 1):
            raise ValueError(
                "delivery config: train_in_process needs backend = 'local' and nproc = 1 (one "
                f"rank in this process), got backend = {self.backend!r}, nproc = {self.nproc}"
            )
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", self.model_name):
            raise ValueError(f"delivery config: model_name {self.model_name!r} is not a valid name")
        for o in self.trainer_overrides:
            if "=" not in o:
                raise ValueError(
                    f"delivery config: trainer override {o!r} is not section.key=value"
                )
        if self.airflow.dagrun_timeout_s <= self.raw_wait_timeout_s:
            raise ValueError(
                f"delivery config: [airflow] dagrun_timeout_s must exceed raw_wait_timeout_s "
                f"({self.raw_wait_timeout_s}): a run would time out while it waits for its data"
            )

    # Derived settings -----------------------------------------------------------------------------

    @property
    def cron(self) -> str:
        return cron_of(self.schedule)

    def relative_roots(self) -> list[str]:
        """``name = 'value'`` of each root that is a relative local path: the orchestrators refuse
        them (each process, pod and image has its own working directory)."""
        return [
            f"{name} = {value!r}"
            for name, value in (("run_root", self.run_root), ("raw_root", self.raw_root))
            if "://" not in value and not Path(value).is_absolute()
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` reads back into an equal config."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeliveryConfig:
        """The config of plain data (a parsed TOML/JSON file, a pipeline's run spec): every key
        and value type-checked by ``trainer.config_loader`` (an unknown key or a wrong type is
        refused with its dotted name), then validated.

        Raises:
            ValueError: the message names the key, e.g. ``delivery config: etl.k_support: ...``.
        """
        try:
            return build(cls, data)
        except ValueError as e:
            raise ValueError(f"delivery config: {e}") from None


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
    try:
        data = read_file(path)
    except (OSError, ValueError) as e:  # FileNotFoundError is an OSError
        raise ValueError(f"delivery config {path} (${CONFIG_ENV}): {e}") from None
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
