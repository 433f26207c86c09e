"""Helpers for the trainer-loop tests: small synthetic ETL outputs and tiny run configs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainer.config import TrainerConfig, load_trainer_config
from trainer.data.synthetic import write_synthetic_episodes

FEATURES = [("user", 101, 1), ("ad", 53, 1), ("tags", 31, 2)]
SMALL = dict(
    num_tasks=60,
    k_support=4,
    q_query=4,
    features=FEATURES,
    dense_width=2,
    max_episodes_per_task=10,
    rows_per_group=16,
    seed=0,
)


def write_episodes(root: Path, **changes: Any) -> Path:
    """A small synthetic interval (~270 train, ~60 valid, ~110 test_cold episodes)."""
    write_synthetic_episodes(root, **{**SMALL, **changes})
    return root


def tiny_overrides(data: Path, out: Path, **extra: Any) -> list[str]:
    """Overrides of the debug run for a run of a few steps with a tiny model (seconds on CPU)."""
    values = {
        "data.path": str(data),
        "train.output_dir": str(out),
        "train.steps": 4,
        "train.log_every": 2,
        "data.batch_episodes": 16,
        "model.embedding_dim": 4,
        "model.mlp": [16, 8],
        "model.bottom_mlp": [8],
        "eval.max_episodes": 64,
        **extra,
    }
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def tiny_config(data: Path, out: Path, **extra: Any) -> TrainerConfig:
    return load_trainer_config("debug", tiny_overrides(data, out, **extra))


def finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
