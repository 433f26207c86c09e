"""Evaluate an exported model on ETL episodes, exactly as the trainer evaluates (before/after
adaptation on each episode's support set), e.g. to compare a challenger and the champion on the
SAME data before promoting one of them::

    result = evaluate_exported(model, "out/episodes/interval=...", splits=("test_cold",))
    result["data"]["content_hash"], result["splits"]["test_cold"]["after"]["auc"]

The episodes are read by the trainer's reader in file order, batch by batch as in
:func:`trainer.evaluate.evaluate` (the first ``max_episodes`` of a split, all when 0), and the
metrics are the trainer's (:mod:`trainer.metrics`), so the result has the shape of ``eval.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.data.contract import Manifest, load_manifest
from trainer.data.reader import EpisodeReader
from trainer.exported.model import ExportedModel
from trainer.metrics import binary_metrics, grouped_auc

log = logging.getLogger(__name__)


@dataclass
class EpisodeScores:
    """Query samples of the scored episodes (real samples with a known label), in reader order."""

    labels: np.ndarray
    before: np.ndarray
    """Logits without adaptation."""
    after: np.ndarray
    """Logits after adapting on the episode's support set."""
    task_ids: np.ndarray
    episodes: np.ndarray
    """Position of the sample's episode in the split (file order)."""
    num_episodes: int


def check_compatible(model: ExportedModel, manifest: Manifest, where: str) -> None:
    """Refuse episodes encoded under another feature spec than the model's (the ids would not
    address the rows they were trained for)."""

    def key(features: list[Any]) -> list[tuple]:
        return [(f.name, f.kind, f.buckets, f.slots) for f in features]

    dense = [d.name for d in sorted(manifest.dense_features, key=lambda d: d.index)]
    if key(manifest.features) != key(model.features) or dense != list(model.layout.dense_names):
        raise ValueError(
            f"{where} was encoded with another feature spec than model {model.name}/"
            f"{model.version} (features {key(manifest.features)} vs {key(model.features)}, dense "
            f"{dense} vs {list(model.layout.dense_names)}); evaluate on data of the same ETL spec"
        )


def score_episodes(
    model: ExportedModel, root: str, split: str, batch_episodes: int = 64, max_episodes: int = 0
) -> EpisodeScores:
    """Query logits of ``split`` before and after adaptation (see the module docstring)."""
    manifest = load_manifest(root)
    check_compatible(model, manifest, root)
    label = model.model.cfg.label
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("y", "b", "a", "t", "e")}
    limit = max_episodes or manifest.splits.get(split, {}).get("episodes", 0)
    done = 0
    with EpisodeReader(root, split, batch_episodes, shuffle=False, epochs=1, prefetch=1,
                       pin_memory=False,
                       task_local_rows=model.adaptation.adapt == "dense+emb") as reader:  # fmt: skip
        for batch in reader:
            if done >= limit:
                break
            keep = batch.episode_mask & (torch.cumsum(batch.episode_mask.long(), 0) <= limit - done)
            batch.episode_mask = keep
            K = batch.k_support
            mask = batch.query_mask & keep[:, None]
            y = batch.click[:, K:] if label == "click" else batch.conversion[:, K:]
            if label != "click":
                mask &= y >= 0
            if label == "clicked_conversion":
                mask &= batch.click[:, K:] > 0
            before = model.episode_logits(batch, adapt=False)
            after = model.episode_logits(batch, adapt=True)
            if model.output_shape:  # ESMM: the gate scores the CTR head (as trainer.evaluate)
                before, after = before[..., 0], after[..., 0]
            kept = int(keep.sum())
            pos = torch.full((keep.shape[0],), -1, dtype=torch.int64)
            pos[:kept] = torch.arange(done, done + kept)
            for k, v in (("y", y.clamp_min(0)), ("b", before), ("a", after),
                         ("t", batch.task_ids[:, None].expand_as(mask)),
                         ("e", pos[:, None].expand_as(mask))):  # fmt: skip
                parts[k].append(v[mask].numpy())
            done += kept
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    return EpisodeScores(
        labels=cat["y"].astype(np.float32),
        before=cat["b"].astype(np.float32),
        after=cat["a"].astype(np.float32),
        task_ids=cat["t"].astype(np.int64),
        episodes=cat["e"].astype(np.int64),
        num_episodes=done,
    )


def evaluate_exported(
    model: ExportedModel,
    root: str,
    splits: tuple[str, ...] = ("valid", "test_cold"),
    batch_episodes: int = 64,
    max_episodes: int = 0,
) -> dict[str, Any]:
    """Metrics of ``splits`` of the ETL output ``root`` in the shape of the trainer's
    ``eval.json`` (``{"splits": {split: result}}``) plus ``data``: the content hash and interval
    of ``root``, which the promotion gate compares across models."""
    return evaluate_scored(model, root, splits, batch_episodes, max_episodes)[0]


def evaluate_scored(
    model: ExportedModel,
    root: str,
    splits: tuple[str, ...] = ("valid", "test_cold"),
    batch_episodes: int = 64,
    max_episodes: int = 0,
) -> tuple[dict[str, Any], dict[str, EpisodeScores]]:
    """:func:`evaluate_exported`'s result and the scores it was computed from (split -> scores,
    for the splits that have episodes), so a caller that needs more than the metrics (a ROC
    curve) scores the model once."""
    manifest = load_manifest(root)
    out: dict[str, Any] = {
        "data": {
            "path": root,
            "content_hash": manifest.content_hash,
            "interval": manifest.interval,
        },
        "model": {"name": model.name, "version": model.version},
        "settings": {"batch_episodes": batch_episodes, "max_episodes": max_episodes},
        "splits": {},
    }
    scores: dict[str, EpisodeScores] = {}
    a = model.adaptation
    for split in splits:
        t0 = time.perf_counter()
        if not manifest.splits.get(split, {}).get("episodes", 0):
            out["splits"][split] = {"split": split, "episodes": 0, "skipped": "no episodes"}
            continue
        s = scores[split] = score_episodes(model, root, split, batch_episodes, max_episodes)
        metrics = {}
        for when, logits in (("before", s.before), ("after", s.after)):
            metrics[when] = binary_metrics(s.labels, logits, s.task_ids).to_dict()
            metrics[when]["episode_gauc"] = grouped_auc(s.labels, logits, s.episodes)[0]
        out["splits"][split] = {
            "split": split,
            "episodes": s.num_episodes,
            "tasks": len(np.unique(s.task_ids)),
            "query_samples": len(s.labels),
            "adapt": {"adapt": a.adapt, "steps": a.inner_steps, "lr": a.inner_lr},
            "before": metrics["before"],
            "after": metrics["after"],
            "auc_lift": metrics["after"]["auc"] - metrics["before"]["auc"],
            "gauc_lift": metrics["after"]["gauc"] - metrics["before"]["gauc"],
        }
        log.info("%s/%s on %s %s: %d episodes, AUC %.4f -> %.4f after adaptation (%.1f s)",
                 model.name, model.version, root, split, s.num_episodes, metrics["before"]["auc"],
                 metrics["after"]["auc"], time.perf_counter() - t0)  # fmt: skip
    return out, scores
