"""Episode cutting on hand-made rows: chunks, padding, ties at the boundary, minimum sizes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.spark

W, D = 2, 1  # sparse ids and dense values per sample in these tests
SCHEMA = (
    "_pk string, event_id string, _t bigint, _reason string, _raw string, _hour int, _file string, "
    "_uid bigint, _sparse array<int>, _dense array<float>, _click tinyint, _conversion tinyint"
)


def sample(i: int) -> dict:
    """The payload of sample ``i`` (distinct values, so a misplaced sample shows)."""
    return {
        "sparse": [i, 100 + i],
        "dense": [i / 4],
        "click": i % 2,
        "conversion": -1 if i % 3 == 0 else 0,
    }


def rows_of(pk: str, times: list[int], first: int = 1, reason: str | None = None) -> list[tuple]:
    out = []
    for j, t in enumerate(times):
        i = first + j
        s = sample(i)
        ok = reason is None
        out.append((
            pk, f"e{i:03d}", t, reason, None if ok else f"line {i}", 498_192, "p.jsonl", i,
            s["sparse"] if ok else None, s["dense"] if ok else None,
            s["click"] if ok else None, s["conversion"] if ok else None,
        ))  # fmt: skip
    return out


def cut(spark, rows, k, q, min_support=1, min_query=1):
    from components.etl import episodes

    df = spark.createDataFrame(rows, SCHEMA)
    numbered = episodes.number_rows(df, k, q)
    return episodes.build_episodes(numbered, k, q, min_support, min_query, (W, D))


def expected_episode(pk, c, support: list[tuple[int, int]], query: list[tuple[int, int]], k, q):
    """Contract columns of an episode from ``(sample index, time)`` pairs, padded."""

    def lists(part, n):
        pad = n - len(part)
        sparse = [x for i, _ in part for x in sample(i)["sparse"]] + [0] * (pad * W)
        dense = [x for i, _ in part for x in sample(i)["dense"]] + [0.0] * (pad * D)
        click = [sample(i)["click"] for i, _ in part] + [0] * pad
        conv = [sample(i)["conversion"] for i, _ in part] + [0] * pad
        times = [t for _, t in part] + [0] * pad
        return sparse, dense, click, conv, times

    s, qq = lists(support, k), lists(query, q)
    return (pk, c, len(support), len(query), *(a + b for a, b in zip(s, qq, strict=True)))


COLUMNS = (
    "_pk",
    "_c",
    "n_support",
    "n_query",
    "sparse",
    "dense",
    "click",
    "conversion",
    "event_time_ms",
)
OUT_SCHEMA = (
    "_pk string, _c int, n_support int, n_query int, sparse array<bigint>, dense array<float>, "
    "click array<tinyint>, conversion array<tinyint>, event_time_ms array<bigint>"
)


def episodes_and_rejects(out):
    eps = out.where("n_support > 0").select(*COLUMNS)
    rejects = sorted(
        (r["reason"], r["event_id"])
        for row in out.select("_rejects").collect()
        for r in row["_rejects"]
    )
    return eps, rejects


def test_chunks_and_the_final_partial_chunk(spark):
    from pyspark.testing import assertDataFrameEqual

    times = [10, 20, 30, 40, 50, 60, 70]  # K=3, Q=2: [10 20 30 | 40 50], then [60 | 70] padded
    out = cut(spark, rows_of("t1", times), k=3, q=2)
    eps, rejects = episodes_and_rejects(out)
    s = list(zip(range(1, 8), times, strict=True))
    expected = [
        expected_episode("t1", 0, s[0:3], s[3:5], 3, 2),
        expected_episode("t1", 1, s[5:6], s[6:7], 3, 2),  # b = min(K, m - min_query) = 1
    ]
    assertDataFrameEqual(eps, spark.createDataFrame(expected, OUT_SCHEMA))
    assert rejects == []
    first = {r["_c"]: r["_first_query_t"] for r in out.collect()}
    assert first == {0: 40, 1: 70}


def test_large_task_many_episodes_and_a_too_small_tail(spark):
    times = list(range(100, 100 + 11))  # K=2, Q=2: chunks of 4, 4 and 3 rows
    out = cut(spark, rows_of("big", times), k=2, q=2, min_support=2, min_query=2)
    eps, rejects = episodes_and_rejects(out)
    # chunks of 4: [0..3] [4..7] [8..10]: the last has m=3, b=min(2, 3-2)=1 < min_support
    assert [(r["_c"], r["n_support"], r["n_query"]) for r in eps.orderBy("_c").collect()] == [
        (0, 2, 2),
        (1, 2, 2),
    ]
    assert rejects == [("episode_too_small", f"e{i:03d}") for i in (9, 10, 11)]


def test_tie_inside_the_support_moves_the_boundary_back(spark):
    from pyspark.testing import assertDataFrameEqual

    times = [1, 2, 5, 5, 7]  # the module docstring's example, K=3, Q=2
    out = cut(spark, rows_of("t", times), k=3, q=2)
    eps, rejects = episodes_and_rejects(out)
    s = list(zip(range(1, 6), times, strict=True))
    expected = [expected_episode("t", 0, s[0:2], s[2:4], 3, 2)]
    assertDataFrameEqual(eps, spark.createDataFrame(expected, OUT_SCHEMA))
    assert rejects == [("episode_tie_overflow", "e005")]


def test_tie_covering_the_support_moves_the_boundary_forward(spark):
    from pyspark.testing import assertDataFrameEqual

    times = [5, 5, 5, 8]  # K=2, Q=2: support [5 5], the third 5 cannot be query, query [8]
    out = cut(spark, rows_of("t", times), k=2, q=2)
    eps, rejects = episodes_and_rejects(out)
    s = list(zip(range(1, 5), times, strict=True))
    assertDataFrameEqual(
        eps, spark.createDataFrame([expected_episode("t", 0, s[0:2], s[3:4], 2, 2)], OUT_SCHEMA)
    )
    assert rejects == [("episode_tie_overflow", "e003")]


def test_support_is_always_strictly_older_than_query(spark):
    import random

    rng = random.Random(7)
    times = sorted(rng.choice(range(40)) for _ in range(200))  # many ties
    out = cut(spark, rows_of("t", times), k=5, q=4, min_support=1, min_query=1)
    kept = 0
    for r in out.where("n_support > 0").collect():
        ts = r["event_time_ms"]
        support, query = ts[: r["n_support"]], ts[5 : 5 + r["n_query"]]
        assert max(support) < min(query)
        assert ts[r["n_support"] : 5] == [0] * (5 - r["n_support"])
        kept += r["n_support"] + r["n_query"]
    dropped = sum(len(r["_rejects"]) for r in out.collect())
    assert kept + dropped == 200


def test_minimums_and_small_tasks(spark):
    rows = rows_of("small", [1, 2, 3]) + rows_of("tied", [1, 5, 5, 5], first=10)
    out = cut(spark, rows, k=2, q=2, min_support=2, min_query=2)
    eps, rejects = episodes_and_rejects(out)
    assert eps.count() == 0
    # "small" has 3 < min_support + min_query rows; "tied" moves its boundary back to 1 support row
    assert rejects == sorted(
        [("task_too_small", f"e{i:03d}") for i in (1, 2, 3)]
        + [("episode_too_small", f"e{i:03d}") for i in (10, 11, 12, 13)]
    )


def test_rows_that_already_failed_pass_through(spark):
    rows = rows_of("t", [1, 2, 3, 4]) + rows_of("t", [2, 3], first=50, reason="bad_type:click")
    rows += rows_of(None, [None], first=60, reason="malformed_record")
    out = cut(spark, rows, k=2, q=2)
    eps, rejects = episodes_and_rejects(out)
    assert eps.count() == 1
    assert rejects == [
        ("bad_type:click", "e050"),
        ("bad_type:click", "e051"),
        ("malformed_record", "e060"),
    ]
    raws = sorted(r["raw"] for row in out.select("_rejects").collect() for r in row["_rejects"])
    assert raws == ["line 50", "line 51", "line 60"]


def test_tasks_do_not_mix(spark):
    rows = rows_of("a", [1, 2, 3, 4], first=1) + rows_of("b", [1, 2, 3, 4], first=20)
    out = cut(spark, rows, k=2, q=2)
    got = {(r["_pk"], r["_c"]): r["event_time_ms"] for r in out.where("n_support > 0").collect()}
    assert got == {("a", 0): [1, 2, 3, 4], ("b", 0): [1, 2, 3, 4]}
    sparse = {r["_pk"]: r["sparse"] for r in out.collect()}
    assert sparse["b"][:2] == [20, 120]
