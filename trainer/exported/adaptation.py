"""Adapt an exported model to one task once, then score any number of candidate batches with it.

A model server sees the same task (campaign) in many requests; adapting on its support set per
request would repeat the inner loop every time. :func:`adapt_task` runs the trainer's
:func:`~trainer.meta.adapt` once on the task's support set and keeps the result (the low-rank
offsets of the adapted dense layers and, for ``dense+emb``, the offsets of the task's rows, by
global id); :meth:`TaskAdaptation.logits` then runs :func:`~trainer.meta.predict` on episodes of
that support set followed by the candidates, exactly as
:func:`trainer.exported.scoring.score_tasks` builds them, with the kept offsets::

    adapted = adapt_task(model, support, "c-7")        # the inner loop, once
    logits = adapted.logits(sparse, dense)             # = score_tasks(...) for those samples

Adaptation reads only the support side of an episode (its loss is on support samples; a row that
no support sample uses gets no offset), which is why the kept offsets apply to any candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer import meta
from trainer.data.batch import EpisodeBatch
from trainer.data.hashing import signed_hash
from trainer.exported.model import ExportedModel
from trainer.exported.scoring import QUERY_CHUNK, SupportSet, episode_batch


@dataclass
class TaskAdaptation:
    """One task's adaptation (:func:`adapt_task`): reusable for every request of the task."""

    model: ExportedModel
    support: SupportSet
    task_id: int
    dense: meta.Factors
    """Low-rank offsets of the adapted dense layers, episode axis of size 1."""
    row_ids: np.ndarray
    """Sorted global ids of the task's rows with an offset (``dense+emb``; else empty)."""
    row_offsets: dict[str, torch.Tensor]
    """``emb``/``linear`` -> ``(len(row_ids), width)`` offsets of those rows."""

    def _rows(self, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        """The kept row offsets laid out on ``batch``'s task-local rows (zero elsewhere)."""
        if not self.row_offsets:
            return {}
        assert batch.task_rows is not None and batch.task_rows_mask is not None
        gids = batch.ids[batch.task_rows[0]].numpy()
        pos = np.minimum(np.searchsorted(self.row_ids, gids), max(len(self.row_ids) - 1, 0))
        hit = torch.from_numpy(
            (self.row_ids[pos] == gids) & batch.task_rows_mask[0].numpy()
            if len(self.row_ids)
            else np.zeros(len(gids), bool)
        )
        out = {}
        for key, kept in self.row_offsets.items():
            rows = torch.zeros(len(gids), kept.shape[1], dtype=kept.dtype)
            if len(self.row_ids):
                rows[hit] = kept[torch.from_numpy(pos)][hit]
            out[key] = rows[None]
        return out

    @torch.no_grad()
    def logits(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """Adapted logits ``(n, *output_shape)`` of ``n`` candidates (``sparse`` (n, S) local ids, ``dense``
        (n, Dn)), in episodes of at most ``QUERY_CHUNK`` candidates after the support set."""
        out = np.zeros((len(sparse), *self.model.output_shape), np.float32)
        for start in range(0, len(sparse), QUERY_CHUNK):
            part = slice(start, start + QUERY_CHUNK)
            batch = episode_batch(
                self.model, [(self.support, sparse[part], dense[part], self.task_id)]
            )
            adapted = meta.Adapted(self.dense, self._rows(batch))
            pooled = self.model.embeddings.read(batch)
            got = meta.predict(self.model.model, pooled, batch, adapted)[0]
            out[part] = got[: len(sparse[part])].numpy()
        return out


def adapt_task(model: ExportedModel, support: SupportSet, task: str) -> TaskAdaptation:
    """Adapt ``model`` to ``task`` on its ``support`` set (1 to K samples, oldest first).

    Raises:
        ValueError: an empty support set or one larger than the model's K.
    """
    K = model.layout.k_support
    if not 0 < len(support) <= K:
        raise ValueError(f"task {task!r}: {len(support)} support samples, expected 1 to K={K}")
    task_id = signed_hash("task", str(task))
    # The query side is one support sample again: it adds no row and adaptation never reads it.
    batch = episode_batch(model, [(support, support.sparse[:1], support.dense[:1], task_id)])
    pooled = model.embeddings.read(batch)
    adapted = meta.adapt(model.model, pooled, batch, model.adaptation)
    row_ids = np.zeros(0, np.int64)
    offsets: dict[str, torch.Tensor] = {}
    if adapted.rows:
        assert batch.task_rows is not None and batch.task_rows_mask is not None
        mask = batch.task_rows_mask[0]
        row_ids = batch.ids[batch.task_rows[0][mask]].numpy()  # ascending: task_rows is sorted
        offsets = {key: value[0][mask] for key, value in adapted.rows.items()}
    return TaskAdaptation(model, support, task_id, adapted.dense, row_ids, offsets)
