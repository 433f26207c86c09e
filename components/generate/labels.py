"""The generative model of clicks and conversions: why adapting to a task helps.

Each impression ``i`` shows ad ``a`` (of campaign ``c``, advertiser ``v``) to user ``u`` in scene
``s`` at hour-of-day ``h`` with bid ``b``; its click probability is ``sigmoid(logit)`` with::

    logit_click = b0                                  global bias, calibrated to the target CTR
                + scene_effect[s]                     placement base rate (search +0.7, splash -1.0...)
                + user_effect[u]                      ~ N(0, 0.5): some users click more
                + ad_effect[a]                        ~ N(0, 0.3): some creatives work better
                + campaign_bias[c]                    ~ N(0, campaign_bias_std = 0.6)
                + w_c . z_u                           the per-task preference (below)
                + 0.2 * (log b - log 0.5)             higher bids win better slots
                - 0.15 * (log item_price[a] - 3)      dearer items are clicked less
                + 0.15 * cos(2 pi (h - 21) / 24)      evenings click more

``z_u`` (8 dims, unit variance per coordinate) embeds the user's attributes: the sum of random
embeddings of their gender, age bucket, segment (x0.7) and the mean embedding of their interest
tags. ``w_c = (0.3 * W[category_c] + 0.95 * e_c) * preference_strength / sqrt(8)`` is the
campaign's own random weight vector over those attributes (``e_c`` ~ N(0, I) is private to the
campaign; ``W`` is shared by campaigns of one category), so ``w_c . z_u`` has standard deviation
``preference_strength`` (0.9 logits by default): the same user clicks differently on different
campaigns. A model that sees only ids and attributes cannot know ``w_c`` for a campaign it has
never seen; a few support samples of that campaign reveal it. That is the signal that separates
meta learning from plain training; ``preference_strength = 0`` and ``campaign_bias_std = 0`` turn
it off (an ablation in which adaptation should not help).

Conversions happen only after a click, with probability ``sigmoid(logit_conv)``::

    logit_conv = b1                                   calibrated to the target CVR given click
               + advertiser_conv_effect[v]            ~ N(0, 0.7): per-advertiser landing pages
               + user_conv_effect[u]                  0.5 * user_effect + N(0, 0.3)
               + 0.5 * w_c . z_u                      users who like the campaign also buy more
               - 0.3 * (log item_price[a] - 3)        dear items convert less

Advertisers without a conversion pixel (15 %) report ``conversion = null`` on all their events.
Observed features are noisy views of the latent effects: ``user_hist_ctr`` ~ Beta(40 m, 40 (1-m))
with ``m = sigmoid(logit(ctr) + user_effect[u])``; the profile and ad attributes are exact.

Calibration: ``b0`` and ``b1`` are solved (bisection on float64) on a fixed sample of the traffic
mix drawn from the seed, so the realised CTR and CVR land near the targets whatever the config;
cold-start births and the diurnal curve shift them slightly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.generate.population import SCENES, Population

_SCENE_EFFECT = np.array([s.click_effect for s in SCENES])
_BID_REF = np.log(0.5)
_PRICE_REF = 3.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def preference(pop: Population, user: np.ndarray, campaign: np.ndarray) -> np.ndarray:
    """``w_c . z_u`` per impression (the campaign x user-attribute interaction)."""
    return np.einsum("ij,ij->i", pop.user_pref[user], pop.camp_pref[campaign], dtype=np.float64)


def click_logit(
    pop: Population,
    user: np.ndarray,
    ad: np.ndarray,
    scene: np.ndarray,
    bid: np.ndarray,
    time_ms: np.ndarray,
    pref: np.ndarray,
) -> np.ndarray:
    """The click logit without the global bias ``b0``."""
    campaign = pop.ad_campaign[ad]
    hour = (time_ms // 3_600_000) % 24
    return (
        _SCENE_EFFECT[scene]
        + pop.user_effect[user]
        + pop.ad_effect[ad]
        + pop.camp_bias[campaign]
        + pref
        + 0.2 * (np.log(bid) - _BID_REF)
        - 0.15 * (np.log(pop.ad_item_price[ad]) - _PRICE_REF)
        + 0.15 * np.cos(2 * np.pi * (hour - 21) / 24)
    )


def conversion_logit(pop: Population, user: np.ndarray, ad: np.ndarray, pref: np.ndarray):
    """The conversion-given-click logit without the global bias ``b1``."""
    advertiser = pop.camp_advertiser[pop.ad_campaign[ad]]
    return (
        pop.adv_conv_effect[advertiser]
        + pop.user_conv_effect[user]
        + 0.5 * pref
        - 0.3 * (np.log(pop.ad_item_price[ad]) - _PRICE_REF)
    )


def _solve_bias(x: np.ndarray, weight: np.ndarray, target: float) -> float:
    """The ``b`` with ``sum(weight * sigmoid(b + x)) / sum(weight) == target`` (bisection)."""
    low, high = -30.0, 30.0
    total = weight.sum()
    for _ in range(80):
        mid = 0.5 * (low + high)
        if (weight * _sigmoid(mid + x)).sum() / total < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


@dataclass(frozen=True)
class LabelModel:
    """The two calibrated global biases; everything else lives on the :class:`Population`."""

    click_bias: float
    conversion_bias: float


def calibrate(
    pop: Population,
    ctr: float,
    cvr: float,
    user: np.ndarray,
    ad: np.ndarray,
    scene: np.ndarray,
    bid: np.ndarray,
    time_ms: np.ndarray,
) -> LabelModel:
    """Solve ``b0``/``b1`` so a sample of the traffic mix has mean CTR ``ctr`` and CVR ``cvr``."""
    pref = preference(pop, user, pop.ad_campaign[ad])
    x = click_logit(pop, user, ad, scene, bid, time_ms, pref)
    b0 = _solve_bias(x, np.ones_like(x), ctr)
    tracked = pop.adv_tracks_conversions[pop.camp_advertiser[pop.ad_campaign[ad]]]
    weight = _sigmoid(b0 + x) * tracked  # conversions are measured on clicks of tracked advertisers
    if weight.sum() == 0:  # no advertiser tracks conversions in this population
        return LabelModel(b0, float(np.log(cvr / (1 - cvr))))
    b1 = _solve_bias(conversion_logit(pop, user, ad, pref), weight, cvr)
    return LabelModel(b0, b1)


def draw_labels(
    model: LabelModel,
    pop: Population,
    rng: np.random.Generator,
    user: np.ndarray,
    ad: np.ndarray,
    scene: np.ndarray,
    bid: np.ndarray,
    time_ms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``(click, conversion, conversion_known)``; conversion is 0 wherever click is 0."""
    pref = preference(pop, user, pop.ad_campaign[ad])
    p_click = _sigmoid(model.click_bias + click_logit(pop, user, ad, scene, bid, time_ms, pref))
    p_conv = _sigmoid(model.conversion_bias + conversion_logit(pop, user, ad, pref))
    u_click, u_conv = rng.random(len(user)), rng.random(len(user))
    click = u_click < p_click
    conversion = click & (u_conv < p_conv)
    known = pop.adv_tracks_conversions[pop.camp_advertiser[pop.ad_campaign[ad]]]
    return click.astype(np.int8), conversion.astype(np.int8), known
