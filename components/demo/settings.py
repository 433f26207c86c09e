"""``DemoConfig``: the sizes and knobs of one demo run, and where each stage writes.

Standard library only (``python -m components.demo --help`` stays instant). Two presets:

    preset   rows      hours  campaigns  users    K/Q   steps  wall time on 2 cores
    full     200,000   48     2,000      50,000   32    120    ~3-5 min (the `make demo` run)
    quick    12,000    12     150        3,000    8     8      ~1-1.5 min (the test)

``--rows`` and ``--steps`` override a preset; ``--seed`` seeds the generator, the training
(model initialisation and sample stream) and therefore everything downstream.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

START = "2026-11-01T00"
RECORD_FORMAT = 2
"""Bumped when a stage's recorded result changes shape: older records then no longer match."""
MODES = ("meta", "plain")
"""The two training runs: the MAML-trained model and the plain-trained baseline."""


@dataclass(frozen=True)
class DemoConfig:
    """One demo run. Validated on construction; every stage's fingerprint is derived from it."""

    out: str
    """Demo root: every stage writes into its own folder under it (see :meth:`paths`)."""
    rows: int = 200_000
    """Raw ad-log rows generated (a little corruption included, so the ETL quarantines some)."""
    steps: int = 120
    """Outer training steps of each of the two runs (meta and plain)."""
    seed: int = 0
    """Seed of the generator and of both training runs."""
    quick: bool = False
    """Tiny data and a tiny run (the test preset); see the module docstring."""
    hours: int = 48
    """Hourly partitions generated and processed."""
    campaigns: int = 2_000
    """Campaigns (the task key): ~20 % are cold-start, ~20 % of tasks are held out as test_cold."""
    users: int = 50_000
    """Users in the generated population."""
    k: int = 32
    """Support samples per episode (K); also Q, the query samples."""
    corrupt: float = 0.005
    """Share of raw rows corrupted (malformed lines, bad types, duplicates...)."""
    nproc: int = 2
    """Training ranks (torchrun processes, gloo on CPU)."""
    batch_episodes: int = 32
    """Episodes per step and rank."""
    airflow: bool = True
    """Finish with one hourly interval through the ``continuous_delivery`` Airflow DAG."""

    def __post_init__(self) -> None:
        if not str(self.out).strip():
            raise ValueError("--out must name the demo's output directory, e.g. out/demo")
        for name, low in (("rows", 1_000), ("steps", 1), ("nproc", 1), ("hours", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name} must be an integer >= {low}, got {value!r}")
        if self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed}")
        if self.rows < 20 * self.campaigns // 10:
            raise ValueError(
                f"--rows {self.rows} is too few for {self.campaigns} campaigns: episodes need "
                f"at least ~{2 * self.campaigns} rows; raise --rows or use --quick"
            )

    @classmethod
    def preset(
        cls, out: str, *, quick: bool, rows: int | None = None, steps: int | None = None,
        seed: int = 0, airflow: bool | None = None,
    ) -> DemoConfig:  # fmt: skip
        """The ``full`` or ``quick`` preset, with ``rows`` / ``steps`` / ``airflow`` overriding it
        (the quick preset leaves the Airflow stage out unless ``airflow=True``)."""
        if quick:
            base = {"rows": 12_000, "steps": 8, "hours": 12, "campaigns": 150, "users": 3_000,
                    "k": 8, "batch_episodes": 8}  # fmt: skip
        else:
            base = {}
        if rows is not None:
            base["rows"] = rows
        if steps is not None:
            base["steps"] = steps
        base["airflow"] = (not quick) if airflow is None else airflow
        return cls(out=out, seed=seed, quick=quick, **base)

    # ------------------------------------------------------------------------------ derived
    @property
    def start(self) -> str:
        return START

    @property
    def end(self) -> str:
        t = datetime.fromisoformat(START).replace(tzinfo=UTC) + timedelta(hours=self.hours)
        return t.strftime("%Y-%m-%dT%H")

    @property
    def min_samples(self) -> int:
        """Smallest support (and query) set an episode may have."""
        return max(2, self.k // 8)

    def paths(self) -> dict[str, Path]:
        """Every output of the demo, by role (the summary prints them)."""
        root = Path(self.out)
        return {
            "root": root,
            "raw": root / "raw",
            "episodes": root / "episodes",
            "validation": root / "validation",
            "train": root / "train",
            "models": root / "models",
            "evaluation": root / "evaluation",
            "score": root / "score",
            "delivery": root / "delivery",
            "stages": root / "_stages",
            "summary": root / "summary.json",
            "report": root / "report.html",
        }

    def run_dir(self, mode: str) -> Path:
        """Output directory of the ``meta`` or ``plain`` training run."""
        assert mode in MODES, mode
        return self.paths()["train"] / mode

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "out"}


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of JSON-able ``parts`` (a stage's inputs)."""
    text = json.dumps([RECORD_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
