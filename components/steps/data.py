"""Data steps of an interval: wait for the raw partitions, validate them, run the ETL, validate the
episodes. Each returns a small JSON-able result and records it (``layout.py``), so a rerun with
unchanged inputs returns the record instead of recomputing.

    check_raw(cfg, interval)                 -> RawStatus        (the sensor's poke; cheap)
    validate_raw_step(cfg, interval)         -> ValidationResult (raises ValidationFailed)
    etl_step(cfg, interval)                  -> EtlStepResult
    validate_episodes_step(cfg, interval)    -> ValidationResult (raises ValidationFailed)

Where the work runs (``cfg.backend``): with ``local``, Spark runs in this process, one session per
process (:func:`shared_spark`), so an Airflow worker, ``dag.test()`` or a KFP component starts the
JVM once for all its steps. With ``kubernetes``, the ETL is a SparkApplication (the interval's
render of ``manifests/overlays/spark-etl``) submitted and watched by :mod:`.dispatch`; this process
only lists the input, waits, and reads the result from the output's ``_manifest.json`` (so the
record is the same on both backends). The two validations stay in this process on both backends
(great-expectations): the raw suite on Spark ``spark_master`` reads the interval once to compute a
few aggregates, far lighter than the ETL; the episode suite reads the episode files with pyarrow
and starts no Spark session (no JVM).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from components.steps.config import DeliveryConfig
from components.steps.layout import Interval, RunLayout, read_record, write_record

log = logging.getLogger(__name__)


class ValidationFailed(ValueError):
    """A data-quality gate failed: the flow stops here (fail closed); the report says why."""


@dataclass
class RawStatus:
    """Whether every hourly raw partition of the interval has landed."""

    ready: bool
    hours: int
    missing: list[str]
    files: int
    reason: str = ""


@dataclass
class ValidationResult:
    kind: str
    """``raw`` or ``episodes``."""
    target: str
    success: bool
    failed_checks: list[str]
    statistics: dict[str, int]
    report: str
    """The Markdown report's path."""
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EtlStepResult:
    episodes_dir: str
    content_hash: str
    rows_read: int
    rows_kept: int
    rows_quarantined: int
    episodes: dict[str, int]
    reasons: dict[str, int] = field(default_factory=dict)
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SPARK = None


def shared_spark(master: str = "local[2]"):
    """This process's SparkSession (built on first use; an active session is reused)."""
    global _SPARK
    from components.etl.session import build_spark

    if _SPARK is None or _SPARK.sparkContext._jsc is None:  # stopped by someone else
        _SPARK = build_spark("metarec-delivery", master=master)
    return _SPARK


def etl_config(cfg: DeliveryConfig, interval: Interval):  # -> components.etl.EtlConfig
    """The interval's EtlConfig: raw_root in, ``<run_root>/episodes`` out, ``[etl]`` settings."""
    from components.etl.config import EtlConfig

    out = RunLayout.of(cfg.run_root).episodes_root
    return EtlConfig.of(
        cfg.etl, input=cfg.raw_root, output=str(out), start=interval.start, end=interval.end
    )


def check_raw(cfg: DeliveryConfig, interval: Interval) -> RawStatus:
    """Have all hourly partitions of ``interval`` under ``raw_root`` landed? An hour has landed
    when its folder holds a data file or a ``_SUCCESS`` marker (an empty folder has not): the
    ETL's own rule (``components.etl.extract.landed``), so the sensor and the ETL agree."""
    from dataclasses import replace

    from components.etl.extract import list_input

    config = replace(etl_config(cfg, interval), allow_missing=True)
    hours = len(config.hours)
    try:
        listing = list_input(config)
    except FileNotFoundError as e:
        return RawStatus(False, hours, [], 0, str(e))
    except ValueError as e:  # no data file at all in the interval yet
        return RawStatus(False, hours, [], 0, str(e))
    if listing.missing_hours:
        why = f"{len(listing.missing_hours)} of {hours} hourly partitions missing"
        return RawStatus(False, hours, listing.missing_hours, len(listing.files), why)
    return RawStatus(True, hours, [], len(listing.files))


