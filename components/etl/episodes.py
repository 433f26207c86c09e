"""Transform, part 4: cut each task's samples into episodes of K support + Q query samples.

Per task (its rows still valid after de-duplication), samples are ordered by ``(event_time,
event_id)`` and numbered ``r = 0 .. n-1``. Consecutive chunks of ``L = K + Q`` samples form
episodes: chunk ``c`` holds ``r`` in ``[c*L, c*L + m)``, ``m = min(L, n - c*L)``.

Support/query boundary. Nominally the first ``b = min(K, m - min_query)`` samples of a chunk are
support and the rest query: a full chunk splits K | Q, and a task's last, partial chunk gives its
query at least ``min_query`` samples when it can. *Support must be strictly older than query*, so
when event times tie across the boundary, the boundary moves:

- back to the START of the tied group when the group starts inside the chunk: support shrinks,
  the query is the next (at most Q) samples from there, and the chunk's newest samples that no
  longer fit are quarantined as ``episode_tie_overflow``;
- forward past the END of the tied group when the group covers the whole support: the group's
  samples on the query side are ``episode_tie_overflow`` (they can be neither).

Example, K=3, Q=2, times ``[1, 2, 5 | 5, 7]``: the boundary moves before the first 5: support
``[1, 2]`` (n_support=2), query ``[5, 5]``, and the ``7`` is ``episode_tie_overflow``. With
millisecond event times ties are rare; with second-granularity sources (MovieLens) they are not,
and the manifest's per-reason counts show what they cost.

An episode with fewer than ``min_support`` support or ``min_query`` query samples is not emitted;
its rows are quarantined as ``episode_too_small``. A task with fewer than ``min_support +
min_query`` valid rows is ``task_too_small``. Every row ends up in exactly one emitted episode or
in the quarantine with one reason.

How, in one pass over each task's rows: the frame arrives partitioned by task key (the job's one
row shuffle); each partition is sorted by ``(task, valid, event_time, event_id, read position)``
and streamed, as Arrow batches, through :func:`cut_partition` (a ``mapInPandas``). It cuts every
task of a batch at once with numpy array operations (no per-row, per-chunk or per-task Python
loop): the boundary from the runs of equal times, the fixed-size list columns from one gather
per column. The batch's last task may go on in the next batch: its full chunks are cut at once,
the rest waits (a full chunk, ``m = L``, is cut the same whatever the task's size: ``b = K``, and
a task that fills a chunk is never too small). Memory is one batch plus one chunk, however large
the task.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    import pyarrow as pa

TASK_TOO_SMALL = "task_too_small"
EPISODE_TOO_SMALL = "episode_too_small"
TIE_OVERFLOW = "episode_tie_overflow"
REJECT_GROUP = 1024
"""Rows that already failed are listed in groups of at most this many per output row."""

ORDER = ("_pk", "_ok", "_t", "event_id", "_uid")
"""Sort order of each partition: a task's rows together, rejected ones first, then valid ones in
time order (valid rows have unique event ids after de-duplication: the order is total)."""
INPUT = ("_pk", "_ok", "_t", "event_id", "_reason", "_raw", "_hour", "_file",
         "_sparse", "_dense", "_click", "_conversion")  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """How episodes are cut: ``k``/``q`` samples, the minimums, ids and dense values per sample."""

    k: int
    q: int
    min_support: int
    min_query: int
    sparse_width: int
    dense_width: int

    @property
    def length(self) -> int:
        return self.k + self.q


def number_rows(df, k: int, q: int):
    """Bring each task's rows into one partition, for frames not partitioned by task yet.

    The job's frame already is (``transform.partition_by_task``, its one row shuffle) and goes
    straight to :func:`build_episodes`; ``k`` and ``q`` are not needed (the cutting numbers the
    rows itself) and accepted for callers that pass the episode shape along.
    """
    del k, q
    return df.repartition("_pk")


def build_episodes(df, k: int, q: int, min_support: int, min_query: int, widths: tuple[int, int]):
    """Cut each task's rows into episodes and list every row no episode takes.

    Args:
        df: rows partitioned by ``_pk``, the task key (``transform.partition_by_task``, or
            :func:`number_rows`), with ``_t``, ``event_id``, ``_uid``, ``_reason`` (null = valid
            so far), the encoded payload ``_sparse`` (``array<int>``), ``_dense``, ``_click``,
            ``_conversion`` and the reject columns ``_hour``, ``_file``, ``_raw``.
        widths: ``(sparse_width, dense_width)``: ids and dense values per sample.

    Returns:
        :func:`output_schema`: one row per chunk of a task's valid rows (``_ok``) and per group of
        at most :data:`REJECT_GROUP` rejected rows: ``_c`` (the chunk: the episode index),
        ``n_support``/``n_query`` (0 when the chunk yields no episode), the contract's list
        columns (support, padding to K, query, padding to Q; see ``trainer/data/contract.py``),
        ``_first_query_t``, ``_task_rows`` (the task's valid rows, on the chunks cut once its
        end was seen) and ``_rejects`` (``array<struct<reason, event_id, hour, file, raw>>``;
        ``rows.source_file(hour, file)`` is the source file).
    """
    from pyspark.sql import functions as F

    shape = Shape(k, q, min_support, min_query, *widths)
    rows = df.withColumn("_ok", F.col("_reason").isNull()).sortWithinPartitions(*ORDER)
    return rows.select(*INPUT).mapInPandas(_cutter(shape), output_schema())


def _cutter(shape: Shape):
    """The ``mapInPandas`` function: :func:`cut_partition` between Arrow and Spark's frames.

    (``mapInPandas``, not ``mapInArrow``: the plan keeps ONE ``MapInArrow``, the JSONL parse,
    which ``tests/components/etl/test_plan.py`` checks; the frames cost one conversion each way.)
    """

    def cut(frames):
        import pyarrow as pa

        schema = input_schema()
        batches = (pa.RecordBatch.from_pandas(f, schema, preserve_index=False) for f in frames)
        for out in cut_partition(batches, shape):
            yield out.to_pandas()

    return cut


def cut_partition(batches: Iterator[pa.RecordBatch], shape: Shape) -> Iterator[pa.RecordBatch]:
    """A partition's rows (:data:`INPUT`, in :data:`ORDER`: each task's rows together) -> its
    :func:`output_schema` rows. Each batch is cut for all its tasks at once; the last task's
    rows that do not fill a chunk wait for the next batch (it may go on there).

    Raises:
        ValueError: a task's valid rows out of ``(event_time, event_id)`` order (two valid rows
            share an event id: not de-duplicated).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    carry: pa.Table | None = None  # the last task's valid rows not cut yet (>= 1 row)
    carry_chunks = carry_rows = 0  # that task's chunks cut before, and the rows they hold
    rejected = _Rejected()
    length = shape.length
    for batch in batches:
        ok = batch.column("_ok")
        if ok.true_count < batch.num_rows:  # (most batches hold valid rows only)
            yield _reject_rows(batch.filter(pc.invert(ok)), rejected)
            batch = batch.filter(ok)
        rows = pa.Table.from_batches([batch])
        if carry is not None:
            rows = pa.concat_tables([carry, rows])
        if rows.num_rows == 0:
            continue
        start = _task_starts(rows.column("_pk"))
        _check_order(rows, start)
        size = np.diff(np.append(start, rows.num_rows))
        before = np.zeros((2, start.size), np.int64)  # chunks and rows of each task cut before
        if carry is not None:
            before[:, 0] = carry_chunks, carry_rows
        total = before[1] + size
        # The last task may go on in the next batch: cut its full chunks but keep >= 1 row (its
        # last chunk needs its count); its total is unknown (-1) but no full chunk depends on it.
        full = (size[-1] - 1) // length
        keep = start[-1] + full * length
        size[-1], total[-1] = full * length, -1
        if keep:
            yield _cut_chunks(rows.slice(0, keep), start, size, before[0], total, shape)
        carry, carry_chunks, carry_rows = rows.slice(keep), before[0, -1] + full, before[1, -1]
        carry_rows += full * length
    if carry is not None:
        n = carry.num_rows
        yield _cut_chunks(
            carry, np.zeros(1, np.int64), np.full(1, n), np.full(1, carry_chunks),
            np.full(1, carry_rows + n), shape,
        )  # fmt: skip


