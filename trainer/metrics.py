"""Evaluation metrics: AUC, logloss and GAUC, exact and vectorised (numpy, no per-task Python loop).

AUC is the Mann-Whitney statistic with ties counted as one half. GAUC is the per-task AUC averaged
with weights equal to the task's sample count, over the tasks that have both classes (a task with
only clicks or only non-clicks has no AUC and is skipped; the number skipped is reported).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_EPS = 1e-7


@dataclass(frozen=True, slots=True)
class BinaryMetrics:
    """Metrics of one set of predictions."""

    auc: float
    logloss: float
    gauc: float
    samples: int
    positives: int
    tasks: int
    """Tasks with both classes (those GAUC averages over)."""
    tasks_skipped: int
    """Tasks with a single class, excluded from GAUC."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    starts = np.r_[True, sorted_vals[1:] != sorted_vals[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(values)])
    avg_rank = first + (counts + 1) / 2.0  # average of 1-based ranks first+1 .. first+count
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = avg_rank[group]
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _midranks(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def grouped_auc(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray
) -> tuple[float, int, int]:
    """GAUC: per-group AUC weighted by group size, over groups that have both classes.

    Returns:
        ``(gauc, groups_used, groups_skipped)``; gauc is NaN when no group has both classes.
    """
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    if len(labels) == 0:
        return float("nan"), 0, 0
    # Rank scores within each group: sort by (group, score), then midranks per (group, score) run.
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order]
    group_start = np.r_[True, g[1:] != g[:-1]]
    group_id = np.cumsum(group_start) - 1
    run_start = group_start | np.r_[True, s[1:] != s[:-1]]
    run_id = np.cumsum(run_start) - 1
    run_first = np.flatnonzero(run_start)
    run_len = np.diff(np.r_[run_first, len(s)])
    group_first = np.flatnonzero(group_start)
    # Position of each run's first element within its group (0-based), then the run's average rank.
    pos_in_group = run_first - group_first[group_id[run_first]]
    run_rank = pos_in_group + (run_len + 1) / 2.0
    ranks = run_rank[run_id]
    n_groups = len(group_first)
    size = np.bincount(group_id, minlength=n_groups).astype(np.float64)
    pos = np.bincount(group_id, weights=y, minlength=n_groups)
    neg = size - pos
    rank_sum_pos = np.bincount(group_id, weights=ranks * y, minlength=n_groups)
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return float("nan"), 0, int(n_groups)
    group_auc = (rank_sum_pos[valid] - pos[valid] * (pos[valid] + 1) / 2.0) / (
        pos[valid] * neg[valid]
    )
    gauc = float(np.sum(group_auc * size[valid]) / np.sum(size[valid]))
    return gauc, int(valid.sum()), int(n_groups - valid.sum())


def binary_metrics(labels: np.ndarray, logits: np.ndarray, groups: np.ndarray) -> BinaryMetrics:
    """AUC, logloss and GAUC of logits against 0/1 labels, grouped by task id for GAUC."""
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    probs = 1.0 / (1.0 + np.exp(-logits))
    gauc, used, skipped = grouped_auc(labels, logits, groups)
    return BinaryMetrics(
        auc=auc(labels, logits),
        logloss=logloss(labels, probs),
        gauc=gauc,
        samples=len(labels),
        positives=int(labels.sum()),
        tasks=used,
        tasks_skipped=skipped,
    )
