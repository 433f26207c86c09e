"""Entity tables: users, advertisers, campaigns, ads and scenes, with their fixed attributes.

Everything an entity "is" lives here and never changes during a run: a user always has the same
gender, age bucket, segment, device, region, interests and latent click propensity; an ad always
has the same campaign, category, brand, creative type, tags and item price. Sizes come from the
config, never from the number of rows, so memory does not grow with ``--rows``.

Traffic shares are Zipf-Mandelbrot, ``p(rank) ~ (rank + offset) ** -s``, with the rank randomly
permuted over ids (``u-0`` is not the busiest user). The offset keeps the head realistic (with a
pure Zipf law at s = 1.1 one user out of 200k would see 13 % of all impressions); the exponent
sets the tail. See ``labels.py`` for how these attributes drive clicks and conversions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.generate.config import GeneratorConfig

# Zipf-Mandelbrot offsets of the traffic laws (the exponents are config).
USER_ZIPF_OFFSET = 50.0
CAMPAIGN_ZIPF_OFFSET = 2.0
ADVERTISER_ZIPF_OFFSET = 1.0

GENDERS = ("f", "m", "u")
GENDER_P = (0.48, 0.44, 0.08)
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_P = (0.18, 0.28, 0.22, 0.15, 0.10, 0.07)
DEVICES = ("android", "ios", "web", "tablet")
DEVICE_P = (0.52, 0.33, 0.11, 0.04)
CREATIVE_TYPES = ("image", "video", "carousel", "text", "native")
CREATIVE_P = (0.42, 0.25, 0.15, 0.08, 0.10)
NUM_SEGMENTS = 40  # "s-<i>"
NUM_REGIONS = 100  # "r-<i>"
NUM_INTERESTS = 300  # "t-<i>"
NUM_CATEGORIES = 200  # "cat-<i>"
BRANDS_PER_ADVERTISER = 3  # "b-<i>", advertiser a owns b-3a .. b-3a+2
INTEREST_COUNT_P = (0.10, 0.20, 0.25, 0.20, 0.15, 0.10)  # 0..5 tags per user
AD_TAG_COUNT_P = (0.0, 0.40, 0.40, 0.20)  # 1..3 tags per ad
AD_TAG_WORDS = (
    "sale",
    "new",
    "free_shipping",
    "discount",
    "limited",
    "bestseller",
    "premium",
    "eco",
    "gift",
    "bundle",
    "clearance",
    "exclusive",
    "trending",
    "local",
    "organic",
    "handmade",
)
NUM_AD_TAGS = 500  # the words above, then "kw-<i>"


@dataclass(frozen=True)
class Scene:
    """A placement: its traffic share, its click effect (logits) and its bid multiplier."""

    name: str
    share: float
    click_effect: float
    bid_multiplier: float


SCENES = (
    Scene("feed", 0.45, 0.0, 1.0),
    Scene("search", 0.20, 0.7, 1.6),
    Scene("video", 0.12, -0.2, 1.3),
    Scene("banner", 0.10, -0.7, 0.6),
    Scene("push", 0.08, 0.3, 0.8),
    Scene("splash", 0.05, -1.0, 2.0),
)
PREFERENCE_DIM = 8  # dimension of the user-attribute embedding that campaigns have preferences over


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """An independent, reproducible stream for one purpose (``keys`` name the purpose)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=keys)))


def zipf_shares(n: int, exponent: float, offset: float, rng: np.random.Generator) -> np.ndarray:
    """Traffic share per id: Zipf-Mandelbrot over ranks, ranks randomly permuted over ids."""
    by_rank = (np.arange(1, n + 1, dtype=np.float64) + offset) ** -exponent
    shares = np.empty(n)
    shares[rng.permutation(n)] = by_rank / by_rank.sum()
    return shares