def _task_starts(pk: pa.ChunkedArray) -> np.ndarray:
    """Row positions where a new task key begins (rows of a task are together)."""
    import numpy as np

    keys = pk.to_numpy(zero_copy_only=False)
    change = np.ones(keys.size, bool)
    change[1:] = keys[1:] != keys[:-1]
    return np.nonzero(change)[0]


def _check_order(rows: pa.Table, start: np.ndarray) -> None:
    """Each task's valid rows must come in strictly increasing ``(event_time, event_id)``."""
    import numpy as np
    import pyarrow.compute as pc

    t = rows.column("_t").to_numpy()
    same_task = np.ones(t.size, bool)
    same_task[start] = False
    step = np.diff(t)
    later = same_task[1:]
    ties = np.nonzero(later & (step == 0))[0]
    ids = rows.column("event_id")
    if (later & (step < 0)).any() or (
        ties.size and not pc.all(pc.greater(ids.take(ties + 1), ids.take(ties))).as_py()
    ):
        raise ValueError(
            "valid rows reached the episode cutting out of (event_time, event_id) order within "
            "a task: the rows must be de-duplicated on event_id first (dedup.mark_duplicates)"
        )


def _cut_chunks(
    rows: pa.Table, task_start, task_size, task_chunks, task_total, shape: Shape
) -> pa.RecordBatch:
    """Cut the tasks of ``rows`` (valid, in order) into consecutive chunks.

    Per task (numpy arrays): its first row, its rows, its chunks cut before (the index of its
    first chunk here) and its count of valid rows (-1: unknown, the task goes on after ``rows``;
    its chunks here are then full).
    """
    import numpy as np
    import pyarrow as pa

    n, length = rows.num_rows, shape.length
    t = rows.column("_t").to_numpy()
    per_task = -(-task_size // length)
    task = np.repeat(np.arange(task_size.size), per_task)  # each chunk's task
    nth = np.arange(task.size) - np.repeat(np.cumsum(per_task) - per_task, per_task)
    start = task_start[task] + nth * length
    m = np.minimum(length, task_start[task] + task_size[task] - start)
    total = task_total[task]
    b = np.minimum(shape.k, m - shape.min_query)
    # Runs of equal times within a chunk: the first nominal query sample's run starts at
    # `older` and ends before `not_newer` (positions in the chunk).
    chunk_of = np.repeat(np.arange(task.size), m)
    row = np.arange(n)
    new_run = np.ones(n, bool)
    new_run[1:] = (chunk_of[1:] != chunk_of[:-1]) | (t[1:] != t[:-1])
    run_start = np.maximum.accumulate(np.where(new_run, row, 0))
    run_end = np.minimum.accumulate(np.where(np.append(new_run[1:], True), row + 1, n)[::-1])[::-1]
    has_b = (b >= 0) & (b < m)
    at_b = start + np.clip(b, 0, m - 1)
    older, not_newer = run_start[at_b] - start, run_end[at_b] - start
    shift = has_b & (older > 0) & (older < b)  # the run starts inside the support: move back
    whole = has_b & (older == 0)  # the run covers the whole support: move past it
    n_s = np.where(shift, older, b)
    q_start = np.where(shift, older, np.where(whole, not_newer, b))
    n_q = np.maximum(0, np.minimum(shape.q, m - q_start))
    small = (total >= 0) & (total < shape.min_support + shape.min_query)
    emitted = (b >= 1) & (n_s >= shape.min_support) & (n_q >= shape.min_query) & ~small
    n_s, n_q, q_start = (np.where(emitted, x, 0) for x in (n_s, n_q, q_start))

    # Each emitted episode's rows: support, padding to K, query, padding to Q (padding: -1).
    j, jq = np.arange(length), np.arange(length) - shape.k
    base = start[emitted, None]
    query = (jq >= 0) & (jq < n_q[emitted, None])
    gather = np.where(
        j < n_s[emitted, None], base + j, np.where(query, base + q_start[emitted, None] + jq, -1)
    ).ravel()
    pad = gather < 0
    gather[pad] = 0
    absent = pa.array(~emitted)
    schema = arrow_schema()

    def padded(column: str, width: int | None, out: str) -> pa.ListArray:
        kind = schema.field(out).type
        if not emitted.any():  # (most tasks are too small for an episode)
            return pa.nulls(emitted.size, kind)
        values = _per_sample(rows.column(column), width)[gather]
        values[pad] = 0
        size = length * (1 if width is None else width)
        offsets = np.concatenate([[0], np.cumsum(np.where(emitted, size, 0))])
        values = pa.array(values.ravel().astype(kind.value_type.to_pandas_dtype()))
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, kind, mask=absent)

    # The rows no episode takes: all of a chunk that yields none, else its tie overflow.
    chunks = task.size
    pos = row - start[chunk_of]
    in_query = (pos >= q_start[chunk_of]) & (pos < q_start[chunk_of] + n_q[chunk_of])
    dropped = np.nonzero(~((pos < n_s[chunk_of]) | in_query))[0]
    why = np.where(emitted, 2, np.where(small, 0, 1)).astype(np.int8)
    reasons = pa.array([TASK_TOO_SMALL, EPISODE_TOO_SMALL, TIE_OVERFLOW]).take(
        pa.array(why[chunk_of[dropped]])
    )
    counts = np.bincount(chunk_of[dropped], minlength=chunks)
    rejects = _rejects(reasons, rows.take(dropped), raw=False)
    return pa.RecordBatch.from_arrays(
        [
            rows.column("_pk").take(start).combine_chunks(),
            pa.array(np.ones(chunks, bool)),
            pa.array((task_chunks[task] + nth).astype(np.int32)),
            pa.array(n_s.astype(np.int32)),
            pa.array(n_q.astype(np.int32)),
            pa.array(total, pa.int64(), mask=total < 0),
            pa.array(t[start + q_start], pa.int64(), mask=n_q == 0),
            padded("_sparse", shape.sparse_width, "sparse"),
            padded("_dense", shape.dense_width, "dense"),
            padded("_click", None, "click"),
            padded("_conversion", None, "conversion"),
            padded("_t", None, "event_time_ms"),
            pa.ListArray.from_arrays(_offsets(counts), rejects),
        ],
        schema=schema,
    )


