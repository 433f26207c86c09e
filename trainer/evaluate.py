"""Evaluation: query-set AUC, logloss and GAUC without and after adapting on each support set.

    result = evaluate(model, cfg, manifest, "test_cold")
    result["before"]["auc"], result["after"]["auc"]       # shared parameters vs adapted per task

For every episode of the split (file order, at most ``eval.max_episodes``): look its rows up once,
predict the query set at the shared parameters (``meta.predict``), adapt on the support set
(``meta.adapt``: ``eval.adapt_steps`` SGD steps of ``eval.adapt_lr`` on ``eval.adapt``, for all
episodes of a batch at once under ``vmap``) and predict the query set again. A model trained with
``meta.mode = "plain"`` evaluated this way is the "plain model + fine-tuning on the support set"
baseline. Metrics (``trainer.metrics``) are computed on the real query samples with a known label;
GAUC groups by ``task_id`` and weights each task's AUC by its query samples. ``episode_gauc``
groups by episode instead: every episode is adapted on its own support set, so when a task has
several episodes their adapted scores carry different offsets, which task-level GAUC counts as
ranking errors; the episode-level figure isolates the ranking within what one adaptation scored.

Evaluation reads the whole split in this process (the distributed issue shards it and reduces).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from trainer.config import TrainerConfig
from trainer.data.batch import EpisodeBatch
from trainer.data.contract import Manifest
from trainer.data.reader import EpisodeReader
from trainer.meta import adapt, predict
from trainer.metrics import binary_metrics, grouped_auc
from trainer.models import RecModel

log = logging.getLogger(__name__)


def _query_labels(model: RecModel, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Query labels ``(T, Q)`` and the mask of samples to score: real query samples of valid
    episodes whose label is known (conversion is -1 where the source does not have it)."""
    K = batch.k_support
    mask = batch.query_mask & batch.episode_mask[:, None]
    if model.cfg.label == "click":
        return batch.click[:, K:], mask
    conv = batch.conversion[:, K:]
    return conv.clamp_min(0), mask & (conv >= 0)


def _limit_episodes(batch: EpisodeBatch, remaining: int) -> EpisodeBatch:
    """Mask out the valid episodes of ``batch`` beyond the first ``remaining``."""
    keep = batch.episode_mask & (torch.cumsum(batch.episode_mask.long(), 0) <= remaining)
    if torch.equal(keep, batch.episode_mask):
        return batch
    batch.episode_mask = keep
    return batch


def evaluate(model: RecModel, cfg: TrainerConfig, manifest: Manifest, split: str) -> dict[str, Any]:
    """Query metrics of ``split`` before and after per-episode adaptation (module docstring).

    Args:
        model: the trained model (its embedding collection is read, never updated).
        cfg: the run's config (``data.path``, ``data.batch_episodes``, ``eval.*``, ``meta.*``).
        manifest: the manifest of ``cfg.data.path``.
        split: the split to evaluate.

    Returns:
        ``{"split", "episodes", "tasks", "query_samples", "adapt": {"adapt", "steps", "lr"},
        "before": metrics, "after": metrics, "auc_lift", "gauc_lift"}`` where metrics are
        :class:`~trainer.metrics.BinaryMetrics` as dicts plus ``episode_gauc``;
        ``{"split", "episodes": 0, "skipped"}`` when the split has no episodes.
    """
    meta_cfg = cfg.eval_meta()
    adapt_info = {"adapt": meta_cfg.adapt, "steps": meta_cfg.inner_steps, "lr": meta_cfg.inner_lr}
    if not manifest.splits.get(split, {}).get("episodes", 0):
        return {"split": split, "episodes": 0, "skipped": "the split has no episodes"}
    device = model.embeddings.device
    limit = cfg.eval.max_episodes or manifest.splits[split]["episodes"]
    labels, before, after, groups, episode_ids = [], [], [], [], []
    episodes, t0 = 0, time.perf_counter()
    with EpisodeReader(
        cfg.data.path,
        split,
        cfg.data.batch_episodes,
        shuffle=False,
        epochs=1,
        prefetch=cfg.data.prefetch,
        pin_memory=device.type == "cuda",
        task_local_rows=meta_cfg.adapt == "dense+emb",
    ) as reader:
        for batch in reader:
            batch = _limit_episodes(batch, limit - episodes).to(device)
            rows = model.embeddings.lookup(batch.ids)
            y, mask = _query_labels(model, batch)
            logits0 = predict(model, rows, batch)
            logits1 = predict(model, rows, batch, adapt(model, rows, batch, meta_cfg))
            task = batch.task_ids[:, None].expand_as(mask)
            ep = episodes + torch.arange(mask.shape[0], device=device)[:, None].expand_as(mask)
            for out, t in (
                (labels, y), (before, logits0), (after, logits1), (groups, task), (episode_ids, ep)
            ):  # fmt: skip
                out.append(t[mask].cpu().numpy())
            episodes += batch.num_real_episodes
            if episodes >= limit:
                break
    y_all, g_all, e_all = (np.concatenate(x) for x in (labels, groups, episode_ids))
    metrics = {}
    for when, scores in (("before", np.concatenate(before)), ("after", np.concatenate(after))):
        metrics[when] = binary_metrics(y_all, scores, g_all).to_dict()
        metrics[when]["episode_gauc"] = grouped_auc(y_all, scores, e_all)[0]
    m0, m1 = metrics["before"], metrics["after"]
    log.info(
        "eval %s: %d episodes, %d query samples in %.1fs | AUC %.4f -> %.4f after adaptation | "
        "GAUC %.4f -> %.4f",
        split, episodes, len(y_all), time.perf_counter() - t0, m0["auc"], m1["auc"], m0["gauc"],
        m1["gauc"],
    )  # fmt: skip
    return {
        "split": split,
        "episodes": episodes,
        "tasks": len(np.unique(g_all)),
        "query_samples": len(y_all),
        "adapt": adapt_info,
        "before": m0,
        "after": m1,
        "auc_lift": m1["auc"] - m0["auc"],
        "gauc_lift": m1["gauc"] - m0["gauc"],
    }


def evaluate_splits(
    model: RecModel, cfg: TrainerConfig, manifest: Manifest
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` for every split of ``cfg.eval.splits``, keyed by split."""
    return {split: evaluate(model, cfg, manifest, split) for split in cfg.eval.splits}
