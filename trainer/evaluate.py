"""Evaluation: query-set AUC, logloss and GAUC without and after adapting on each support set, on
one process or on every rank of a job (the lookups are collectives when the rows are sharded).

    result = evaluate(model, cfg, manifest, "test_cold", env)
    result["before"]["auc"], result["after"]["auc"]       # shared parameters vs adapted per task

The evaluated episodes are the first ``eval.max_episodes`` of the split in file order (all when 0),
whatever the world size. Each rank reads its row groups of the split (``EpisodeReader(rank=,
world_size=, epochs=1, shuffle=False)``); those come in file order, so the rank's share of the
evaluated episodes is a prefix of its stream, and every rank computes every rank's share from the
row-group sizes alone. All ranks then run the same number of batches (the longest share; a rank
whose share is done takes part with masked batches), so no rank waits in a collective that another
never enters. Per batch: read the rows once (``embeddings.read``: the pooled rows, exact, without
substitution even when training uses DES, so every ``eval.adapt`` works), predict the query set at
the shared parameters
(``meta.predict``), adapt on the support set (``meta.adapt``: ``eval.adapt_steps`` SGD steps of
``eval.adapt_lr`` on ``eval.adapt``, all episodes of a batch at once under ``vmap``), predict again.

Metrics (``trainer.metrics``) are computed on the real query samples with a known label, gathered
from every rank (``trainer.parallel.metrics_sync``: AUC is a rank statistic, so the samples travel,
not partial sums), so they equal the single-process metrics. A model trained with ``meta.mode =
"plain"`` evaluated this way is the "plain model + fine-tuning on the support set" baseline. GAUC
groups by ``task_id`` and weights each task's AUC by its query samples. ``episode_gauc`` groups by
episode (its position in the split) instead: every episode is adapted on its own support set, so
when a task has several episodes their adapted scores carry different offsets, which task-level
GAUC counts as ranking errors; the episode-level figure isolates the ranking within one adaptation.

An ESMM model (``model.task = "esmm"``) is scored on its CTR head in ``before``/``after`` (the
gate's metrics), and on all three of its scores in ``heads`` (:func:`trainer.metrics.esmm_metrics`:
CTR AUC, CVR AUC on clicked samples, CTCVR AUC), before and after adaptation.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from trainer.config import TrainerConfig
from trainer.data import sharding
from trainer.data.batch import EpisodeBatch
from trainer.data.contract import Manifest
from trainer.data.reader import EpisodeReader
from trainer.meta import adapt, predict
from trainer.metrics import esmm_metrics, split_metrics
from trainer.models import RecModel
from trainer.parallel.env import ParallelEnv
from trainer.parallel.metrics_sync import gather_arrays

log = logging.getLogger(__name__)


def query_labels(model: RecModel, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Query labels ``(T, Q)`` and the mask of samples to score: real query samples of valid
    episodes whose label is known (conversion is -1 where the source does not have it)."""
    return _labels(model, batch, slice(batch.k_support, None), batch.query_mask)


