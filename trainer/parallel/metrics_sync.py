"""Evaluation across ranks: each rank scores its share of the episodes, the metrics are global.

AUC and GAUC are rank statistics: they do not decompose into per-rank sums, so the per-sample labels,
scores and task ids are gathered (a few MB even for millions of query samples) and every rank computes
the exact metrics of :mod:`trainer.metrics` on the union::

    for batch in reader:                                  # EpisodeReader(rank=, world_size=)
        sparse = model.embeddings.read(batch)             # collective: all ranks, same batch count
        ...collect labels, logits, task ids of the real query samples...
    m = global_binary_metrics(env, labels, logits, tasks) # equal to the single-process metrics

Additive counters (loss sums, sample counts) need no gather: ``env.reduce_sums``.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.metrics import BinaryMetrics, binary_metrics
from trainer.parallel.env import ParallelEnv


def gather_arrays(env: ParallelEnv, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each 1-D array concatenated over the ranks in rank order, on every rank.

    All ranks must pass the same keys (in any order); lengths may differ between ranks.
    """
    out: dict[str, np.ndarray] = {}
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        if a.ndim != 1:
            raise ValueError(f"gather_arrays takes 1-D arrays; {key!r} has shape {a.shape}")
        parts = env.comm.all_gather_rows(torch.from_numpy(a).to(env.device), "gather")
        out[key] = torch.cat(parts).cpu().numpy()
    return out


def global_binary_metrics(
    env: ParallelEnv, labels: np.ndarray, logits: np.ndarray, groups: np.ndarray
) -> BinaryMetrics:
    """:func:`trainer.metrics.binary_metrics` over the union of every rank's samples."""
    g = gather_arrays(env, {"labels": labels, "logits": logits, "groups": groups})
    return binary_metrics(g["labels"], g["logits"], g["groups"])