class _Rejected:
    """The last task with rejected rows in a partition, and how many it had so far."""

    def __init__(self) -> None:
        self.task: object = _Rejected  # (no task: a task key may be null)
        self.rows = 0


def _reject_rows(rows: pa.RecordBatch, seen: _Rejected) -> pa.RecordBatch:
    """Rows that already failed, listed with their own reason and raw line: per task, in groups
    of at most :data:`REJECT_GROUP` (``_c``: the group's index in the task)."""
    import numpy as np
    import pyarrow as pa

    table = pa.Table.from_batches([rows])
    keys = table.column("_pk").to_numpy(zero_copy_only=False)
    first = _task_starts(table.column("_pk"))
    index = np.arange(keys.size)
    rank = index - np.maximum.accumulate(np.where(np.isin(index, first), index, 0))
    if seen.task is not _Rejected and keys[0] == seen.task:  # the task goes on from before
        rank[: first[1] if first.size > 1 else keys.size] += seen.rows
    seen.task, seen.rows = keys[-1], int(rank[-1]) + 1
    group = rank // REJECT_GROUP
    new = np.zeros(keys.size, bool)
    new[first] = True
    new[1:] |= group[1:] != group[:-1]
    starts = np.nonzero(new)[0]
    counts = np.diff(np.append(starts, keys.size))
    out = starts.size
    schema = arrow_schema()
    columns = {
        **{name: pa.nulls(out, schema.field(name).type) for name in schema.names},
        "_pk": table.column("_pk").take(starts).combine_chunks(),
        "_ok": pa.array(np.zeros(out, bool)),
        "_c": pa.array(group[starts].astype(np.int32)),
        "n_support": pa.array(np.zeros(out, np.int32)),
        "n_query": pa.array(np.zeros(out, np.int32)),
        "_rejects": pa.ListArray.from_arrays(
            _offsets(counts), _rejects(table.column("_reason").combine_chunks(), table, raw=True)
        ),
    }
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)