def cdf_of(weights: np.ndarray) -> np.ndarray:
    """Normalised cumulative weights for ``searchsorted`` sampling (last value exactly 1)."""
    cdf = np.cumsum(weights, dtype=np.float64)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def _multi_values(
    rng: np.random.Generator, count_p: tuple[float, ...], n: int, pool_p: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per entity, a set of 0..len(count_p)-1 distinct values drawn from ``pool_p`` (vectorised).

    Returns CSR-style ``(offsets, values)``: entity i has ``values[offsets[i]:offsets[i+1]]``.
    Works in blocks of ``2**20`` entities so memory stays small for huge populations.
    """
    width = len(count_p) + 3  # candidates per entity: enough to find the wanted distinct ones
    pool_cdf = cdf_of(pool_p)
    sizes, values = [], []
    for lo in range(0, n, 1 << 20):
        m = min(n, lo + (1 << 20)) - lo
        want = rng.choice(len(count_p), size=m, p=count_p)
        cand = np.searchsorted(pool_cdf, rng.random((m, width)), side="right")
        first = np.ones((m, width), dtype=bool)  # first occurrence of a value within its row
        for j in range(1, width):
            first[:, j] = ~(cand[:, :j] == cand[:, j : j + 1]).any(axis=1)
        keep = first & (np.cumsum(first, axis=1) <= want[:, None])
        sizes.append(keep.sum(axis=1))
        values.append(cand[keep].astype(np.int32))
    offsets = np.zeros(n + 1, dtype=np.int64)
    if n:
        np.cumsum(np.concatenate(sizes), out=offsets[1:])
    return offsets, np.concatenate(values) if values else np.zeros(0, np.int32)


@dataclass(frozen=True)
class Population:
    """All entity tables of one run (numpy arrays indexed by entity number)."""

    # users
    user_cdf: np.ndarray
    user_gender: np.ndarray
    user_age: np.ndarray
    user_segment: np.ndarray
    user_device: np.ndarray
    user_region: np.ndarray
    user_interest_offsets: np.ndarray
    user_interest_values: np.ndarray
    user_effect: np.ndarray  # latent click propensity (logits)
    user_conv_effect: np.ndarray  # latent conversion propensity (logits)
    user_hist_ctr: np.ndarray  # observed trailing CTR, a noisy view of user_effect
    user_pref: np.ndarray  # (users, PREFERENCE_DIM) embedding of the user's attributes
    # advertisers
    adv_conv_effect: np.ndarray
    adv_tracks_conversions: np.ndarray  # False: conversion is null (no pixel installed)
    # campaigns
    camp_advertiser: np.ndarray
    camp_share: np.ndarray  # traffic share once born
    camp_birth_ms: np.ndarray
    camp_cold: np.ndarray  # born inside the generated range
    camp_category: np.ndarray
    camp_brand: np.ndarray
    camp_bid: np.ndarray  # median bid
    camp_bias: np.ndarray  # click bias (logits)
    camp_pref: np.ndarray  # (campaigns, PREFERENCE_DIM) preference over user attributes
    camp_ad_offsets: np.ndarray  # ads of campaign c: camp_ad_offsets[c] .. [c+1]
    # ads
    ad_campaign: np.ndarray
    ad_creative: np.ndarray
    ad_tag_offsets: np.ndarray
    ad_tag_values: np.ndarray
    ad_item_price: np.ndarray
    ad_effect: np.ndarray
    ad_cdf: np.ndarray  # campaign c's ads occupy (c, c+1] of this cdf: ad = searchsorted(c + u)
    scene_cdf: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.user_gender)

    @property
    def num_campaigns(self) -> int:
        return len(self.camp_advertiser)

    @property
    def num_ads(self) -> int:
        return len(self.ad_campaign)

    @property
    def num_advertisers(self) -> int:
        return len(self.adv_conv_effect)


def build_population(config: GeneratorConfig) -> Population:
    """Draw every entity of the run from ``config.seed`` (independent of ``rows``)."""
    rng = rng_for(config.seed, 1)
    users = _users(config, rng)
    advertisers = _advertisers(config, rng)
    campaigns = _campaigns(config, rng, advertisers.pop("adv_category"))
    ads = _ads(config, rng, campaigns["camp_category"])
    scene_cdf = cdf_of(np.array([s.share for s in SCENES]))
    return Population(**users, **advertisers, **campaigns, **ads, scene_cdf=scene_cdf)


def _users(config: GeneratorConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Profile, interests, latent effects, and the embedding ``z_u`` of the attributes."""
    n = config.num_users
    gender = rng.choice(len(GENDERS), n, p=GENDER_P).astype(np.int8)
    age = rng.choice(len(AGE_BUCKETS), n, p=AGE_P).astype(np.int8)
    segment = rng.choice(NUM_SEGMENTS, n, p=zipf_shares(NUM_SEGMENTS, 0.8, 2, rng))
    region = rng.choice(NUM_REGIONS, n, p=zipf_shares(NUM_REGIONS, 1.0, 3, rng))
    offsets, interests = _multi_values(
        rng, INTEREST_COUNT_P, n, zipf_shares(NUM_INTERESTS, 1.0, 5, rng)
    )
    effect = rng.normal(0.0, 0.5, n)
    # Trailing CTR: Beta around the user's true propensity at the target CTR (concentration 40).
    mean = 1.0 / (1.0 + np.exp(-(np.log(config.ctr / (1 - config.ctr)) + effect)))

    # z_u: random embeddings of gender + age + 0.7 segment + mean of the interest tags, then
    # standardised per coordinate. Interest sums via a cumulative sum (users may have none).
    emb = [
        rng.normal(0.0, 1.0, (size, PREFERENCE_DIM))
        for size in (len(GENDERS), len(AGE_BUCKETS), NUM_SEGMENTS, NUM_INTERESTS)
    ]
    cumulative = np.zeros((len(interests) + 1, PREFERENCE_DIM))
    np.cumsum(emb[3][interests], axis=0, out=cumulative[1:])
    interest_mean = (cumulative[offsets[1:]] - cumulative[offsets[:-1]]) / np.maximum(
        np.diff(offsets), 1
    )[:, None]
    pref = emb[0][gender] + emb[1][age] + 0.7 * emb[2][segment] + interest_mean
    pref = (pref - pref.mean(axis=0)) / (pref.std(axis=0) + 1e-9)
    return {
        "user_cdf": cdf_of(zipf_shares(n, config.zipf_users, USER_ZIPF_OFFSET, rng)),
        "user_gender": gender,
        "user_age": age,
        "user_segment": segment.astype(np.int16),
        "user_device": rng.choice(len(DEVICES), n, p=DEVICE_P).astype(np.int8),
        "user_region": region.astype(np.int16),
        "user_interest_offsets": offsets,
        "user_interest_values": interests,
        "user_effect": effect,
        "user_conv_effect": 0.5 * effect + rng.normal(0.0, 0.3, n),
        "user_hist_ctr": np.round(rng.beta(40 * mean, 40 * (1 - mean)), 4),
        "user_pref": pref.astype(np.float32),
    }


def _advertisers(config: GeneratorConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A home category, a conversion effect, and whether conversions are reported (85 %)."""
    n = config.num_advertisers
    return {
        "adv_category": rng.choice(NUM_CATEGORIES, n, p=zipf_shares(NUM_CATEGORIES, 1.0, 5, rng)),
        "adv_conv_effect": rng.normal(0.0, 0.7, n),
        "adv_tracks_conversions": rng.random(n) >= 0.15,
    }


def _campaigns(
    config: GeneratorConfig, rng: np.random.Generator, adv_category: np.ndarray
) -> dict[str, np.ndarray]:
    """Owner (Zipf over advertisers), traffic share, birth, category/brand, bid and effects."""
    n, n_advs = config.num_campaigns, config.num_advertisers
    owner = rng.choice(
        n_advs, n, p=zipf_shares(n_advs, config.zipf_advertisers, ADVERTISER_ZIPF_OFFSET, rng)
    )
    share = zipf_shares(n, config.zipf_campaigns, CAMPAIGN_ZIPF_OFFSET, rng)
    n_cold = min(round(config.cold_start_fraction * n), n - 1)
    cold = np.zeros(n, dtype=bool)
    cold[rng.choice(n, n_cold, replace=False)] = True
    day_ms = 86_400_000
    birth = config.start_ms - rng.integers(day_ms, 90 * day_ms, n)  # warm: born 1-90 days before
    birth[cold] = rng.integers(config.start_ms, config.end_ms, n_cold)
    other_category = rng.integers(0, NUM_CATEGORIES, n)
    category = np.where(rng.random(n) < 0.8, adv_category[owner], other_category)
    brand = owner * BRANDS_PER_ADVERTISER + rng.integers(0, BRANDS_PER_ADVERTISER, n)
    # Preference = a part shared by campaigns of the same category + a campaign-specific part,
    # scaled so that w_c . z_u has std preference_strength (z_u has unit-variance coordinates).
    rho = 0.3
    category_pref = rng.normal(0.0, 1.0, (NUM_CATEGORIES, PREFERENCE_DIM))
    own_pref = rng.normal(0.0, 1.0, (n, PREFERENCE_DIM))
    pref = (rho * category_pref[category] + np.sqrt(1 - rho**2) * own_pref) * (
        config.preference_strength / np.sqrt(PREFERENCE_DIM)
    )
    return {
        "camp_advertiser": owner.astype(np.int32),
        "camp_share": share,
        "camp_birth_ms": birth,
        "camp_cold": cold,
        "camp_category": category.astype(np.int32),
        "camp_brand": brand.astype(np.int32),
        "camp_bid": np.exp(rng.normal(np.log(0.5), 0.7, n)),
        "camp_bias": rng.normal(0.0, config.campaign_bias_std, n),
        "camp_pref": pref.astype(np.float32),
    }


def _ads(
    config: GeneratorConfig, rng: np.random.Generator, camp_category: np.ndarray
) -> dict[str, np.ndarray]:
    """1 + Poisson(mean - 1) ads per campaign, Zipf traffic within the campaign, attributes."""
    n_camps, mean_ads = config.num_campaigns, config.ads_per_campaign
    n_ads = 1 + np.minimum(rng.poisson(mean_ads - 1, n_camps), int(4 * mean_ads) - 1)
    offsets = np.zeros(n_camps + 1, dtype=np.int64)
    np.cumsum(n_ads, out=offsets[1:])
    total = int(offsets[-1])
    campaign = np.repeat(np.arange(n_camps), n_ads).astype(np.int32)
    # Campaign c's ads split (c, c + 1] of one global cdf: ad = searchsorted(cdf, c + u).
    within = (np.arange(total) - offsets[campaign] + 1.0) ** -config.zipf_ads
    within_cum = np.cumsum(within)
    before = np.concatenate([[0.0], within_cum])[offsets[:-1]][campaign]
    ad_cdf = campaign + (within_cum - before) / np.add.reduceat(within, offsets[:-1])[campaign]
    ad_cdf[offsets[1:] - 1] = np.arange(1, n_camps + 1)  # exact block ends
    tag_off, tag_val = _multi_values(
        rng, AD_TAG_COUNT_P, total, zipf_shares(NUM_AD_TAGS, 0.9, 3, rng)
    )
    category_price = np.exp(rng.normal(3.0, 1.0, NUM_CATEGORIES))  # median item price per category
    price = category_price[camp_category[campaign]] * np.exp(rng.normal(0.0, 0.4, total))
    return {
        "camp_ad_offsets": offsets,
        "ad_campaign": campaign,
        "ad_creative": rng.choice(len(CREATIVE_TYPES), total, p=CREATIVE_P).astype(np.int8),
        "ad_tag_offsets": tag_off,
        "ad_tag_values": tag_val,
        "ad_item_price": np.maximum(np.round(price, 2), 0.01),
        "ad_effect": rng.normal(0.0, 0.3, total),
        "ad_cdf": ad_cdf,
    }
