"""Batch assembly (gather, stacked ids, VSI, task-local rows) against a plain reference.

The reference is the straightforward assembly: concatenate the parts' rows, pad, add the slot
offsets, ``np.unique(return_inverse=True)`` and a loop over episodes for the task-local rows. The
reader's fast path must give the same batches: same episodes, same order, same tensors and dtypes.
"""

from __future__ import annotations

import types
from dataclasses import fields

import numpy as np
import pytest
import torch

from trainer.data.batch import EpisodeBatch
from trainer.data.reader import EpisodeReader


def _reference_assemble(self: EpisodeReader, parts: list) -> EpisodeBatch:
    T, N, S, Dn = self.batch_episodes, self._N, self._S, self._Dn
    picks = [(c, np.arange(r.start, r.stop) if isinstance(r, slice) else r) for c, r in parts]

    def rows(field: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        out = np.zeros((T, *shape), dtype)
        if picks:
            got = np.concatenate([getattr(c, field)[r] for c, r in picks])
            out[: len(got)] = got
        return out

    real = sum(len(r) for _, r in picks)
    gids = rows("sparse", (N, S), np.int64) + self.layout.slot_offsets.numpy()
    ids, inverse = np.unique(gids, return_inverse=True)
    inverse = inverse.reshape(T, N, S)
    extra = {}
    if self.task_local_rows:
        distinct = [np.unique(inverse[t]) for t in range(T)]
        M = max(len(d) for d in distinct)
        task_rows, mask = np.zeros((T, M), np.int64), np.zeros((T, M), bool)
        task_inverse = np.zeros((T, N, S), np.int64)
        for t, d in enumerate(distinct):  # a padding episode's rows are its padding rows, masked
            task_rows[t, : len(d)], mask[t, : len(d)] = d, t < real
            task_inverse[t] = np.searchsorted(d, inverse[t])
        extra = {"task_rows": task_rows, "task_rows_mask": mask, "task_inverse": task_inverse}
    return EpisodeBatch(
        ids=torch.from_numpy(ids),
        inverse=torch.from_numpy(inverse),
        dense=torch.from_numpy(rows("dense", (N, Dn), np.float32)),
        click=torch.from_numpy(rows("click", (N,), np.float32)),
        conversion=torch.from_numpy(rows("conversion", (N,), np.float32)),
        task_ids=torch.from_numpy(rows("task_id", (), np.int64)),
        n_support=torch.from_numpy(rows("n_support", (), np.int64)),
        n_query=torch.from_numpy(rows("n_query", (), np.int64)),
        episode_mask=torch.from_numpy(np.arange(T) < real),
        k_support=self.manifest.k_support,
        **{k: torch.from_numpy(v) for k, v in extra.items()},
    )


@pytest.mark.parametrize(
    "kw",
    [
        dict(shuffle=True),
        dict(shuffle=False, task_local_rows=True),
        dict(shuffle=True, shuffle_buffer=40, world_size=3, rank=2, task_local_rows=True),
        dict(shuffle=True, world_size=2, rank=1, batch_episodes=5),
    ],
)
def test_fast_assembly_equals_the_reference(small_root, kw):
    kw = {"batch_episodes": 16, "prefetch": 0, "epochs": 1, "seed": 4, **kw}
    fast = list(EpisodeReader(str(small_root), "train", **kw))
    reference = EpisodeReader(str(small_root), "train", **kw)
    reference._assemble = types.MethodType(_reference_assemble, reference)
    expected = list(reference)
    assert len(fast) == len(expected) == reference.steps_per_epoch
    assert sum(b.num_real_episodes for b in fast) == reference.rank_episodes(0)
    for got, want in zip(fast, expected, strict=True):
        for f in fields(EpisodeBatch):
            a, b = getattr(got, f.name), getattr(want, f.name)
            if isinstance(b, torch.Tensor):
                assert a.dtype == b.dtype and torch.equal(a, b), f.name
            else:
                assert a == b, f.name