def _rejects(reasons: pa.Array, rows: pa.Table, raw: bool) -> pa.StructArray:
    """``struct<reason, event_id, hour, file, raw>`` per row (``raw`` null unless asked for)."""
    import pyarrow as pa

    def column(name: str) -> pa.Array:
        return rows.column(name).combine_chunks()

    return pa.StructArray.from_arrays(
        [reasons, column("event_id"), column("_hour"), column("_file"),
         column("_raw") if raw else pa.nulls(rows.num_rows, pa.string())],
        names=["reason", "event_id", "hour", "file", "raw"],
    )  # fmt: skip


def _offsets(counts: np.ndarray) -> pa.Array:
    import numpy as np
    import pyarrow as pa

    return pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())


def _per_sample(column: pa.ChunkedArray, width: int | None) -> np.ndarray:
    """A column as a ``(rows, width)`` numpy array (``width`` None: a scalar column, width 1).

    Raises:
        ValueError: a list does not hold exactly ``width`` values.
    """
    import numpy as np

    array = column.combine_chunks()
    if width is None:
        return array.to_numpy(zero_copy_only=False).reshape(-1, 1)
    if (np.diff(array.offsets.to_numpy()) != width).any():
        raise ValueError(f"{column.type} column: every sample must hold {width} values")
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width)


