"""Spark-side hashing (the ETL) equals the Python side (serving, trainer) bit for bit.

DESIGN.md §5 oracle 4. The Spark expressions are the ones the ETL uses (components/etl/encode.py,
splits.py); the Python functions are trainer/data/hashing.py and components/etl/splits.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.etl.config import DEFAULT_FEATURES, FeatureConfig
from components.etl.splits import task_bucket, task_split
from trainer.data import hashing

pytestmark = pytest.mark.spark

VALUES = [
    "", " ", "0", "-1", "c-42", "user_12345", "true", "null", "None",
    "12345678901234567890", "9223372036854775807", "-9223372036854775808", "1" * 400,
    "北京", "广告主-七", "東京都", "한국어", "😀", "👩‍💻", "🇫🇷", "e\u0301", "\u00e9", "a\u0308\u0304",
    "\u0000", "\x1f", "tab\there", "new\nline", "quote\"s", "back\\slash", "ÿ", "\ud7ff", "\U0010ffff",
    "mixed ascii 北京 😀 e\u0301", "x" * 5000, "abc", "abcd", "abcde", "abcdefg",
]  # fmt: skip
BUCKETS = (2, 7, 101, 50_021, 1_000_003, (1 << 31) - 1)


def _spark_ids(
    spark, cases: list[tuple[str, int]], values: list[str | None]
) -> dict[tuple[str, int], list[int]]:
    """The ETL's ids of ``values`` for each (feature, buckets) case, in one Spark job."""
    from pyspark.sql import functions as F

    from components.etl import encode

    df = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "i int, v string")
    ids = [encode.feature_id(f, F.col("v"), b).alias(f"id{n}") for n, (f, b) in enumerate(cases)]
    rows = sorted(df.select("i", *ids).collect(), key=lambda r: r["i"])
    return {case: [r[f"id{n}"] for r in rows] for n, case in enumerate(cases)}


def test_feature_ids_match(spark):
    values = [*VALUES, None]
    cases = [(f, b) for f in ("user_id", "campaign_id", "ad_tags", "hour_of_day") for b in BUCKETS]
    spark_ids = _spark_ids(spark, cases, values)
    for feature, buckets in cases:
        expected = [hashing.feature_id(feature, v, buckets) for v in values]
        assert spark_ids[feature, buckets] == expected, (feature, buckets)
    assert hashing.feature_id("user_id", None, 10) == 0


def test_signed_hash_task_id_and_unit_interval_match(spark):
    from pyspark.sql import functions as F

    from components.etl import encode

    df = spark.createDataFrame([(i, v) for i, v in enumerate(VALUES)], "i int, v string")
    rows = df.select(
        "i",
        encode.signed_hash("task", F.col("v")).alias("task_id"),
        encode.unit_interval("split", F.col("v")).alias("u"),
    ).collect()
    for r in rows:
        v = VALUES[r["i"]]
        assert r["task_id"] == hashing.signed_hash("task", v)
        assert r["u"] == hashing.unit_interval("split", v)
        assert 0.0 <= r["u"] < 1.0


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=50))
def test_hypothesis_strings_match(spark, values):
    assert _spark_ids(spark, [("user_interests", 10_007)], values)["user_interests", 10_007] == [
        hashing.feature_id("user_interests", v, 10_007) for v in values
    ]


def test_sample_encoding_matches_python(spark):
    """A whole sample: every default feature (multi-valued fields, hour_of_day), in slot order."""
    from components.etl import encode, rows

    samples = [
        {"_t": 1_793_509_953_120, "user_interests": ["北京", None, "", "t-4", "t-5", "t-6", "t-7"],
         "ad_tags": [], "user_id": "😀", "campaign_id": "12345678901234567890"},
        {"_t": 1_793_491_200_000, "user_interests": None, "ad_tags": ["sale", "new"], "user_id": None},
    ]  # fmt: skip
    types = {"user_interests": "array<string>", "ad_tags": "array<string>", "_t": "bigint",
             "bid_price": "double", "item_price": "double", "user_hist_ctr": "double",
             "click": "double", "conversion": "double"}  # fmt: skip
    schema = ", ".join(f"{c} {types.get(c, 'string')}" for c in rows.DATA_COLUMNS)
    df = spark.createDataFrame(
        [tuple(s.get(c) for c in rows.DATA_COLUMNS) for s in samples], schema
    )
    columns = rows.columns_of(df)
    got = [
        r["ids"]
        for r in df.select(encode.sparse_ids(DEFAULT_FEATURES, columns).alias("ids")).collect()
    ]
    for s, ids in zip(samples, got, strict=True):
        expected = []
        for f in DEFAULT_FEATURES:
            if f.source == "event_time":
                hour = (s["_t"] // 3_600_000) % 24
                expected.append(hashing.feature_id(f.name, str(hour), f.buckets))
            elif f.kind == "multi":
                expected += hashing.feature_ids(f.name, s.get(f.source), f.buckets, f.slots)
            else:
                expected.append(hashing.feature_id(f.name, s.get(f.source), f.buckets))
        assert ids == expected
        assert len(ids) == sum(f.slots for f in DEFAULT_FEATURES) == 22
    as_int = df.select(encode.sparse_ids(DEFAULT_FEATURES, columns, as_int=True).alias("x"))
    assert as_int.schema["x"].dataType.simpleString() == "array<int>"


def test_multi_slots_python_twin(spark):
    f = FeatureConfig("ad_tags", 5_003, kind="multi", slots=3)
    from pyspark.sql import functions as F

    from components.etl import encode

    lists = [[], ["a"], ["a", "b", "c", "d"], [None, "x"], None, ["😀", "e\u0301", ""]]
    df = spark.createDataFrame([(i, v) for i, v in enumerate(lists)], "i int, v array<string>")
    rows = df.select(
        "i", F.array(*encode.multi_ids(f.name, F.col("v"), f.buckets, f.slots)).alias("ids")
    ).collect()
    for r in rows:
        assert r["ids"] == hashing.feature_ids(f.name, lists[r["i"]], f.buckets, f.slots)


def test_bucket_and_split_twins(spark):
    from pyspark.sql import functions as F

    from components.etl import splits

    keys = [v for v in VALUES if v] + [f"c-{i}" for i in range(300)]
    df = spark.createDataFrame([(k, 1_000 * i) for i, k in enumerate(keys)], "k string, t bigint")
    rows = df.select(
        "k", "t",
        splits.assign_bucket(F.col("k"), 16).alias("b"),
        splits.assign_split(F.col("k"), F.col("t"), 0.3, 150_000).alias("s"),
    ).collect()  # fmt: skip
    for r in rows:
        assert r["b"] == task_bucket(r["k"], 16), r["k"]
        assert r["s"] == task_split(r["k"], r["t"], 0.3, 150_000)
    assert {r["s"] for r in rows} == {"train", "valid", "test_cold"}


def test_bucket_is_the_spark_partition(spark):
    """repartition(B, key) puts each key in partition pmod(hash(key), B): one bucket per Spark task."""
    from pyspark.sql import functions as F

    keys = [f"c-{i}" for i in range(500)] + ["北京", "😀"]
    df = spark.createDataFrame([(k,) for k in keys], "k string").repartition(16, "k")
    rows = df.select("k", F.spark_partition_id().alias("p")).collect()
    assert all(r["p"] == task_bucket(r["k"], 16) for r in rows)
