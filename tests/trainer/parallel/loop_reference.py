"""The single-process reference of a distributed training-loop run (DESIGN.md §5, oracle 1), and
readers of a run's checkpoint shards.

A run of W ranks with ``data.batch_episodes = T`` trains, at each step, rank r on the r-th reader's
batch (``EpisodeReader(rank=r, world_size=W)``). The reference is the same :class:`Trainer` in one
process whose reader yields, per step, the UNION of those W batches (2T episodes for W = 2, VSI over
all of them): the same global batch and the same loss scaling, so it must end with the same dense
parameters and embedding rows, up to the order of float sums.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tests.trainer.run_helpers import tiny_overrides
from trainer.checkpoint import LATEST, load_shard, read_meta
from trainer.config import TrainerConfig, load_trainer_config
from trainer.data.batch import EpisodeBatch
from trainer.data.reader import EpisodeReader
from trainer.parallel.reshard import merge_shards
from trainer.trainer import Trainer

# float32 training: the reference sums the same terms in another order (one batch instead of two,
# rows summed by autograd instead of at their owners): measured differences ~1e-7 relative to each
# tensor's scale, while a step moves parameters by ~1e-2 of it.
RTOL, SCALE_ATOL = 1e-4, 1e-5


def run_overrides(data: Path, out: Path, **extra: Any) -> list[str]:
    """A short run: 6 steps of 8 episodes per rank, a checkpoint at step 3, 40 valid episodes
    evaluated at the end (not a multiple of the batch, so the limit cuts a rank's share)."""
    values = {
        "train.steps": 6, "checkpoint.every": 3, "checkpoint.keep": 5, "data.batch_episodes": 8,
        "eval.splits": ["valid"], "eval.max_episodes": 40, "parallel.timeout_s": 60.0, **extra,
    }  # fmt: skip
    return tiny_overrides(data, out, **values)


def union_batch(parts: Sequence[EpisodeBatch]) -> EpisodeBatch:
    """The ranks' batches of one step as one batch (episodes in rank order, VSI over the union)."""
    stacked = torch.cat([p.ids[p.inverse] for p in parts])  # global ids (T * W, N, S)
    ids, inverse = torch.unique(stacked, return_inverse=True)

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(p, name) for p in parts])

    return EpisodeBatch(
        ids=ids, inverse=inverse, dense=cat("dense"), click=cat("click"),
        conversion=cat("conversion"), n_support=cat("n_support"), n_query=cat("n_query"),
        task_ids=cat("task_ids"), episode_mask=cat("episode_mask"), k_support=parts[0].k_support,
    )  # fmt: skip


class UnionReader:
    """Per step, the union of what the readers of ``world_size`` ranks yield."""

    def __init__(self, cfg: TrainerConfig, world_size: int) -> None:
        d = cfg.data
        self.readers = [
            EpisodeReader(
                d.path,
                d.train_split,
                d.batch_episodes,
                rank=r,
                world_size=world_size,
                seed=d.seed,
                shuffle=d.shuffle,
                prefetch=0,
                shuffle_buffer=d.shuffle_buffer,
            )
            for r in range(world_size)
        ]

    def __iter__(self) -> Iterator[EpisodeBatch]:
        for parts in zip(*self.readers, strict=True):
            yield union_batch(parts)

    def state_dict(self) -> dict[str, int]:
        return self.readers[0].state_dict()

    def close(self) -> None:
        for r in self.readers:
            r.close()


def reference_run(data: Path, out: Path, world_size: int, **extra: Any) -> Trainer:
    """The single-process run on the union of ``world_size`` ranks' batches (no evaluation)."""
    cfg = load_trainer_config("debug", run_overrides(data, out, **extra, **{"eval.splits": []}))
    trainer = Trainer(cfg).build()
    trainer.reader.close()
    trainer.reader = UnionReader(cfg, world_size)  # type: ignore[assignment]
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


def checkpoint_shards(run_dir: Path, step: int | None = None) -> list[dict[str, Any]]:
    """Every rank's state of a run's checkpoint (``step`` None: the latest)."""
    root = run_dir / "checkpoints"
    ckpt = root / (f"step-{step:08d}" if step else (root / LATEST).read_text().strip())
    info = read_meta(ckpt)
    return [load_shard(ckpt, r, info) for r in range(info["world_size"])]


def assert_replicas_identical(shards: list[dict[str, Any]]) -> None:
    """Dense parameters and Adam state are bitwise the same on every rank."""
    for shard in shards[1:]:
        for key, value in shards[0]["model"].items():
            assert torch.equal(shard["model"][key], value), key
        for i, st in shards[0]["optimizers"]["dense"]["state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(shard["optimizers"]["dense"]["state"][i][key], st[key])


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Close relative to each element and to the tensor's scale (Adagrad sums are ~1e-8, weights
    ~1e-1: one absolute tolerance would miss a factor of 4 in the former)."""
    atol = SCALE_ATOL * float(expected.abs().max()) if expected.is_floating_point() else 0.0
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=atol, msg=lambda m: f"{what}: {m}")


def assert_matches_reference(shards: list[dict[str, Any]], reference: Trainer) -> None:
    """Dense parameters, Adam moments, embedding rows and Adagrad sums of a sharded run equal the
    reference's, the rows merged from every rank's shard."""
    assert_replicas_identical(shards)
    for key, value in reference.model.state_dict().items():
        assert_close_to_scale(shards[0]["model"][key], value, key)
    adam = reference.optimizers.state_dict()["dense"]["state"]
    for i, st in shards[0]["optimizers"]["dense"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close_to_scale(st[key], adam[i][key], f"adam {i} {key}")
    merged = merge_shards([s["embeddings"] for s in shards])
    table = reference.model.embeddings.state_dict()
    assert merged.keys() == table.keys()
    for key, value in table.items():
        assert_close_to_scale(merged[key], value, key)


def eval_splits(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "eval.json").read_text())["splits"]