def _raw_inputs(cfg: DeliveryConfig, interval: Interval) -> dict[str, Any]:
    from components.etl.extract import list_input

    listing = list_input(etl_config(cfg, interval))
    return {
        "raw_root": cfg.raw_root,
        "files": listing.files,
        "bytes": listing.total_bytes,
        "thresholds": asdict(cfg.validation),
    }


def validate_raw_step(
    cfg: DeliveryConfig, interval: Interval, spark=None, *, force: bool = False
) -> ValidationResult:
    """Run the raw-log suite on the interval (report under ``intervals/<id>/raw_validation/``).

    Raises:
        ValidationFailed: a check failed (nothing is recorded: a rerun validates again).
        ValueError / FileNotFoundError: missing partitions, unreadable data.
    """
    from components.validation import validate_raw

    layout = RunLayout.of(cfg.run_root)
    inputs = _raw_inputs(cfg, interval)
    if not force and (done := read_record(layout, interval, "raw_validation", inputs)):
        log.info("raw validation of %s already passed: reusing its record", interval.id)
        return ValidationResult(**{**done, "reused": True})
    report_dir = layout.records(interval) / "raw_validation"
    report = validate_raw(
        cfg.raw_root,
        interval.start,
        interval.end,
        spark or shared_spark(cfg.spark_master),
        thresholds=cfg.validation,
        report_dir=str(report_dir),
    )
    result = _result(report, "raw", str(report_dir / "report.md"))
    if not report.success:
        raise ValidationFailed(
            f"raw validation of {interval.id} failed: {', '.join(result.failed_checks)}; "
            f"see {result.report}"
        )
    write_record(layout, interval, "raw_validation", inputs, result.to_dict())
    return result


def etl_step(
    cfg: DeliveryConfig, interval: Interval, spark=None, *, force: bool = False
) -> EtlStepResult:
    """Run the Meta-IO ETL for the interval into ``<run_root>/episodes/<interval id>/``, in this
    process (``local``) or as a SparkApplication (``kubernetes``; see the module docstring).

    Skipped (``reused``) when that output's manifest was produced with the same settings from the
    same input files: the ETL is deterministic, so it would write the same episodes.

    Raises:
        ValueError / FileNotFoundError: bad input or settings (local: also what the ETL refuses).
        RuntimeError: the Kubernetes job failed (its message and last log lines).
    """
    from components.etl.extract import list_input

    layout = RunLayout.of(cfg.run_root)
    config = etl_config(cfg, interval)
    listing = list_input(config)
    inputs = {"config": config.describe(), "files": listing.files, "bytes": listing.total_bytes}
    done = read_record(layout, interval, "etl", inputs)
    if not force and done and _manifest_hash(done["episodes_dir"]) == done["content_hash"]:
        log.info("ETL of %s already done (%s): reusing it", interval.id, done["episodes_dir"])
        return EtlStepResult(**{**done, "reused": True})
    if cfg.backend == "kubernetes":
        _etl_on_kubernetes(cfg, interval, config, inputs)
    else:
        from components.etl import run_etl

        run_etl(config, spark or shared_spark(cfg.spark_master))
    result = _etl_result(str(layout.episodes(interval)), config)
    write_record(layout, interval, "etl", inputs, result.to_dict())
    return result


def _etl_result(root: str, config) -> EtlStepResult:
    """The step's result from the ETL output's manifest (whichever backend wrote it)."""
    from trainer.data.contract import ALL_SPLITS, ContractError, load_manifest

    mounts = "check that raw_root and run_root are mounted at the same paths in the Spark pods"
    try:
        manifest = load_manifest(root)
    except ContractError as e:
        raise RuntimeError(f"the ETL finished but wrote no output here ({e}); {mounts}") from e
    produced, wanted = manifest.producer.get("config") or {}, _plain(config.describe())
    differ = sorted(k for k in wanted if produced.get(k) != wanted[k])
    if differ:
        raise RuntimeError(
            f"{root}/_manifest.json is not this run's: it was written with other {differ}; "
            f"the ETL wrote elsewhere: {mounts}"
        )
    acc = manifest.accounting
    return EtlStepResult(
        root,
        manifest.content_hash,
        acc["rows_read"],
        acc["rows_kept"],
        acc["rows_quarantined"],
        {s: manifest.splits[s]["episodes"] for s in ALL_SPLITS if s in manifest.splits},
        dict(acc["per_reason"]),
    )


