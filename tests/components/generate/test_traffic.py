"""Traffic looks like production: heavy-tailed tasks, cold-start campaigns, consistent entities."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tests.components.generate.conftest import TRAFFIC
from tests.components.generate.stats import codes, share_of_top


def _counts(table: pa.Table, column: str, population: int) -> np.ndarray:
    _, code = codes(table.column(column))
    counts = np.bincount(code)
    return np.concatenate([counts, np.zeros(population - len(counts), dtype=counts.dtype)])


def test_task_sizes_are_heavy_tailed(traffic):
    rows, _, _ = traffic
    per_campaign = _counts(rows, "campaign_id", TRAFFIC["num_campaigns"])
    assert share_of_top(per_campaign, 0.01) > 0.3  # 20 of 2000 campaigns: a third of traffic
    assert np.median(per_campaign) < per_campaign.mean() / 3  # ... and the typical one is small
    assert per_campaign.max() > 50 * np.median(per_campaign[per_campaign > 0])
    per_advertiser = _counts(rows, "advertiser_id", TRAFFIC["num_advertisers"])
    assert share_of_top(per_advertiser, 0.05) > 0.3
    assert np.median(per_advertiser) < per_advertiser.mean() / 3
    per_user = _counts(rows, "user_id", TRAFFIC["num_users"])
    assert share_of_top(per_user, 0.01) > 0.15
    assert np.median(per_user) < per_user.mean() / 2


def test_truth_file_counts_match_the_rows(traffic):
    rows, campaigns, gen = traffic
    expected = dict(
        zip(campaigns["campaign_id"].to_pylist(), campaigns["clean_rows"].to_pylist(), strict=True)
    )
    names, counts = np.unique(
        rows["campaign_id"].to_numpy(zero_copy_only=False), return_counts=True
    )
    assert {n: expected[n] for n in names} == dict(zip(names, counts.tolist(), strict=True))
    assert sum(expected.values()) == rows.num_rows
    assert gen["population"]["campaigns_with_rows"] == len(names)


def test_cold_start_campaigns_appear_over_time_and_never_before_birth(traffic):
    rows, campaigns, gen = traffic
    birth = dict(
        zip(
            campaigns["campaign_id"].to_pylist(),
            campaigns["birth_time"].cast(pa.int64()).to_pylist(),
            strict=True,
        )
    )
    cold = set(np.array(campaigns["campaign_id"])[campaigns["cold_start"].to_numpy()])
    assert (
        len(cold)
        == round(0.2 * TRAFFIC["num_campaigns"])
        == gen["population"]["cold_start_campaigns"]
    )
    first = rows.group_by("campaign_id").aggregate([("event_time", "min")])
    start_ms = int(np.datetime64("2026-11-01T00:00:00", "ms").astype(np.int64))
    end_ms = start_ms + TRAFFIC["hours"] * 3_600_000
    seen_cold = 0
    for name, t in zip(
        first["campaign_id"].to_pylist(),
        first["event_time_min"].cast(pa.int64()).to_pylist(),
        strict=True,
    ):
        assert t >= birth[name], name
        if name in cold:
            seen_cold += 1
            assert start_ms <= birth[name] < end_ms
    assert seen_cold >= 30
    # New campaigns keep arriving: more cold campaigns are live in the last hours than the first.
    hour = (rows["event_time"].cast(pa.int64()).to_numpy() - start_ms) // 3_600_000
    camp = rows["campaign_id"].to_numpy(zero_copy_only=False)
    is_cold = np.isin(camp, list(cold))
    early = len(set(camp[is_cold & (hour < 4)]))
    late = len(set(camp[is_cold & (hour >= 20)]))
    assert late > 2 * max(early, 1)


def test_entities_keep_their_attributes(traffic):
    rows, _, _ = traffic
    rows = rows.append_column("interests", pc.binary_join(rows["user_interests"], ","))
    rows = rows.append_column("tags", pc.binary_join(rows["ad_tags"], ","))
    for key, attributes in (
        (
            "user_id",
            (
                "user_gender",
                "user_age_bucket",
                "user_segment",
                "device_type",
                "region",
                "interests",
                "user_hist_ctr",
            ),
        ),
        (
            "ad_id",
            (
                "campaign_id",
                "advertiser_id",
                "ad_category",
                "ad_brand",
                "creative_type",
                "tags",
                "item_price",
            ),
        ),
        ("campaign_id", ("advertiser_id",)),
    ):
        grouped = rows.group_by(key).aggregate([(a, "count_distinct") for a in attributes])
        for a in attributes:
            assert pc.max(grouped[f"{a}_count_distinct"]).as_py() == 1, (key, a)
    # Several ads per campaign and several campaigns per advertiser are actually used.
    per_campaign = rows.group_by("campaign_id").aggregate([("ad_id", "count_distinct")])
    assert pc.max(per_campaign["ad_id_count_distinct"]).as_py() >= 4
    per_advertiser = rows.group_by("advertiser_id").aggregate([("campaign_id", "count_distinct")])
    assert pc.max(per_advertiser["campaign_id_count_distinct"]).as_py() >= 10


def test_fields_have_realistic_ranges(traffic):
    rows, _, _ = traffic
    interests = pc.list_value_length(rows["user_interests"]).to_numpy()
    tags = pc.list_value_length(rows["ad_tags"]).to_numpy()
    assert interests.min() == 0 and interests.max() == 5
    assert tags.min() == 1 and tags.max() == 3
    bid, price, hist = (rows[c].to_numpy() for c in ("bid_price", "item_price", "user_hist_ctr"))
    assert (bid > 0).all() and (price > 0).all() and ((hist >= 0) & (hist <= 1)).all()
    # Lognormal: right-skewed with a spread of about an order of magnitude.
    for x in (bid, price):
        assert np.mean(x) > np.median(x)
        assert np.quantile(x, 0.95) / np.quantile(x, 0.05) > 5
    scenes, scene_code = codes(rows["scene_id"])
    assert set(scenes) == {"feed", "search", "video", "banner", "push", "splash"}
    share = np.bincount(scene_code) / rows.num_rows
    assert share[list(scenes).index("feed")] > 0.35
