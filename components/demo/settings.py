"""``DemoConfig``: the sizes and knobs of one demo run, where it writes, and the delivery configs
it hands to the step functions (``components/steps``).

Standard library only (``python -m components.demo --help`` stays instant). Two presets:

    preset   rows      hours  campaigns  users    K/Q   steps  wall time on 2 cores
    full     200,000   48     2,000      50,000   32    120    ~3-5 min (the `make demo` run)
    quick    12,000    12     150        3,000    8     8      ~1-1.5 min (the test)

``--rows`` and ``--steps`` override a preset; ``--seed`` seeds the generator, the training
(model initialisation and sample stream) and therefore everything downstream.

The demo delivers one data interval (every generated hour) exactly as the ``continuous_delivery``
DAG delivers one: :meth:`DemoConfig.delivery_config` is the DAG's config file for it. The meta
model is the run root ``<out>`` itself; the plain baseline is trained by the same training step
under its own run root ``<out>/baseline`` (a run root holds one training per interval, and the
baseline must not replace the model the gate promotes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

START = "2026-11-01T00"
MODES = ("meta", "plain")
"""The two training runs: the MAML-trained model and the plain-trained baseline."""
META_MODE = {"meta": "maml", "plain": "plain"}
"""Demo run name -> the trainer's ``meta.mode``."""
TRAIN_CONFIG = Path(__file__).resolve().parent / "train.toml"
MODEL_NAME = {"meta": "ctr-demo", "plain": "ctr-demo-baseline"}
"""Registry name of each run's model (each in its own run root)."""
CONFIG_FILE = "delivery-config.json"
"""The delivery config of a run root, as the DAG would read it (``$METAREC_DELIVERY_CONFIG``)."""
GATE_METRIC = "test_cold.after.auc"
"""The promotion gate's metric: cold-start AUC after adaptation."""


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
        """The demo's own outputs, by role (the run roots' folders are ``components/steps``')."""
        root = Path(self.out).absolute()
        return {
            "root": root,
            "raw": root / "raw",
            "evaluation": root / "evaluation",
            "score": root / "score",
            "delivery": root / "delivery",
            "logs": root / "logs",
            "summary": root / "summary.json",
            "report": root / "report.html",
        }

    def run_root(self, mode: str) -> Path:
        """The delivery run root of the ``meta`` model (``<out>``) or the ``plain`` baseline."""
        assert mode in MODES, mode
        root = self.paths()["root"]
        return root if mode == "meta" else root / "baseline"

    def trainer_overrides(self, mode: str) -> list[str]:
        """The ``section.key=value`` trainer overrides of one run (values as TOML literals)."""
        values: dict[str, Any] = {
            "train.steps": self.steps,
            "train.log_every": self.log_every,
            "train.seed": self.seed,
            "data.seed": self.seed,
            "data.batch_episodes": self.batch_episodes,
            "meta.mode": META_MODE[mode],
        }
        return [f"{k}={json.dumps(v)}" for k, v in values.items()]

    @property
    def log_every(self) -> int:
        """~24 points per training curve."""
        return max(1, self.steps // 24)

    def delivery_config(self, mode: str) -> dict[str, Any]:
        """The delivery config (``components/steps/config.py``, as its file would hold it) of one
        run: the demo's raw logs, the local backend on ``nproc`` ranks, no warm start (both runs
        start from the same initialisation: the comparison is meta vs plain training only)."""
        return {
            "run_root": str(self.run_root(mode)),
            "raw_root": str(self.paths()["raw"]),
            "schedule": "hourly",
            "start_date": START,
            "backend": "local",
            "spark_master": "local[2]",
            "trainer_config": str(TRAIN_CONFIG),
            "trainer_overrides": self.trainer_overrides(mode),
            "nproc": self.nproc,
            "warm_start": False,
            "model_name": MODEL_NAME[mode],
            "etl": {
                "k_support": self.k,
                "q_query": self.k,
                "min_support": self.min_samples,
                "min_query": self.min_samples,
                "num_buckets": 4 if self.quick else 8,
                "cold_fraction": 0.3,  # a third of it held out as valid_cold: tuning
                "valid_cold_fraction": 1 / 3,  # fine-tuning on cold tasks (the comparison)
                "shuffle_partitions": 4,
            },
            "gate": {"metric": GATE_METRIC},
        }

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "out"}
