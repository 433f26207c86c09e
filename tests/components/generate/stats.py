"""Statistics the distribution tests assert on, computed from the written rows with numpy only."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique values, code per row)`` of a string column."""
    values = column.to_numpy(zero_copy_only=False).astype(str)
    return np.unique(values, return_inverse=True)


def share_of_top(counts: np.ndarray, fraction: float) -> float:
    """Share of all rows held by the largest ``fraction`` of the entities."""
    k = max(1, round(fraction * len(counts)))
    return float(np.sort(counts)[::-1][:k].sum() / counts.sum())


def ctr_dispersion(campaign: np.ndarray, click: np.ndarray, min_rows: int) -> float:
    """Variance of per-campaign CTR over the variance binomial noise alone would give."""
    n = np.bincount(campaign)
    k = np.bincount(campaign, weights=click)
    big = n >= min_rows
    p = k[big] / n[big]
    pooled = k[big].sum() / n[big].sum()
    return float(p.var() / np.mean(pooled * (1 - pooled) / n[big]))


def split_half_interaction(
    campaign: np.ndarray, cell: np.ndarray, half: np.ndarray, click: np.ndarray, min_rows: int
) -> float:
    """Correlation between the two halves of the data of campaign x user-cell CTR residuals.

    Residual of (campaign c, user-attribute cell a) = log CTR(c, a) - log CTR(c) - log lift(a),
    the part of the click rate that neither the campaign nor the cell explains alone. If campaigns
    prefer different users, it repeats across independent halves of the data (correlation > 0);
    if they do not, it is noise and the correlation is about 0.
    """
    residuals = []
    n_cell = cell.max() + 1
    for h in (0, 1):
        m = half == h
        c, a, y = campaign[m], cell[m], click[m]
        key = c * n_cell + a
        size = np.bincount(key, minlength=(campaign.max() + 1) * n_cell)
        hits = np.bincount(key, weights=y, minlength=len(size))
        camp_ctr = np.bincount(c, weights=y, minlength=campaign.max() + 1) / np.maximum(
            np.bincount(c, minlength=campaign.max() + 1), 1
        )
        lift = (
            np.bincount(a, weights=y, minlength=n_cell) / np.bincount(a, minlength=n_cell)
        ) / y.mean()
        cc = np.repeat(camp_ctr, n_cell)
        ll = np.tile(lift, campaign.max() + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log((hits + 1) / (size + 1 / cc)) - np.log(cc) - np.log(ll)
        residuals.append((r, size))
    (r0, s0), (r1, s1) = residuals
    ok = (s0 >= min_rows) & (s1 >= min_rows) & np.isfinite(r0) & np.isfinite(r1)
    assert ok.sum() >= 50, "too few campaign x cell pairs for the statistic"
    return float(np.corrcoef(r0[ok], r1[ok])[0, 1])
