"""Labels are realistic and depend on per-task effects (the reason meta learning can help)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tests.components.generate.stats import codes, ctr_dispersion, split_half_interaction


def test_ctr_and_cvr_are_realistic(traffic):
    rows, _, gen = traffic
    click = rows["click"].to_numpy()
    assert 0.01 <= click.mean() <= 0.05
    assert abs(click.mean() - 0.03) < 0.006  # calibrated to --ctr
    assert gen["labels"]["ctr"] == round(click.mean(), 6)
    conversion = rows["conversion"]
    known = conversion.is_valid().to_numpy()
    conv = conversion.fill_null(0).to_numpy()
    assert ((conv == 0) | (click == 1)).all()  # conversions only after clicks
    cvr = conv[known & (click == 1)].mean()
    assert 0.05 <= cvr <= 0.15 and abs(cvr - 0.10) < 0.03
    # Conversion is unknown per advertiser (no pixel), never for part of one advertiser's rows.
    by_adv = rows.append_column("known", pa.array(known)).group_by("advertiser_id")
    mixed = by_adv.aggregate([("known", "count_distinct")])
    assert pc.max(mixed["known_count_distinct"]).as_py() == 1
    assert 0.0 < (~known).mean() < 0.5


def test_scenes_have_their_own_click_rates(traffic):
    rows, _, _ = traffic
    scenes, code = codes(rows["scene_id"])
    click = rows["click"].to_numpy()
    rate = dict(zip(scenes, np.bincount(code, weights=click) / np.bincount(code), strict=True))
    assert rate["search"] > rate["feed"] > rate["splash"]


def _arrays(table: pa.Table):
    _, campaign = codes(table["campaign_id"])
    _, gender = codes(table["user_gender"])
    _, age = codes(table["user_age_bucket"])
    hour = table["event_time"].cast(pa.int64()).to_numpy() // 3_600_000
    return campaign, gender * 6 + age, hour % 2, table["click"].to_numpy().astype(float)


def test_campaign_ctrs_vary_far_beyond_binomial_noise(labelled, ablated):
    campaign, _, _, click = _arrays(labelled[0])
    with_effects = ctr_dispersion(campaign, click, min_rows=500)
    campaign, _, _, click = _arrays(ablated[0])
    without = ctr_dispersion(campaign, click, min_rows=500)
    assert with_effects > 10  # variance of campaign CTRs over pure binomial variance
    assert with_effects > 3 * without  # ... and it is the per-campaign effects that cause it


def test_campaigns_prefer_different_users(labelled, ablated):
    """The campaign x user-attribute interaction repeats across independent halves of the data."""
    with_pref = split_half_interaction(*_arrays(labelled[0]), min_rows=40)
    without = split_half_interaction(*_arrays(ablated[0]), min_rows=40)
    assert with_pref > 0.4, with_pref
    assert abs(without) < 0.2, without
