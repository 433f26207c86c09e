"""EtlConfig validation and the feature spec (no Spark)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from components.etl.config import (
    DEFAULT_FEATURES,
    DenseConfig,
    EtlConfig,
    FeatureConfig,
    load_feature_spec,
    parse_duration,
    parse_hour,
)


def cfg(**over) -> EtlConfig:
    base = dict(input="in", output="out", start="2026-11-01T00", end="2026-11-02T00")
    base.update(over)
    return EtlConfig(**base)


def test_defaults_and_derived_values():
    c = cfg()
    assert c.start == datetime(2026, 11, 1, tzinfo=UTC) and c.end == datetime(
        2026, 11, 2, tzinfo=UTC
    )
    assert c.interval_id == "interval=20261101T00-20261102T00"
    assert len(c.hours) == 24
    assert c.warm_cutoff == datetime(2026, 11, 1, 21, 36, tzinfo=UTC)  # 90 % of the day
    assert c.sparse_width == 22 and [f.offset for f in c.feature_specs()][-2:] == [14, 19]
    assert [d.transform for d in c.dense_specs()] == ["log1p", "log1p", "identity"]
    d = c.describe()
    assert d["start"] == "2026-11-01T00:00:00Z" and d["max_lateness_s"] == 3600
    json.dumps(d)  # JSON-ready, for the manifest


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"start": "2026-11-01T00:30"}, "must be a whole UTC hour"),
        ({"end": "2026-11-01T00"}, "must be after --start"),
        ({"start": "yesterday"}, "not an ISO-8601 UTC hour"),
        ({"input_format": "csv"}, "--format must be one of"),
        ({"task_key": "shop"}, "unknown task key 'shop'"),
        ({"k_support": 0}, "k_support must be a positive integer"),
        ({"min_support": 40}, r"--min-support \(40\) cannot exceed K"),
        ({"min_query": 33}, r"--min-query \(33\) cannot exceed Q"),
        ({"num_buckets": 100_000}, "at most 99999"),
        ({"cold_fraction": 1.0}, r"cold_fraction must be in \[0, 1\)"),
        ({"valid_fraction": -0.1}, r"valid_fraction must be in \[0, 1\)"),
        ({"max_lateness": "-5"}, "is not a duration"),
        ({"row_group_bytes": 1000}, "at least 1 MiB"),
        ({"input": ""}, "both an input root"),
        ({"features": ()}, "no sparse features"),
        (
            {
                "features": (
                    FeatureConfig("a", 10, source="user_id"),
                    FeatureConfig("a", 10, source="ad_id"),
                )
            },
            "duplicate feature names",
        ),
    ],
)
def test_invalid_configs_say_what_to_do(over, message):
    with pytest.raises(ValueError, match=message):
        cfg(**over)


def test_hours_and_durations():
    assert parse_hour("2026-11-01T05") == datetime(2026, 11, 1, 5, tzinfo=UTC)
    assert parse_hour("2026-11-01T07:00:00+02:00") == datetime(2026, 11, 1, 5, tzinfo=UTC)
    assert parse_duration("90m") == timedelta(minutes=90) and parse_duration(30) == timedelta(
        seconds=30
    )
    assert cfg(max_lateness="2h").max_lateness == timedelta(hours=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x", "buckets": 10, "source": "nope"}, "is not a raw column"),
        ({"name": "x", "buckets": 1, "source": "user_id"}, r"buckets must be in \[2"),
        ({"name": "x", "buckets": 10, "source": "user_interests"}, "must have kind 'multi'"),
        (
            {"name": "x", "buckets": 10, "source": "user_id", "kind": "multi", "slots": 3},
            "must have kind 'categorical'",
        ),
        ({"name": "x", "buckets": 10, "source": "bid_price"}, r"dense columns go in \[\[dense\]\]"),
        ({"name": "x", "buckets": 10, "source": "user_id", "slots": 2}, "exactly 1 slot"),
        (
            {"name": "hour", "buckets": 29, "source": "event_time"},
            "only feeds the derived feature 'hour_of_day'",
        ),
        ({"name": "bad name", "buckets": 10, "source": "user_id"}, "must be an identifier"),
    ],
)
def test_invalid_features(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureConfig(**kwargs)


def test_dense_feature_validation():
    with pytest.raises(ValueError, match="not a dense raw column"):
        DenseConfig("user_id")
    with pytest.raises(ValueError, match="transform must be one of"):
        DenseConfig("bid_price", "sqrt")


def test_feature_spec_files(tmp_path):
    toml = tmp_path / "spec.toml"
    toml.write_text(
        '[[features]]\nname = "user_id"\nbuckets = 101\n'
        '[[features]]\nname = "ad_tags"\nbuckets = 11\nkind = "multi"\nslots = 2\n'
        '[[dense]]\nname = "bid_price"\ntransform = "log1p"\n'
    )
    features, dense = load_feature_spec(toml)
    assert [(f.name, f.buckets, f.slots) for f in features] == [
        ("user_id", 101, 1),
        ("ad_tags", 11, 2),
    ]
    assert dense == (DenseConfig("bid_price", "log1p"),)
    assert cfg(features=features, dense_features=dense).sparse_width == 3
    js = tmp_path / "spec.json"
    js.write_text(json.dumps({"features": [{"name": "scene_id", "buckets": 7}]}))
    assert load_feature_spec(js) == ((FeatureConfig("scene_id", 7),), ())
    bad = tmp_path / "bad.toml"
    bad.write_text('[[features]]\nname = "user_id"\nbucket = 10\n')
    with pytest.raises(ValueError, match=r"unknown config key\(s\) bucket in \[features\[0\]\]"):
        load_feature_spec(bad)
    with pytest.raises(ValueError, match=r"missing required config key.* features"):
        (tmp_path / "x.json").write_text("{}")
        load_feature_spec(tmp_path / "x.json")
    with pytest.raises(ValueError, match=r"feature spec .*missing\.toml: no such file"):
        load_feature_spec(tmp_path / "missing.toml")


def test_default_spec_is_the_documented_one():
    got = [(f.name, f.source, f.kind, f.buckets, f.slots) for f in DEFAULT_FEATURES]
    assert got[13] == ("hour_of_day", "event_time", "categorical", 29, 1)
    assert got[-2:] == [
        ("user_interests", "user_interests", "multi", 10_007, 5),
        ("ad_tags", "ad_tags", "multi", 5_003, 3),
    ]
    assert len(got) == 16
