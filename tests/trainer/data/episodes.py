"""Test helpers: decode episodes directly (independently of the reader) and fingerprint them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from trainer.data.contract import load_manifest


def decode_direct(root: Path, split: str) -> list[dict]:
    """Every episode of ``split`` in manifest file order, decoded row by row (independent of the
    reader: ``to_pylist``), with stacked global ids."""
    m = load_manifest(str(root))
    slot_offsets = np.repeat(m.table_offsets(), [f.slots for f in m.features])
    N, S, D = m.samples_per_episode, m.sparse_width, m.dense_width
    out = []
    for f in m.files_of(split):
        for row in pq.read_table(root / f["path"]).to_pylist():
            out.append(
                {
                    "task_id": row["task_id"],
                    "n_support": row["n_support"],
                    "n_query": row["n_query"],
                    "global_ids": np.array(row["sparse"], np.int64).reshape(N, S) + slot_offsets,
                    "dense": np.array(row["dense"], np.float32).reshape(N, D),
                    "click": np.array(row["click"], np.float32),
                    "conversion": np.array(row["conversion"], np.float32),
                }
            )
    return out


def fingerprint(task_id: int, global_ids: np.ndarray, dense: np.ndarray) -> tuple:
    return (
        int(task_id),
        np.ascontiguousarray(global_ids).tobytes(),
        np.ascontiguousarray(dense).tobytes(),
    )


def batch_fingerprints(batch) -> list[tuple]:
    """Fingerprints of the real episodes of an EpisodeBatch, in batch order."""
    gids = batch.ids[batch.inverse].numpy()
    return [
        fingerprint(batch.task_ids[t], gids[t], batch.dense[t].numpy())
        for t in range(batch.num_episodes)
        if batch.episode_mask[t]
    ]


def direct_fingerprints(root: Path, split: str) -> Counter:
    return Counter(
        fingerprint(e["task_id"], e["global_ids"], e["dense"]) for e in decode_direct(root, split)
    )
