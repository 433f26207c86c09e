"""The inputs of the pipeline runs in tests: one hourly interval of generated ad logs and a
``delivery_config`` file with small ETL, trainer and gate settings (test_components.py runs the
components in process, test_local_run.py with ``kfp.local``)."""

from __future__ import annotations

import json
from pathlib import Path

INTERVAL = "interval=20261101T00-20261101T01"
TRAINER = [
    "train.log_every=2",
    "data.batch_episodes=16",
    "model.mlp=[16, 8]",
    "model.bottom_mlp=[8]",
    "eval.max_episodes=64",
    "checkpoint.every=0",
]
ETL = {
    "k_support": 4,
    "q_query": 4,
    "min_support": 2,
    "min_query": 2,
    "num_buckets": 2,
    "shuffle_partitions": 4,
    "cold_fraction": 0.3,
}


def pipeline_arguments(raw: Path, run: Path, delivery_config: Path) -> dict[str, object]:
    """The pipeline parameters both runs give (kfp.local cannot leave an Optional one unset):
    an explicit interval (a backfill), small model and training settings."""
    return {
        "interval_start": "2026-11-01T00",
        "interval_end": "2026-11-01T01",
        "raw_root": str(raw),
        "run_root": str(run),
        "trainer_config": "debug",
        "model_name": "ctr-local",
        "spark_master": "local[2]",
        "gate_metric": "test_cold.after.logloss",
        "model_arch": "dlrm",
        "embedding_dim": 4,
        "meta_mode": "fomaml",
        "inner_steps": 2,
        "inner_lr": 0.05,
        "train_steps": 4,
        "delivery_config": str(delivery_config),
    }


def write_inputs(root: Path, **settings: object) -> tuple[Path, Path]:
    """Generate the interval's raw logs under ``root/raw`` and write ``root/delivery.json``
    (plus ``settings``); returns both paths."""
    from components.generate import GeneratorConfig, generate

    raw = root / "raw"
    generate(
        GeneratorConfig(out=str(raw), rows=8000, hours=1, num_users=600, num_campaigns=60, seed=4)
    )
    delivery_config = root / "delivery.json"
    delivery_config.write_text(
        json.dumps(
            {"etl": ETL, "trainer_overrides": TRAINER, "gate": {"max_episodes": 64}, **settings}
        )
    )
    return raw, delivery_config
