"""Small trained runs for the export and serving tests: one process, or 2 ranks (sharded).

A run is the debug config with a tiny model on small synthetic episodes; a 2-rank run is the same
config on two spawned gloo processes (embedding rows sharded, dense layers replicated), whose
checkpoint has one shard per rank. ``reference_scores`` is the trainer's evaluation loop
(:func:`trainer.evaluate.evaluate`) on the run's parameters, keeping every query score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.trainer.run_helpers import tiny_overrides
from trainer.config import load_trainer_config
from trainer.data.reader import EpisodeReader
from trainer.meta import adapt, predict
from trainer.parallel.env import ParallelEnv
from trainer.parallel.launch import spawn_local
from trainer.trainer import Trainer

RUN = {"train.steps": 4, "checkpoint.every": 2, "checkpoint.keep": 3, "eval.max_episodes": 40,
       "data.batch_episodes": 8}  # fmt: skip
DYNAMIC = {
    "parallel.dynamic": [
        {"feature": "user", "capacity": 24, "fallback_rows": 3, "admit_count": 2},
        {"feature": "ad", "capacity": 8, "fallback_rows": 2, "eviction": "lfu"},
    ],
    "eval.adapt_steps": 2,
    "eval.adapt_lr": 0.05,
}
"""A run with dynamic tables on ``user`` and ``ad`` (small: ids are evicted within 4 steps, and
many are never admitted)."""


def _toml(value: Any) -> str:
    """``value`` as a TOML literal (JSON's, but tables as ``{key = value}``)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def overrides(data: Path, out: Path, **extra: Any) -> list[str]:
    """The run's overrides; ``parallel.dynamic`` (a list of tables) written as TOML."""
    dynamic = extra.pop("parallel.dynamic", None)
    args = tiny_overrides(data, out, **{**RUN, **extra})
    return args if dynamic is None else [*args, f"parallel.dynamic={_toml(dynamic)}"]


def _train_rank(env: ParallelEnv, args: list[str]) -> None:
    trainer = Trainer(load_trainer_config("debug", args), env).build()
    try:
        trainer.fit()
    finally:
        trainer.close()


def train(data: Path, out: Path, world_size: int = 1, **extra: Any) -> Path:
    """Train a run (on ``world_size`` ranks) and return its output directory."""
    args = overrides(data, out, **extra)
    if world_size == 1:
        _train_rank(None, args)  # type: ignore[arg-type]
    else:
        spawn_local(_train_rank, world_size, (args,), timeout_s=60)
    return out


def reference_scores(
    data: Path, run: Path, work: Path, split: str, **extra: Any
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The run's parameters in one process (a warm start from its checkpoint, which merges the
    shards of a sharded run) scored by the evaluation loop; returns the query scores and the
    trainer's own :meth:`Trainer.evaluate` result for ``split``."""
    warm = {"checkpoint.warm_start": str(run / "checkpoints"), "train.steps": 0,
            "eval.splits": [split]}  # fmt: skip
    cfg = load_trainer_config("debug", overrides(data, work, **{**extra, **warm}))
    trainer = Trainer(cfg).build()
    try:
        model, meta_cfg = trainer.model, cfg.eval_meta()
        limit = cfg.eval.max_episodes or trainer.manifest.splits[split]["episodes"]
        parts: dict[str, list[np.ndarray]] = {"labels": [], "before": [], "after": []}
        done = 0
        with EpisodeReader(cfg.data.path, split, cfg.data.batch_episodes, shuffle=False, epochs=1,
                           prefetch=0, task_local_rows=meta_cfg.adapt == "dense+emb") as reader:  # fmt: skip
            for batch in reader:
                keep = batch.episode_mask & (
                    torch.cumsum(batch.episode_mask.long(), 0) <= limit - done
                )
                batch.episode_mask = keep
                sparse = model.embeddings.read(batch)
                K = batch.k_support
                mask = batch.query_mask & keep[:, None]
                parts["labels"].append(batch.click[:, K:][mask].numpy())
                parts["before"].append(predict(model, sparse, batch)[mask].numpy())
                after = predict(model, sparse, batch, adapt(model, sparse, batch, meta_cfg))
                parts["after"].append(after[mask].numpy())
                done += int(keep.sum())
        return {k: np.concatenate(v) for k, v in parts.items()}, trainer.evaluate()[split]
    finally:
        trainer.close()


def run_eval(run: Path) -> dict[str, Any]:
    return json.loads((run / "eval.json").read_text())["splits"]
