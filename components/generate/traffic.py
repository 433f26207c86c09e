"""Traffic: how many impressions each hour gets, and who sees which ad when.

Volume follows a diurnal curve, ``1 + 0.6 cos(2 pi (hour_of_day - 20) / 24)`` (peak 20:00 UTC,
trough 08:00 UTC, a 4:1 ratio), split over the hours by largest remainder so the total is exactly
``rows``. An hour is generated in chunks of at most ``chunk_rows`` rows; chunk ``j`` of ``m``
covers the ``j``-th of ``m`` equal time slices of the hour, so event times are uniform within the
hour (stratified), files come out time-ordered, and memory is bounded by the chunk size alone.

Within a slice ``[t0, t1)``: campaign ~ share among campaigns born before ``t1`` (a campaign born
inside the slice is weighted by the part of the slice it is alive for), ad ~ Zipf within the
campaign, user ~ Zipf-Mandelbrot, scene ~ scene shares, independently; the event time is uniform in
``[max(t0, birth), t1)`` so nothing happens before a campaign's birth.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from components.generate.config import HOUR_MS, GeneratorConfig
from components.generate.population import SCENES, Population, cdf_of

_BID_MULT = np.array([s.bid_multiplier for s in SCENES])


def rows_per_hour(config: GeneratorConfig) -> np.ndarray:
    """Rows of each hour: the diurnal curve scaled to ``config.rows`` (largest remainder)."""
    hour_of_day = (config.start_ms // HOUR_MS + np.arange(config.hours)) % 24
    weight = 1.0 + 0.6 * np.cos(2 * np.pi * (hour_of_day - 20) / 24)
    exact = config.rows * weight / weight.sum()
    rows = np.floor(exact).astype(np.int64)
    short = config.rows - int(rows.sum())
    rows[np.argsort(-(exact - rows), kind="stable")[:short]] += 1
    return rows


def chunk_slices(rows: int, hour_start_ms: int, chunk_rows: int) -> list[tuple[int, int, int]]:
    """``(rows, t0, t1)`` per chunk of one hour: equal time slices, rows split as evenly."""
    m = max(1, -(-rows // chunk_rows))
    sizes = np.full(m, rows // m)
    sizes[: rows % m] += 1
    edges = hour_start_ms + (np.arange(m + 1) * HOUR_MS) // m
    return [(int(sizes[j]), int(edges[j]), int(edges[j + 1])) for j in range(m)]


@dataclass
class Events:
    """One chunk of impressions as parallel numpy arrays (ids are entity numbers)."""

    key: np.ndarray  # uint64, unique per impression; rendered as the event_id
    time_ms: np.ndarray  # int64 epoch milliseconds
    user: np.ndarray
    ad: np.ndarray
    scene: np.ndarray
    bid: np.ndarray  # float64
    click: np.ndarray  # int8
    conversion: np.ndarray  # int8
    conversion_known: np.ndarray  # bool; False renders as null

    def __len__(self) -> int:
        return len(self.key)

    def take(self, index: np.ndarray) -> Events:
        return Events(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def concat(parts: list[Events]) -> Events:
        return Events(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Events))
        )


def event_keys(counter_start: int, n: int, seed: int) -> np.ndarray:
    """Unique, random-looking 64-bit keys: splitmix64 (a bijection) of a running counter."""
    x = np.arange(counter_start, counter_start + n, dtype=np.uint64)
    x += np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _search(cdf: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``searchsorted(cdf, keys, "right")``, twice as fast on big tables by searching sorted keys."""
    order = np.argsort(keys)
    out = np.empty(len(keys), dtype=np.int64)
    out[order] = np.searchsorted(cdf, keys[order], side="right")
    return out


def sample_impressions(
    pop: Population, rng: np.random.Generator, n: int, t0: int, t1: int, births: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(user, ad, scene, bid, time_ms)`` of ``n`` impressions in ``[t0, t1)``, time-sorted.

    With ``births=False`` every campaign is treated as alive (used for calibration).
    """
    if births:
        alive = np.clip((t1 - np.maximum(t0, pop.camp_birth_ms)) / (t1 - t0), 0.0, 1.0)
        weight = pop.camp_share * alive
    else:
        weight = pop.camp_share
    campaign = _search(cdf_of(weight), rng.random(n))
    ad = _search(pop.ad_cdf, campaign + rng.random(n))
    ad = np.minimum(ad, pop.camp_ad_offsets[campaign + 1] - 1)  # guard float rounding at c + 1
    user = _search(pop.user_cdf, rng.random(n))
    scene = np.searchsorted(pop.scene_cdf, rng.random(n), side="right").astype(np.int8)
    low = np.maximum(t0, pop.camp_birth_ms[campaign]) if births else np.full(n, t0)
    time_ms = low + np.floor(rng.random(n) * (t1 - low)).astype(np.int64)
    noise = np.exp(rng.normal(0.0, 0.3, n))
    bid = np.maximum(np.round(pop.camp_bid[campaign] * _BID_MULT[scene] * noise, 4), 1e-4)
    order = np.argsort(time_ms, kind="stable")
    return user[order], ad[order], scene[order], bid[order], time_ms[order]
