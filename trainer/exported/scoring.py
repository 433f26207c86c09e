"""Score encoded samples with an exported model: one by one, or adapted to their task first.

Inputs are what the ETL would have written for those samples (local ids per slot, transformed
dense values), e.g. from the raw-event encoder of ``metarec score``::

    logits = score_samples(model, sparse, dense)                      # (n,) no adaptation
    support = {"c-7": SupportSet(sparse_s, dense_s, click_s, conv_s)}  # <= K samples per task
    logits, adapted = score_tasks(model, sparse, dense, tasks, support)

:func:`score_tasks` builds ordinary episode batches: each task's support set (oldest first, at
most K, padded to K as in the ETL's episodes) followed by a chunk of its query samples, then runs
the trainer's evaluation path (:meth:`ExportedModel.episode_logits`: ``meta.adapt`` +
``meta.predict``). Every chunk of a task is adapted on the same support set, and adaptation is
per episode, so the result does not depend on how samples are batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.data.batch import EpisodeBatch
from trainer.data.hashing import signed_hash
from trainer.data.vsi import TaskLocalRows, UniqueInverse
from trainer.exported.model import ExportedModel

QUERY_CHUNK = 1024
"""Query samples per episode when scoring a task (its support set is repeated per chunk)."""
EPISODES_PER_CALL = 64
"""At most this many episodes are adapted together (one ``vmap``) ..."""
QUERY_SAMPLES_PER_CALL = 16_384
"""... and at most this many (padded) query samples: bounds memory."""


@dataclass
class SupportSet:
    """A task's labelled support samples, oldest first, at most K of them."""

    sparse: np.ndarray
    """(k, S) int64 local ids."""
    dense: np.ndarray
    """(k, Dn) float32."""
    click: np.ndarray
    """(k,) float32 0/1."""
    conversion: np.ndarray
    """(k,) float32 0/1, -1 unknown."""

    def __len__(self) -> int:
        return int(self.sparse.shape[0])


def _global_ids(model: ExportedModel, sparse: np.ndarray) -> np.ndarray:
    S = model.layout.sparse_width
    if sparse.ndim < 2 or sparse.shape[-1] != S:
        raise ValueError(f"sparse ids must be (..., {S}) for this model, got {sparse.shape}")
    return sparse.astype(np.int64, copy=False) + model.layout.slot_offsets.numpy()


