"""The episode stage (``episodes.number_rows`` + ``build_episodes``, through Spark) against a
plain-Python cutting of the same rows written from the rules in ``episodes``' docstring (the
oracle): random tasks with many ties, small tasks and rejected rows, in one frame, for several
episode shapes, and with no dense features. Every row is in one episode or rejected once."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

pytestmark = pytest.mark.spark

W, D = 2, 1  # sparse ids and dense values per sample
SCHEMA = (
    "_pk string, event_id string, _t bigint, _reason string, _raw string, _hour int, _file string, "
    "_uid bigint, _sparse array<int>, _dense array<float>, _click tinyint, _conversion tinyint"
)


@dataclass(frozen=True)
class Shape:
    k: int
    q: int
    min_support: int
    min_query: int
    dense_width: int = D


def make_rows(
    rng: random.Random, task: str, n_valid: int, n_bad: int, dense: int = D
) -> list[dict]:
    """A task's rows: valid ones with random (often tied) times, then rejected ones."""
    rows = []
    for i in range(n_valid + n_bad):
        ok = i < n_valid
        rows.append({
            "_pk": task, "_ok": ok, "_t": rng.randrange(30), "event_id": f"{task}-{i:04d}",
            "_reason": None if ok else "bad_value:price", "_raw": None if ok else f"line {i}",
            "_hour": 498_192, "_file": f"f{i % 3}.jsonl", "_uid": i,
            "_sparse": [i, 1000 + i] if ok else None, "_dense": [i / 8] * dense if ok else None,
            "_click": i % 2 if ok else None, "_conversion": (i % 3) - 1 if ok else None,
        })  # fmt: skip
    return sorted(rows, key=lambda r: (r["_ok"], r["_t"], r["event_id"]))


def tasks(rng: random.Random, count: int, dense: int = D) -> list[dict]:
    rows = []
    for i in range(count):
        n_valid, n_bad = rng.choice([0, 1, 3, 5, 9, 14, 31, 70]), rng.choice([0, 0, 2])
        rows += make_rows(rng, f"t{i:03d}", n_valid, n_bad, dense)
    return rows


def reference(rows: list[dict], s: Shape) -> tuple[list[tuple], list[tuple]]:
    """Plain-Python cutting: ``(task, chunk, n_support, n_query, first query time, sparse, dense,
    click, conversion, times)`` per episode and ``(reason, event_id, raw)`` per dropped row."""
    valid = [r for r in rows if r["_ok"]]
    rejects = [(r["_reason"], r["event_id"], r["_raw"]) for r in rows if not r["_ok"]]
    out = []
    length = s.k + s.q
    for c, lo in enumerate(range(0, len(valid), length)):
        chunk = valid[lo : lo + length]
        m = len(chunk)
        b = min(s.k, m - s.min_query)
        n_s = q_start = b
        if 0 <= b < m:
            older = sum(r["_t"] < chunk[b]["_t"] for r in chunk)
            if 0 < older < b:
                n_s = q_start = older
            elif older == 0:
                q_start = sum(r["_t"] <= chunk[b]["_t"] for r in chunk)
        n_q = max(0, min(s.q, m - q_start))
        big = len(valid) >= s.min_support + s.min_query
        if big and b >= 1 and n_s >= s.min_support and n_q >= s.min_query:
            support, query = chunk[:n_s], chunk[q_start : q_start + n_q]
            taken = {id(r) for r in support + query}
            rejects += [
                ("episode_tie_overflow", r["event_id"], None) for r in chunk if id(r) not in taken
            ]

            def padded(key, zero, support=support, query=query, first=chunk[0]):
                def values(r):
                    return r[key] if isinstance(r[key], list) else [r[key]]

                width = len(values(first))
                return (
                    [x for r in support for x in values(r)]
                    + [zero] * ((s.k - len(support)) * width)
                    + [x for r in query for x in values(r)]
                    + [zero] * ((s.q - len(query)) * width)
                )

            out.append((
                chunk[0]["_pk"], c, n_s, n_q, query[0]["_t"], padded("_sparse", 0),
                padded("_dense", 0.0), padded("_click", 0), padded("_conversion", 0),
                padded("_t", 0),
            ))  # fmt: skip
        else:
            why = "episode_too_small" if big else "task_too_small"
            rejects += [(why, r["event_id"], None) for r in chunk]
    return out, rejects


def reference_of(rows: list[dict], shape: Shape) -> tuple[list[tuple], list[tuple]]:
    eps, rejects = [], []
    for task in sorted({r["_pk"] for r in rows}):
        e, r = reference([x for x in rows if x["_pk"] == task], shape)
        eps += e
        rejects += r
    return sorted(eps, key=str), sorted(rejects, key=str)


def cut(spark, rows: list[dict], shape: Shape) -> tuple[list[tuple], list[tuple]]:
    """The Spark cutting of ``rows``, read back in the reference's form."""
    from components.etl import episodes

    columns = [c.split()[0] for c in SCHEMA.split(", ")]
    df = spark.createDataFrame([tuple(r[c] for c in columns) for r in rows], SCHEMA)
    numbered = episodes.number_rows(df, shape.k, shape.q)
    out = episodes.build_episodes(
        numbered, shape.k, shape.q, shape.min_support, shape.min_query, (W, shape.dense_width)
    )
    eps, rejects = [], []
    for r in out.collect():
        rejects += [(x["reason"], x["event_id"], x["raw"]) for x in r["_rejects"]]
        if r["n_support"]:
            eps.append((
                r["_pk"], r["_c"], r["n_support"], r["n_query"], r["_first_query_t"], r["sparse"],
                r["dense"], r["click"], r["conversion"], r["event_time_ms"],
            ))  # fmt: skip
        else:
            assert r["sparse"] is None and r["event_time_ms"] is None
    return sorted(eps, key=str), sorted(rejects, key=str)


SHAPES = [Shape(3, 2, 1, 1), Shape(4, 3, 2, 2), Shape(5, 4, 1, 3)]


@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: f"K{s.k}Q{s.q}m{s.min_support}{s.min_query}"
)
def test_cutting_equals_the_plain_python_cutting(spark, shape):
    rows = tasks(random.Random(shape.k * 100 + shape.q), 40)
    got = cut(spark, rows, shape)
    assert got == reference_of(rows, shape)
    assert any(e[2] < shape.k for e in got[0])  # some boundaries moved or tails were partial
    assert {r[0] for r in got[1]} >= {"task_too_small", "episode_tie_overflow", "bad_value:price"}
    kept = sum(e[2] + e[3] for e in got[0])
    assert kept + len(got[1]) == len(rows)  # every row accounted for once


def test_no_dense_features(spark):
    shape = Shape(3, 2, 1, 1, dense_width=0)
    rows = tasks(random.Random(11), 12, dense=0)
    got = cut(spark, rows, shape)
    assert got == reference_of(rows, shape)
    assert got[0] and all(e[6] == [] for e in got[0])
