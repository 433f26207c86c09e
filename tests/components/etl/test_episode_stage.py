"""The episode stage's one-pass cutting (``episodes.cut_partition``) against a plain-Python
cutting of the same rows, written from the rules in ``episodes``' docstring (the oracle), on
partitions of random tasks with many ties, small tasks and rejected rows, split into Arrow batches
in many ways (a task's rows across batches, several tasks in a batch)."""

from __future__ import annotations

import random

import pytest

from components.etl import episodes
from components.etl.episodes import Shape

W, D = 2, 1  # sparse ids and dense values per sample


def make_rows(rng: random.Random, task: str, n_valid: int, n_bad: int) -> list[dict]:
    """A task's rows in the cutting order (rejected first, then valid by (time, event id))."""
    rows = []
    for i in range(n_valid + n_bad):
        ok = i < n_valid
        rows.append({
            "_pk": task, "_ok": ok, "_t": rng.randrange(30), "event_id": f"{task}-{i:04d}",
            "_reason": None if ok else "bad_value:price", "_raw": None if ok else f"line {i}",
            "_hour": 498_192, "_file": f"f{i % 3}.jsonl",
            "_sparse": [i, 1000 + i] if ok else None, "_dense": [i / 8] if ok else None,
            "_click": i % 2 if ok else None, "_conversion": (i % 3) - 1 if ok else None,
        })  # fmt: skip
    return sorted(rows, key=lambda r: (r["_ok"], r["_t"], r["event_id"]))


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


def to_batches(rows: list[dict], sizes: list[int]):
    import pyarrow as pa

    types = {"_pk": pa.string(), "_ok": pa.bool_(), "_t": pa.int64(), "event_id": pa.string(),
             "_reason": pa.string(), "_raw": pa.string(), "_hour": pa.int32(),
             "_file": pa.string(), "_sparse": pa.list_(pa.int32()),
             "_dense": pa.list_(pa.float32()), "_click": pa.int8(), "_conversion": pa.int8()}  # fmt: skip
    schema = pa.schema(list(types.items()))
    assert tuple(schema.names) == episodes.INPUT
    table = pa.Table.from_pylist(rows, schema)
    at = 0
    for size in sizes:
        yield from table.slice(at, size).to_batches()
        at += size


def cut(rows: list[dict], shape: Shape, sizes: list[int]) -> tuple[list[tuple], list[tuple]]:
    """Run ``cut_partition`` and read its output back in the reference's form."""
    import pyarrow as pa

    out = pa.Table.from_batches(list(episodes.cut_partition(to_batches(rows, sizes), shape)))
    assert out.schema == episodes.arrow_schema()
    eps, rejects = [], []
    for r in out.to_pylist():
        rejects += [(x["reason"], x["event_id"], x["raw"]) for x in r["_rejects"]]
        if r["n_support"]:
            eps.append((
                r["_pk"], r["_c"], r["n_support"], r["n_query"], r["_first_query_t"], r["sparse"],
                r["dense"], r["click"], r["conversion"], r["event_time_ms"],
            ))  # fmt: skip
        else:
            assert r["sparse"] is r["event_time_ms"] is r["_first_query_t"] is None
    return sorted(eps, key=str), sorted(rejects, key=str)


def partition(rng: random.Random, tasks: int) -> list[dict]:
    """Rows of ``tasks`` random tasks, in the partition's order (task by task)."""
    rows = []
    for i in range(tasks):
        n_valid, n_bad = rng.choice([0, 1, 3, 5, 9, 14, 31]), rng.choice([0, 0, 2])
        rows += make_rows(rng, f"t{i:03d}", n_valid, n_bad)
    return rows


def reference_of(rows: list[dict], shape: Shape) -> tuple[list[tuple], list[tuple]]:
    eps, rejects = [], []
    for task in sorted({r["_pk"] for r in rows}):
        e, r = reference([x for x in rows if x["_pk"] == task], shape)
        eps += e
        rejects += r
    return sorted(eps, key=str), sorted(rejects, key=str)


def random_split(rng: random.Random, n: int) -> list[int]:
    cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randrange(4)))) if n > 1 else []
    return [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]


SHAPES = [Shape(3, 2, 1, 1, W, D), Shape(4, 3, 2, 2, W, D), Shape(2, 2, 2, 2, W, D),
          Shape(5, 4, 1, 3, W, D)]  # fmt: skip


@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: f"K{s.k}Q{s.q}m{s.min_support}{s.min_query}"
)
def test_cutting_equals_the_plain_python_cutting(shape):
    rng = random.Random(shape.k * 100 + shape.q)
    for case in range(40):
        rows = partition(rng, rng.randrange(1, 8))
        if not rows:
            continue
        want = reference_of(rows, shape)
        got = cut(rows, shape, random_split(rng, len(rows)))
        assert got == want, (case, [(r["_pk"], r["_t"]) for r in rows])
        kept = sum(e[2] + e[3] for e in got[0])
        assert kept + len(got[1]) == len(rows)  # every row accounted for once


def test_batch_boundaries_do_not_change_the_cut():
    rng = random.Random(3)
    shape = Shape(3, 2, 1, 1, W, D)
    rows = make_rows(rng, "a", 3, 2) + make_rows(rng, "big", 200, 5) + make_rows(rng, "z", 7, 0)
    n = len(rows)
    whole = cut(rows, shape, [n])
    for sizes in ([1] * n, [4, 1, n - 5], [6, n - 6], [7, 200, n - 207], random_split(rng, n)):
        assert cut(rows, shape, sizes) == whole


def test_the_task_row_count_is_known_at_its_end_and_rejects_are_grouped():
    import pyarrow as pa

    shape = Shape(2, 2, 1, 1, W, D)
    rows = make_rows(random.Random(5), "t", 9, episodes.REJECT_GROUP + 1)
    out = pa.Table.from_batches(list(episodes.cut_partition(to_batches(rows, [len(rows)]), shape)))
    valid = [r for r in out.to_pylist() if r["_ok"]]
    assert [r["_c"] for r in valid] == [0, 1, 2]
    assert [r["_task_rows"] for r in valid] == [None, None, 9]
    bad = [len(r["_rejects"]) for r in out.to_pylist() if not r["_ok"]]
    assert bad == [episodes.REJECT_GROUP, 1]


def test_no_dense_features():
    rng = random.Random(11)
    shape = Shape(3, 2, 1, 1, W, 0)
    rows = partition(rng, 6)
    for r in rows:
        r["_dense"] = [] if r["_ok"] else None
    eps, rejects = cut(rows, shape, random_split(rng, len(rows)))
    assert (eps, rejects) == reference_of(rows, shape)
    assert eps and all(e[6] == [] for e in eps)


def test_rows_out_of_order_are_an_error():
    rows = make_rows(random.Random(1), "t", 6, 0)
    rows[2], rows[4] = rows[4], rows[2]
    if rows[2]["_t"] == rows[4]["_t"] and rows[2]["event_id"] < rows[4]["event_id"]:
        rows[3], rows[4] = rows[4], rows[3]
    with pytest.raises(ValueError, match="out of \\(event_time, event_id\\) order"):
        cut(rows, Shape(2, 2, 1, 1, W, D), [6])
