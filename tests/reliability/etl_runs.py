"""A tiny ETL interval and the ``metarec etl`` command that runs it in its own process (its own
JVM), for the ETL's reliability tests: concurrent runs, reruns across JVMs, storage errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tests.components.etl import rawdata

REPO = Path(__file__).resolve().parents[2]
START, END = "2026-11-01T00", "2026-11-01T02"
SETTINGS: dict[str, Any] = dict(
    k_support=4, q_query=4, min_support=2, min_query=2, num_buckets=4, shuffle_partitions=2
)
"""EtlConfig settings of the tiny interval (2 hours x 48 rows of 3 campaigns: 12 episodes)."""


def write_raw(root: Path) -> int:
    """The interval's raw JSONL under ``root``, plus one corrupt line; returns the rows written."""
    n = rawdata.hours_of(root, range(2), rows_per_hour=48)
    with open(root / "dt=2026-11-01" / "hr=01" / "part-00000.jsonl", "a") as f:
        f.write("not json\n")  # so the quarantine is written too
    return n + 1


def config(raw: Path, out: Path):  # -> components.etl.EtlConfig
    from components.etl.config import EtlConfig

    return EtlConfig(input=str(raw), output=str(out), start=START, end=END, **SETTINGS)


def etl_command(raw: Path, out: Path, *extra: str) -> list[str]:
    """``metarec etl`` of the tiny interval, in a fresh Python process (and so a fresh JVM)."""
    overrides = [f"{k}={v}" for k, v in SETTINGS.items()]
    return [sys.executable, "-m", "components.cli", "etl", "--input", str(raw), "--output",
            str(out), "--start", START, "--end", END, "--master", "local[1]", "--json",
            *overrides, *extra]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}
