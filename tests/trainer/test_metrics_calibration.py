"""Normalized entropy, calibration, per-task calibration and ECE against direct, loop-by-loop
definitions written independently of ``trainer.metrics`` (no sklearn in the virtualenv)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.metrics import (
    ECE_BINS,
    binary_metrics,
    calibration,
    ece,
    normalized_entropy,
    split_metrics,
    task_calibration_error,
)


def _data(seed: int, n: int = 500, tasks: int = 12) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, tasks, n)
    p = np.round(rng.uniform(0.01, 0.6, n), 2)  # rounded: many tied probabilities
    y = (rng.uniform(size=n) < p * 0.8).astype(float)
    return y, p, groups


def _ref_ne(y: np.ndarray, p: np.ndarray) -> float:
    ll = -sum(math.log(pi) if yi else math.log(1 - pi) for yi, pi in zip(y, p, strict=True))
    r = sum(y) / len(y)
    return (ll / len(y)) / -(r * math.log(r) + (1 - r) * math.log(1 - r))


def _ref_ece(y: np.ndarray, p: np.ndarray, bins: int) -> float:
    """Bins by counting, sample by sample, the strictly smaller probabilities."""
    n = len(p)
    members: dict[int, list[int]] = {}
    for i in range(n):
        smaller = sum(1 for j in range(n) if p[j] < p[i])
        members.setdefault(smaller * bins // n, []).append(i)
    total = 0.0
    for idx in members.values():
        total += len(idx) / n * abs(np.mean(p[idx]) - np.mean(y[idx]))
    return total


@pytest.mark.parametrize("seed", range(3))
def test_calibration_metrics_equal_direct_definitions(seed: int) -> None:
    y, p, g = _data(seed)
    assert normalized_entropy(y, p) == pytest.approx(_ref_ne(y, p), rel=1e-12)
    assert calibration(y, p) == pytest.approx(p.sum() / y.sum(), rel=1e-12)
    per_task = sum(abs(p[g == t].sum() - y[g == t].sum()) for t in np.unique(g))
    assert task_calibration_error(y, p, g) == pytest.approx(per_task / y.sum(), rel=1e-12)
    assert ece(y, p) == pytest.approx(_ref_ece(y, p, ECE_BINS), abs=1e-12)
    # tied probabilities share a bin: the value does not depend on sample order
    perm = np.random.default_rng(seed + 100).permutation(len(y))
    assert ece(y[perm], p[perm]) == pytest.approx(ece(y, p), abs=1e-12)


def test_calibration_separates_from_ranking() -> None:
    """Doubling every logit's odds keeps AUC and GAUC, but moves calibration off 1."""
    y, p, g = _data(7)
    logit = np.log(p / (1 - p))
    exact = binary_metrics(y, logit, g)
    shifted = binary_metrics(y, logit + math.log(2.0), g)
    assert (shifted.auc, shifted.gauc) == (exact.auc, exact.gauc)
    assert shifted.calibration > exact.calibration * 1.3
    assert shifted.ece > exact.ece and shifted.logloss > exact.logloss
    # a perfectly calibrated constant predictor within each task: zero per-task error
    rates = {t: y[g == t].mean() for t in np.unique(g)}
    q = np.array([rates[t] for t in g])
    assert task_calibration_error(y, q, g) == pytest.approx(0.0, abs=1e-12)
    assert calibration(y, q) == pytest.approx(1.0, rel=1e-12)


def test_single_class_and_empty_inputs_give_nan() -> None:
    zeros, p = np.zeros(4), np.full(4, 0.2)
    assert math.isnan(normalized_entropy(zeros, p)) and math.isnan(calibration(zeros, p))
    assert math.isnan(task_calibration_error(zeros, p, np.arange(4)))
    assert math.isnan(ece(np.zeros(0), np.zeros(0)))
    assert ece(zeros, p) == pytest.approx(0.2)


def test_split_metrics_adds_episode_gauc() -> None:
    y, p, g = _data(3)
    logit = np.log(p / (1 - p))
    m = split_metrics(y, logit, g, np.zeros_like(g))  # one episode: episode GAUC = pooled AUC
    assert m["episode_gauc"] == pytest.approx(m["auc"], abs=1e-12)
    assert m["ne"] == pytest.approx(_ref_ne(y, p), rel=1e-9)
