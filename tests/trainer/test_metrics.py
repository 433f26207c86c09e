"""Metrics against brute-force pairwise definitions."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.metrics import auc, binary_metrics, grouped_auc, logloss


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 20, 300).astype(float)  # many ties
    assert auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_auc_extremes_and_single_class() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert np.isnan(auc(np.ones(4), np.arange(4.0)))


def test_gauc_is_size_weighted_mean_of_per_group_auc() -> None:
    rng = np.random.default_rng(7)
    groups = rng.integers(0, 30, 2000)
    y = rng.integers(0, 2, 2000)
    s = np.round(rng.normal(size=2000) + y * 0.5, 1)  # ties inside groups
    expected_num, expected_den, used = 0.0, 0.0, 0
    for g in np.unique(groups):
        m = groups == g
        if 0 < y[m].sum() < m.sum():
            expected_num += _pairwise_auc(y[m], s[m]) * m.sum()
            expected_den += m.sum()
            used += 1
    gauc, n_used, n_skipped = grouped_auc(y, s, groups)
    assert gauc == pytest.approx(expected_num / expected_den, abs=1e-12)
    assert n_used == used and n_used + n_skipped == len(np.unique(groups))


def test_gauc_skips_single_class_groups() -> None:
    y = np.array([1, 1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.1, 0.7, 0.2])
    groups = np.array([5, 5, 9, 9, 9])  # group 5 has only positives
    gauc, used, skipped = grouped_auc(y, s, groups)
    assert (gauc, used, skipped) == (1.0, 1, 1)


def test_logloss_and_binary_metrics() -> None:
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.9, 0.2, 0.6, 0.4])
    expected = -np.mean(np.log([0.9, 0.8, 0.6, 0.6]))
    assert logloss(y, p) == pytest.approx(expected)
    m = binary_metrics(y, np.log(p / (1 - p)), np.zeros(4))
    assert m.logloss == pytest.approx(expected) and m.auc == 1.0 and m.positives == 2
