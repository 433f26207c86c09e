"""Where a delivery run keeps its outputs, and the per-interval records that make reruns idempotent.

Standard library only. Everything of one data interval lives under one run root, keyed by the
interval id that the ETL already uses (``interval=<start>-<end>``, UTC hours)::

    <run root>/
      episodes/interval=20261101T00-20261101T01/   ETL output (_manifest.json last, _quarantine/)
      train/interval=20261101T00-20261101T01/      trainer output_dir (checkpoints/, eval.json)
      models/<name>/v1/ v2/ CHAMPION HISTORY.jsonl  exports and the serving pointer
      intervals/interval=20261101T00-20261101T01/  what each step decided for the interval:
        raw_validation.json  etl.json  train.json  evaluate.json  gate.json  promote.json
        raw_validation/report.{json,md}  evaluation/<version>.json  report.md
        failures/<dag>.<task>.try<N>.json          a task that failed for good (dag_policy.py)
      failures/<run id>/                          the same, for runs without an interval

A step record holds the step's *inputs key* (what it depends on) and its JSON result. A rerun with
the same inputs returns the recorded result instead of acting again, which is what makes a retried
Airflow task, a cleared DAG run or a re-submitted KFP run change nothing. Records are written
atomically (temp file + ``os.replace``), and only when the step succeeded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from trainer.durable import write_json_atomic

RECORD_FORMAT = "metarec.step"


@dataclass(frozen=True)
class Interval:
    """One data interval ``[start, end)``, UTC, whole hours."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = parse_utc(value)
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            # A plain datetime (Airflow hands out pendulum ones, whose arithmetic with timedelta
            # differs): the interval's times flow into EtlConfig and the manifests.
            value = datetime.fromtimestamp(value.timestamp(), UTC)
            if (value.minute, value.second, value.microsecond) != (0, 0, 0):
                raise ValueError(f"interval {name} {value.isoformat()} must be a whole UTC hour")
            object.__setattr__(self, name, value)
        if self.end <= self.start:
            raise ValueError(
                f"interval end {self.end:%Y-%m-%dT%H} must be after its start {self.start:%Y-%m-%dT%H}"
            )

    @property
    def id(self) -> str:
        """``interval=20261101T00-20261101T01``: the ETL's folder name for the interval."""
        return f"interval={self.start:%Y%m%dT%H}-{self.end:%Y%m%dT%H}"

    @property
    def slug(self) -> str:
        """``20261101t00-20261101t01``: the interval in a DNS label (Kubernetes job names)."""
        return f"{self.start:%Y%m%dt%H}-{self.end:%Y%m%dt%H}"

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Interval:
        return cls(d["start"], d["end"])  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str) -> Interval:
        """``2026-11-01T00/2026-11-01T06`` (ISO start/end) or ``2026-11-01T00/6h``."""
        if "/" not in text:
            raise ValueError(
                f"interval {text!r}: use START/END or START/DURATION, e.g. 2026-11-01T00/2026-11-01T06"
            )
        a, b = text.split("/", 1)
        start = parse_utc(a)
        if b.endswith(("h", "d")) and b[:-1].isdigit():
            hours = int(b[:-1]) * (24 if b.endswith("d") else 1)
            return cls(start, start + timedelta(hours=hours))
        return cls(start, parse_utc(b))


def parse_utc(text: str) -> datetime:
    """``2026-11-01T00``, ``2026-11-01T00:00``, ``...Z`` or ``...+00:00`` -> aware UTC datetime."""
    raw = str(text).strip()
    if len(raw) == 13 and raw[10] == "T":
        raw += ":00"
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 UTC time: use e.g. 2026-11-01T00") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class RunLayout:
    """The folders of one run root (module docstring)."""

    root: Path

    @classmethod
    def of(cls, root: str | os.PathLike[str]) -> RunLayout:
        text = str(root)
        if "://" in text and not text.startswith("file://"):
            raise ValueError(
                f"run root {text!r}: the delivery run root must be a local or mounted path "
                "(a PVC on Kubernetes); the raw input may be any URI"
            )
        return cls(Path(text.removeprefix("file://")).absolute())

    @property
    def episodes_root(self) -> Path:
        return self.root / "episodes"

    @property
    def models_root(self) -> Path:
        return self.root / "models"

    def episodes(self, interval: Interval) -> Path:
        return self.episodes_root / interval.id

    def train(self, interval: Interval) -> Path:
        return self.root / "train" / interval.id

    def records(self, interval: Interval) -> Path:
        return self.root / "intervals" / interval.id

    def record_path(self, interval: Interval, step: str) -> Path:
        return self.records(interval) / f"{step}.json"


def read_record(
    layout: RunLayout, interval: Interval, step: str, inputs: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The recorded result of ``step`` for ``interval``, or None when there is none, it is
    unreadable, or it was recorded for other ``inputs`` (``None`` matches any inputs)."""
    path = layout.record_path(interval, step)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("format") != RECORD_FORMAT or record.get("step") != step:
        return None
    if inputs is not None and record.get("inputs") != _canonical(inputs):
        return None
    return record.get("result")


def write_record(
    layout: RunLayout, interval: Interval, step: str, inputs: dict[str, Any], result: dict[str, Any]
) -> None:
    """Record ``step``'s ``result`` for ``interval`` (atomically, replacing an older record)."""
    write_json_atomic(
        layout.record_path(interval, step),
        {
            "format": RECORD_FORMAT,
            "step": step,
            "interval": interval.to_dict(),
            "inputs": _canonical(inputs),
            "result": result,
            "recorded_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )


def _canonical(data: dict[str, Any]) -> Any:
    """``data`` as it reads back from JSON (tuples become lists), so equal inputs compare equal."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))
