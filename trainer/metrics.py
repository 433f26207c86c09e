"""Evaluation metrics, exact and vectorised (numpy, no per-task Python loop): ranking (AUC, GAUC)
apart from calibration (predicted / observed positives, ECE), plus logloss and normalized entropy.

- ``auc``: pooled ROC AUC, the Mann-Whitney statistic with ties counted as one half. Across tasks
  it rewards getting each task's base rate right as much as ranking within a task.
- ``gauc``: the per-task AUC averaged with weights equal to the task's sample count (impressions),
  over the tasks that have both classes (a task with only clicks or only non-clicks has no AUC and
  is skipped; the number skipped is reported). Ranking within tasks only.
- ``logloss``: mean binary cross-entropy; ``ne`` (normalized entropy): logloss divided by the
  entropy of the observed positive rate (1.0 = no better than predicting the base rate; NaN when
  every label is the same).
- ``calibration``: predicted / observed positives, ``sum(p) / sum(y)`` (1.0 = calibrated overall,
  > 1 over-predicts; NaN without positives). ``task_calibration_error``: the same per task, as
  ``sum_t |sum(p_t) - sum(y_t)| / sum(y)``: the share of the observed positives that are
  mispredicted task by task (0 = every task's predicted count equals its observed count; an
  over-predicted task does not offset an under-predicted one).
- ``ece``: expected calibration error over ``ECE_BINS`` **equal-mass** bins of the predicted
  probability, ``sum_b n_b / n * |mean(p_b) - mean(y_b)|``. Sample ``i`` goes to bin
  ``floor(ECE_BINS * r_i / n)`` where ``r_i`` is the number of samples with a strictly smaller
  probability, so tied probabilities share a bin and the result does not depend on sample order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_EPS = 1e-7
ECE_BINS = 10
"""Equal-mass bins of :func:`ece` (module docstring)."""


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
    ne: float
    """Normalized entropy: logloss / entropy of the observed positive rate."""
    calibration: float
    """Predicted / observed positives over all samples."""
    task_calibration_error: float
    """Sum over tasks of |predicted - observed positives| / observed positives."""
    ece: float
    """Expected calibration error over ``ECE_BINS`` equal-mass bins."""

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


def normalized_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Logloss divided by the entropy of the observed positive rate; NaN for a single class."""
    y = np.asarray(labels, dtype=np.float64)
    rate = float(y.mean()) if len(y) else float("nan")
    if not 0.0 < rate < 1.0:
        return float("nan")
    entropy = -(rate * np.log(rate) + (1.0 - rate) * np.log1p(-rate))
    return logloss(y, probs) / entropy


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
    """Predicted / observed positives: ``sum(p) / sum(y)``; NaN without positives."""
    positives = float(np.sum(labels, dtype=np.float64))
    return float(np.sum(probs, dtype=np.float64)) / positives if positives > 0 else float("nan")


def task_calibration_error(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> float:
    """``sum_t |sum(p_t) - sum(y_t)| / sum(y)`` over the tasks ``groups``; NaN without positives."""
    y = np.asarray(labels, dtype=np.float64)
    positives = float(y.sum())
    if positives <= 0:
        return float("nan")
    _, task = np.unique(np.asarray(groups), return_inverse=True)
    diff = np.bincount(task, weights=np.asarray(probs, dtype=np.float64) - y)
    return float(np.abs(diff).sum() / positives)


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``bins`` equal-mass bins (module docstring); NaN if empty."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    n = len(p)
    if n == 0:
        return float("nan")
    smaller = np.searchsorted(np.sort(p), p, side="left")  # ties get the same count
    b = smaller * bins // n
    count = np.bincount(b, minlength=bins)
    gap = np.bincount(b, weights=p - y, minlength=bins)  # n_b * (mean p_b - mean y_b)
    return float(np.abs(gap[count > 0]).sum() / n)


def binary_metrics(labels: np.ndarray, logits: np.ndarray, groups: np.ndarray) -> BinaryMetrics:
    """Every metric of the module docstring for logits against 0/1 labels, grouped by task id
    for GAUC and the per-task calibration."""
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
        ne=normalized_entropy(labels, probs),
        calibration=calibration(labels, probs),
        task_calibration_error=task_calibration_error(labels, probs, groups),
        ece=ece(labels, probs),
    )


def split_metrics(
    labels: np.ndarray, logits: np.ndarray, tasks: np.ndarray, episodes: np.ndarray
) -> dict[str, float | int]:
    """:func:`binary_metrics` as a dict plus ``episode_gauc`` (GAUC grouped by episode instead of
    task): the metrics of one set of query scores in ``eval.json``."""
    out = binary_metrics(labels, logits, tasks).to_dict()
    out["episode_gauc"] = grouped_auc(labels, logits, episodes)[0]
    return out


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate on both ends."""
    with np.errstate(divide="ignore"):
        near = np.log(-np.expm1(np.maximum(x, -np.log(2.0))))
        far = np.log1p(-np.exp(np.minimum(x, -np.log(2.0))))
    return np.where(x > -np.log(2.0), near, far)


def ctcvr_logits(ctr_logits: np.ndarray, cvr_logits: np.ndarray) -> np.ndarray:
    """The logit of ``pCTR * pCVR`` (ESMM's CTCVR score), computed in log space."""
    a, b = np.asarray(ctr_logits, np.float64), np.asarray(cvr_logits, np.float64)
    log_p = -np.logaddexp(0.0, -a) - np.logaddexp(0.0, -b)
    return log_p - _log1mexp(log_p)


def esmm_metrics(
    click: np.ndarray,
    conversion: np.ndarray,
    ctr_logits: np.ndarray,
    cvr_logits: np.ndarray,
    tasks: np.ndarray,
    episodes: np.ndarray,
) -> dict[str, dict[str, float | int]]:
    """:func:`split_metrics` of the three ESMM scores: ``ctr`` (pCTR against clicks, every
    sample), ``cvr`` (pCVR against conversions on the clicked samples whose conversion is known:
    the space a CVR model is usually judged on) and ``ctcvr`` (pCTR * pCVR against click *
    conversion, every sample whose conversion is known). ``conversion`` is -1 where unknown. A
    score with no samples reports ``{"samples": 0}``."""
    click, conversion = np.asarray(click, np.float64), np.asarray(conversion, np.float64)
    known = conversion >= 0
    sets = {
        "ctr": (np.ones_like(known), click, ctr_logits),
        "cvr": (known & (click > 0), conversion, cvr_logits),
        "ctcvr": (known, click * conversion, ctcvr_logits(ctr_logits, cvr_logits)),
    }
    return {
        name: split_metrics(y[m], np.asarray(s)[m], tasks[m], episodes[m])
        if m.any()
        else {"samples": 0}
        for name, (m, y, s) in sets.items()
    }