def etl_arguments(config) -> list[str]:  # config: components.etl.EtlConfig
    """The ``metarec etl`` arguments that give the job ``config``'s settings: each one that
    differs from its default as a ``key=value`` override (a TOML literal, read back by the same
    config loader), checked by parsing them back with the job's own parser.

    >>> from components.etl.config import EtlConfig
    >>> etl_arguments(EtlConfig(input="/r", output="/o", start="2026-11-01T00",
    ...                         end="2026-11-01T01", q_query=40, max_lateness="2h"))
    ['q_query=40', 'max_lateness=7200']
    """
    import argparse
    from dataclasses import fields

    from components.etl import command
    from components.etl.config import EtlSettings
    from trainer.config_loader import to_dict, toml_literal

    ours, defaults = to_dict(config), to_dict(EtlSettings())
    args = [
        f"{f.name}={toml_literal(ours[f.name])}"
        for f in fields(EtlSettings)
        if ours[f.name] != defaults[f.name]
    ]
    parser = argparse.ArgumentParser()
    command.configure_parser(parser)
    interval = ["--input", config.input, "--output", config.output,
                "--start", f"{config.start:%Y-%m-%dT%H}", "--end", f"{config.end:%Y-%m-%dT%H}"]  # fmt: skip
    parsed = command.config_from_args(parser.parse_intermixed_args([*interval, *args]))
    assert parsed == config and parsed.extra == config.extra, (
        "the ETL job would read another config"
    )
    return args


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as they read back from JSON (tuples as lists, times as strings)."""
    import json

    return json.loads(json.dumps(settings, default=str))


def _etl_on_kubernetes(cfg: DeliveryConfig, interval: Interval, config, inputs: dict) -> None:
    """Submit the interval's SparkApplication and wait for it (:func:`.dispatch.run_job`), named
    after the interval and its inputs: a retry re-attaches, new input files get a new job."""
    import json

    from components.launchers.render_etl import render_etl_run
    from components.steps.dispatch import job_run_id, run_job

    params = cfg.kubernetes.etl_params(
        run_id=job_run_id(interval, json.dumps(inputs, sort_keys=True, default=str)),
        input=config.input,
        output=config.output,
        start=f"{config.start:%Y-%m-%dT%H}",
        end=f"{config.end:%Y-%m-%dT%H}",
        extra_args=tuple(etl_arguments(config)),
        labels={"metarec.io/interval": interval.slug},
    )
    record = RunLayout.of(cfg.run_root).record_path(interval, "etl.k8s").with_suffix(".yaml")
    run_job(cfg, render_etl_run(params), record, f"ETL of {interval.id}")


def _manifest_hash(root: str) -> str | None:
    from trainer.data.contract import ContractError, load_manifest

    try:
        return load_manifest(root).content_hash
    except ContractError:
        return None


def validate_episodes_step(
    cfg: DeliveryConfig, interval: Interval, *, force: bool = False
) -> ValidationResult:
    """Run the episode suite on the interval's ETL output (pyarrow: no Spark session, no JVM); the
    result is recorded in its manifest.

    Skipped (``reused``) when the manifest already records a passed validation (the ETL rewrites
    the manifest, so new episodes are always validated again).

    Raises:
        ValidationFailed: a check failed; training must not start.
    """
    import json

    from components.validation import validate_episodes
    from trainer.data.contract import MANIFEST_NAME

    root = RunLayout.of(cfg.run_root).episodes(interval)
    report_md = str(root / "_validation" / "report.md")
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    recorded = manifest.get("validation") or {}
    if not force and recorded.get("success"):
        log.info("episodes of %s already validated: reusing the manifest's record", interval.id)
        return ValidationResult(
            "episodes", str(root), True, [], recorded.get("statistics", {}), report_md, reused=True
        )
    report = validate_episodes(str(root), thresholds=cfg.validation)
    result = _result(report, "episodes", report_md)
    if not report.success:
        raise ValidationFailed(
            f"episode validation of {interval.id} failed: {', '.join(result.failed_checks)}; "
            f"see {result.report}"
        )
    return result


def _result(report, kind: str, path: str) -> ValidationResult:
    return ValidationResult(
        kind,
        report.target,
        report.success,
        [c.name for c in report.failed],
        report.statistics,
        path,
    )