@torch.no_grad()
def score_samples(model: ExportedModel, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """Unadapted logits ``(n, *model.output_shape)`` of ``n`` samples (``sparse`` (n, S) local
    ids, ``dense`` (n, Dn)): one lookup of the batch's unique rows, then the exported graph."""
    if len(sparse) == 0:
        return np.zeros((0, *model.output_shape), np.float32)
    ids, inverse = UniqueInverse(model.layout.total_rows)(_global_ids(model, sparse))
    rows = model.lookup(torch.from_numpy(ids))
    out = model.logits(rows, torch.from_numpy(inverse), torch.from_numpy(dense))
    return out.numpy().astype(np.float32, copy=False)


def episode_batch(
    model: ExportedModel, parts: list[tuple[SupportSet, np.ndarray, np.ndarray, int]]
) -> EpisodeBatch:
    """One batch from ``(support, query sparse, query dense, task id)`` episodes."""
    K, S, Dn = model.layout.k_support, model.layout.sparse_width, model.layout.dense_width
    T, Q = len(parts), max(len(p[1]) for p in parts)
    sparse = np.zeros((T, K + Q, S), np.int64)
    dense = np.zeros((T, K + Q, Dn), np.float32)
    click = np.zeros((T, K + Q), np.float32)
    conv = np.zeros((T, K + Q), np.float32)
    n_support, n_query, task_ids = (np.zeros(T, np.int64) for _ in range(3))
    for t, (sup, q_sparse, q_dense, task_id) in enumerate(parts):
        k, q = len(sup), len(q_sparse)
        sparse[t, :k], dense[t, :k] = sup.sparse, sup.dense
        click[t, :k], conv[t, :k] = sup.click, sup.conversion
        sparse[t, K : K + q], dense[t, K : K + q] = q_sparse, q_dense
        n_support[t], n_query[t], task_ids[t] = k, q, task_id
    ids, inverse = UniqueInverse(model.layout.total_rows)(_global_ids(model, sparse))
    extra = {}
    if model.adaptation.adapt == "dense+emb":
        rows, mask, tinv = TaskLocalRows()(inverse, ids.size)
        extra = {"task_rows": torch.from_numpy(rows), "task_rows_mask": torch.from_numpy(mask),
                 "task_inverse": torch.from_numpy(tinv)}  # fmt: skip
    return EpisodeBatch(
        ids=torch.from_numpy(ids),
        inverse=torch.from_numpy(inverse),
        dense=torch.from_numpy(dense),
        click=torch.from_numpy(click),
        conversion=torch.from_numpy(conv),
        n_support=torch.from_numpy(n_support),
        n_query=torch.from_numpy(n_query),
        task_ids=torch.from_numpy(task_ids),
        episode_mask=torch.ones(T, dtype=torch.bool),
        k_support=K,
        **extra,
    )


def score_tasks(
    model: ExportedModel,
    sparse: np.ndarray,
    dense: np.ndarray,
    tasks: np.ndarray,
    support: dict[str, SupportSet],
    query_chunk: int = QUERY_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(n, *model.output_shape)`` of samples whose task has a support set, adapted to
    it; the others unadapted. Returns ``(logits, adapted)`` with ``adapted`` ``(n,)`` bool.

    Args:
        sparse, dense: the samples (see :func:`score_samples`).
        tasks: (n,) task key of each sample (strings).
        support: task key -> its support set (at most K samples, oldest first); tasks with
            fewer than the manifest's ``min_support`` samples are not adapted (training never
            adapted on fewer).
    """
    n = len(sparse)
    logits = np.zeros((n, *model.output_shape), np.float32)
    adapted = np.zeros(n, bool)
    K, min_support = model.layout.k_support, int(model.spec.get("min_support", 1))
    tasks = np.asarray(tasks, dtype=object)
    episodes: list[tuple[SupportSet, np.ndarray, np.ndarray, int]] = []
    positions: list[np.ndarray] = []
    keys, inverse = np.unique(tasks.astype(str), return_inverse=True)
    for j, key in enumerate(keys):
        sup = support.get(key)
        if sup is None or len(sup) < min_support:
            continue
        if len(sup) > K:
            raise ValueError(f"task {key!r}: {len(sup)} support samples, at most K={K}")
        rows = np.flatnonzero(inverse == j)
        for start in range(0, len(rows), query_chunk):
            chunk = rows[start : start + query_chunk]
            episodes.append((sup, sparse[chunk], dense[chunk], signed_hash("task", str(key))))
            positions.append(chunk)
    # Longest query sets first, so the episodes of one call have similar sizes: a call pads every
    # episode's query side to its longest one (Zipf traffic: a few big tasks, many small ones).
    order = sorted(range(len(episodes)), key=lambda i: -len(positions[i]))
    start = 0
    while start < len(order):
        widest = len(positions[order[start]])
        count = max(1, min(EPISODES_PER_CALL, QUERY_SAMPLES_PER_CALL // widest))
        call = order[start : start + count]
        batch = episode_batch(model, [episodes[i] for i in call])
        out = model.episode_logits(batch, adapt=True).numpy()
        for t, i in enumerate(call):
            logits[positions[i]] = out[t, : len(positions[i])]
            adapted[positions[i]] = True
        start += count
    rest = np.flatnonzero(~adapted)
    if len(rest):
        logits[rest] = score_samples(model, sparse[rest], dense[rest])
    return logits, adapted