def output_schema():
    """The Spark schema of :func:`build_episodes`' rows (:func:`arrow_schema` as Spark types).

    ``n_query`` and the ``dense`` values are declared non-null, as the window-and-aggregate
    cutting this replaced produced them: the episode files' schema is unchanged.
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(arrow_schema())


@functools.cache
def input_schema() -> pa.Schema:
    """:data:`INPUT` as Arrow types (what ``transform.compact`` makes of the rows)."""
    import pyarrow as pa

    return pa.schema([
        ("_pk", pa.string()), ("_ok", pa.bool_()), ("_t", pa.int64()), ("event_id", pa.string()),
        ("_reason", pa.string()), ("_raw", pa.string()), ("_hour", pa.int32()),
        ("_file", pa.string()), ("_sparse", pa.list_(pa.int32())),
        ("_dense", pa.list_(pa.float32())), ("_click", pa.int8()), ("_conversion", pa.int8()),
    ])  # fmt: skip


@functools.cache
def arrow_schema() -> pa.Schema:
    """One row per chunk of a task's valid rows or per group of its rejected rows."""
    import pyarrow as pa

    reject = pa.struct([("reason", pa.string()), ("event_id", pa.string()),
                        ("hour", pa.int32()), ("file", pa.string()), ("raw", pa.string())])  # fmt: skip
    return pa.schema([
        ("_pk", pa.string()), ("_ok", pa.bool_()), ("_c", pa.int32()), ("n_support", pa.int32()),
        pa.field("n_query", pa.int32(), nullable=False), ("_task_rows", pa.int64()),
        ("_first_query_t", pa.int64()), ("sparse", pa.list_(pa.int64())),
        ("dense", pa.list_(pa.field("element", pa.float32(), nullable=False))),
        ("click", pa.list_(pa.int8())), ("conversion", pa.list_(pa.int8())),
        ("event_time_ms", pa.list_(pa.int64())), ("_rejects", pa.list_(reject)),
    ])  # fmt: skip