def support_labels(model: RecModel, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Support labels ``(T, K)`` and the mask of real support samples with a known label."""
    return _labels(model, batch, slice(0, batch.k_support), batch.support_mask)


def _labels(
    model: RecModel, batch: EpisodeBatch, side: slice, real: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    mask = real & batch.episode_mask[:, None]
    if model.cfg.label == "click":
        return batch.click[:, side], mask
    conv = batch.conversion[:, side]
    if model.cfg.label == "clicked_conversion":
        mask = mask & (batch.click[:, side] > 0)
    return conv.clamp_min(0), mask & (conv >= 0)


def limit_episodes(batch: EpisodeBatch, remaining: int) -> EpisodeBatch:
    """Mask out the valid episodes of ``batch`` beyond the first ``remaining``."""
    keep = batch.episode_mask & (torch.cumsum(batch.episode_mask.long(), 0) <= remaining)
    if torch.equal(keep, batch.episode_mask):
        return batch
    batch.episode_mask = keep
    return batch


def evaluation_share(reader: EpisodeReader, limit: int) -> tuple[np.ndarray, int, int]:
    """This rank's evaluated episodes and the batch count of every rank.

    Returns ``(positions, steps, total)``: the split positions (file order) of this rank's
    evaluated episodes, which are the first ``len(positions)`` episodes of its stream; the number
    of batches every rank runs; and the evaluated episodes of all ranks.

    Example: row groups of [5, 5, 3, 3] episodes, 2 ranks, batch 4, ``limit = 9``: rank 0 reads
    groups 0 and 2 (positions 0-4, 10-12), rank 1 groups 1 and 3 (5-9, 13-15); below 9: rank 0
    positions 0-4, rank 1 positions 5-8 -> ``steps = ceil(5 / 4) = 2`` batches on each rank (rank 1
    takes part in its second one with every episode masked), 9 episodes in all.
    """
    sizes = reader.unit_sizes
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    T = reader.batch_episodes
    units = sharding.assign_units(sizes, reader.world_size, reader.seed, 0, shuffle=False)
    steps, total, mine = 0, 0, np.zeros(0, np.int64)
    for r, rank_units in enumerate(units):
        # A rank reads its row groups in file order, so its positions increase: a prefix is < limit.
        n = sum(int(np.clip(limit - starts[u], 0, sizes[u])) for u in rank_units)
        steps, total = max(steps, math.ceil(n / T)), total + n
        if r == reader.rank and n:
            pos = np.concatenate([np.arange(starts[u], starts[u] + sizes[u]) for u in rank_units])
            mine = pos[:n]
    return mine, steps, total


def evaluate(
    model: RecModel,
    cfg: TrainerConfig,
    manifest: Manifest,
    split: str,
    env: ParallelEnv | None = None,
) -> dict[str, Any]:
    """Query metrics of ``split`` before and after per-episode adaptation (module docstring).

    Args:
        model: the trained model (its embedding collection is read, never updated).
        cfg: the run's config (``data.path``, ``data.batch_episodes``, ``eval.*``, ``meta.*``).
        manifest: the manifest of ``cfg.data.path``.
        split: the split to evaluate.
        env: this process's place in the job (None: one process). With several ranks every rank
            must call this, with the same arguments; every rank returns the same result.

    Returns:
        ``{"split", "episodes", "tasks", "query_samples", "adapt": {"adapt", "steps", "lr"},
        "before": metrics, "after": metrics, "auc_lift", "gauc_lift"}`` where metrics are
        :class:`~trainer.metrics.BinaryMetrics` as dicts plus ``episode_gauc``;
        ``{"split", "episodes": 0, "skipped"}`` when the split has no episodes.
    """
    env = env if env is not None else ParallelEnv.single_process(model.embeddings.device)
    meta_cfg = cfg.eval_meta()
    adapt_info = {"adapt": meta_cfg.adapt, "steps": meta_cfg.inner_steps, "lr": meta_cfg.inner_lr}
    if not manifest.splits.get(split, {}).get("episodes", 0):
        return {"split": split, "episodes": 0, "skipped": "the split has no episodes"}
    device = model.embeddings.device
    limit = cfg.eval.max_episodes or manifest.splits[split]["episodes"]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("labels", "before", "after", "groups")}
    parts["episodes"] = []
    esmm = model.cfg.task == "esmm"
    if esmm:  # the CVR head's logits and the conversions, for `heads`
        parts.update({"conversion": [], "before_cvr": [], "after_cvr": []})
    t0 = time.perf_counter()
    with EpisodeReader(
        cfg.data.path,
        split,
        cfg.data.batch_episodes,
        rank=env.rank,
        world_size=env.world_size,
        shuffle=False,
        epochs=1,
        prefetch=cfg.data.prefetch,
        pin_memory=device.type == "cuda",
        task_local_rows=meta_cfg.adapt == "dense+emb",
    ) as reader:
        positions, steps, total = evaluation_share(reader, limit)
        done = 0
        for i, batch in enumerate(reader):
            if i == steps:  # the same batch count on every rank
                break
            batch = limit_episodes(batch, len(positions) - done).to(device)
            sparse = model.embeddings.read(batch)
            y, mask = query_labels(model, batch)
            logits0 = predict(model, sparse, batch)
            logits1 = predict(model, sparse, batch, adapt(model, sparse, batch, meta_cfg))
            if esmm:  # [ctr, cvr] logits: the CTR head is the primary score
                conv = batch.conversion[:, batch.k_support :]
                for key, t in (("conversion", conv), ("before_cvr", logits0[..., 1]),
                               ("after_cvr", logits1[..., 1])):  # fmt: skip
                    parts[key].append(t.float()[mask].cpu())
                logits0, logits1 = logits0[..., 0], logits1[..., 0]
            # kept episodes are the batch's first ones (padding fills the end of a batch)
            kept = batch.num_real_episodes
            ep = torch.full((mask.shape[0],), -1, dtype=torch.int64)
            ep[:kept] = torch.from_numpy(positions[done : done + kept])
            task = batch.task_ids[:, None].expand_as(mask)
            ep = ep.to(device)[:, None].expand_as(mask)
            for key, t in (
                ("labels", y.float()), ("before", logits0.float()), ("after", logits1.float()),
                ("groups", task.long()), ("episodes", ep),
            ):  # fmt: skip
                parts[key].append(t[mask].cpu())
            done += kept
    local = {
        k: _cat(v, torch.int64 if k in ("groups", "episodes") else torch.float32)
        for k, v in parts.items()
    }
    g = gather_arrays(env, local)
    m0, m1 = (
        split_metrics(g["labels"], g[w], g["groups"], g["episodes"]) for w in ("before", "after")
    )
    log.info(
        "eval %s: %d episodes, %d query samples in %.1fs | AUC %.4f -> %.4f after adaptation | "
        "GAUC %.4f -> %.4f",
        split, total, len(g["labels"]), time.perf_counter() - t0, m0["auc"], m1["auc"], m0["gauc"],
        m1["gauc"],
    )  # fmt: skip
    out = {
        "split": split,
        "episodes": total,
        "tasks": len(np.unique(g["groups"])),
        "query_samples": len(g["labels"]),
        "adapt": adapt_info,
        "before": m0,
        "after": m1,
        "auc_lift": m1["auc"] - m0["auc"],
        "gauc_lift": m1["gauc"] - m0["gauc"],
    }
    if esmm:
        out["heads"] = {
            w: esmm_metrics(g["labels"], g["conversion"], g[w], g[f"{w}_cvr"], g["groups"],
                            g["episodes"])
            for w in ("before", "after")
        }  # fmt: skip
        log.info(
            "eval %s ESMM after adaptation: CTR AUC %.4f, CVR AUC (clicked) %s, CTCVR AUC %s",
            split, out["heads"]["after"]["ctr"]["auc"],
            *(out["heads"]["after"][h].get("auc", "n/a") for h in ("cvr", "ctcvr")),
        )  # fmt: skip
    return out


def _cat(parts: list[torch.Tensor], dtype: torch.dtype) -> np.ndarray:
    """One array from per-batch pieces (empty, with the dtype every rank uses, when none)."""
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)).to(dtype).numpy()


def evaluate_splits(
    model: RecModel, cfg: TrainerConfig, manifest: Manifest, env: ParallelEnv | None = None
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` for every split of ``cfg.eval.splits``, keyed by split."""
    return {split: evaluate(model, cfg, manifest, split, env) for split in cfg.eval.splits}
