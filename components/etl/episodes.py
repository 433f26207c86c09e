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
and ``groupBy(task).applyInArrow`` streams each task's rows, in that order, as Arrow batches to
:func:`cut_task`. It cuts every full chunk as soon as its rows are in and the last chunk at the
task's end, with numpy array operations over all the chunks of a batch at once (no per-row or
per-chunk Python loop): the boundary from ``searchsorted`` on the sorted times, the fixed-size
list columns from one gather per column. Memory is one batch plus one chunk per task, however
large the task. A full chunk (``m = L``) is cut the same whatever the task's size (``b = K``, and
a task that fills a chunk is never too small), which is what lets it go before the task ends.
"""

from __future__ import annotations

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
        df: rows partitioned by ``_pk`` (the task key), with ``_t``, ``event_id``, ``_uid``,
            ``_reason`` (null = valid so far), the encoded payload ``_sparse`` (``array<int>``),
            ``_dense``, ``_click``, ``_conversion`` and the reject columns ``_hour``, ``_file``,
            ``_raw``.
        widths: ``(sparse_width, dense_width)``: ids and dense values per sample.

    Returns:
        :func:`output_schema`: one row per chunk of a task's valid rows (``_ok``) and per group of
        at most :data:`REJECT_GROUP` rejected rows: ``_c`` (the chunk: the episode index),
        ``n_support``/``n_query`` (0 when the chunk yields no episode), the contract's list
        columns (support, padding to K, query, padding to Q; see ``trainer/data/contract.py``),
        ``_first_query_t``, ``_task_rows`` (the task's valid rows, on its last chunk) and
        ``_rejects`` (``array<struct<reason, event_id, hour, file, raw>>``;
        ``rows.source_file(hour, file)`` is the source file).
    """
    from pyspark.sql import functions as F

    shape = Shape(k, q, min_support, min_query, *widths)
    rows = df.withColumn("_ok", F.col("_reason").isNull()).sortWithinPartitions(*ORDER)
    return rows.select(*INPUT).groupBy("_pk").applyInArrow(_cutter(shape), output_schema())


def _cutter(shape: Shape):
    """:func:`cut_task` for ``shape``, typed so that Spark streams each task's batches to it."""
    from collections.abc import Iterator

    import pyarrow as pa

    def cut(batches):
        return cut_task(batches, shape)

    cut.__annotations__ = {"batches": Iterator[pa.RecordBatch], "return": Iterator[pa.RecordBatch]}
    return cut


def cut_task(batches: Iterator[pa.RecordBatch], shape: Shape) -> Iterator[pa.RecordBatch]:
    """One task's rows (:data:`INPUT`, in :data:`ORDER`) -> its :func:`output_schema` rows.

    Raises:
        ValueError: valid rows out of ``(event_time, event_id)`` order (the frame was not
            partitioned by task, or two valid rows share an event id).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    pending: pa.Table | None = None  # valid rows of the chunk being filled (1 .. L rows)
    chunk = valid = rejected = 0
    length = shape.length
    for batch in batches:
        ok = batch.column("_ok")
        bad = batch.filter(pc.invert(ok))
        if bad.num_rows:
            yield _reject_rows(bad, rejected)
            rejected += bad.num_rows
        good = pa.Table.from_batches([batch.filter(ok)])
        if good.num_rows == 0:
            continue
        valid += good.num_rows
        pending = good if pending is None else pa.concat_tables([pending, good])
        _check_order(pending)
        full = (pending.num_rows - 1) // length  # keep >= 1 row: the last chunk needs the count
        if full:
            yield _cut_chunks(pending.slice(0, full * length), chunk, None, shape)
            chunk += full
            pending = pending.slice(full * length)
    if pending is not None:
        yield _cut_chunks(pending, chunk, valid, shape)


def _check_order(rows: pa.Table) -> None:
    """Valid rows must come in strictly increasing ``(event_time, event_id)`` order."""
    import numpy as np
    import pyarrow.compute as pc

    t = rows.column("_t").to_numpy()
    step = np.diff(t)
    ties = np.nonzero(step == 0)[0]
    ids = rows.column("event_id")
    if (step < 0).any() or (
        ties.size and not pc.all(pc.greater(ids.take(ties + 1), ids.take(ties))).as_py()
    ):
        pk = rows.column("_pk")[0].as_py()
        raise ValueError(
            f"task {pk!r}: its valid rows reached the episode cutting out of (event_time, "
            "event_id) order; the frame must be partitioned by task (episodes.number_rows) and "
            "de-duplicated on event_id first"
        )


def _cut_chunks(rows: pa.Table, first: int, task_rows: int | None, shape: Shape) -> pa.RecordBatch:
    """Cut consecutive chunks of ``rows`` (valid, in order), the first being chunk ``first``.

    ``task_rows`` is the task's count of valid rows when ``rows`` end the task; None when more
    rows follow (every chunk is then full).
    """
    import numpy as np
    import pyarrow as pa

    n, length = rows.num_rows, shape.length
    t = rows.column("_t").to_numpy()
    start = np.arange(0, n, length)
    m = np.minimum(length, n - start)
    b = np.minimum(shape.k, m - shape.min_query)
    # The first nominal query sample's tied group: it starts at `older` and ends before
    # `not_newer` (positions in the chunk; the times are sorted, so two binary searches).
    has_b = (b >= 0) & (b < m)
    t_b = t[start + np.clip(b, 0, m - 1)]
    older = np.maximum(np.searchsorted(t, t_b, "left"), start) - start
    not_newer = np.minimum(np.searchsorted(t, t_b, "right"), start + m) - start
    shift = has_b & (older > 0) & (older < b)  # the group starts inside the support: move back
    whole = has_b & (older == 0)  # the group covers the whole support: move past it
    n_s = np.where(shift, older, b)
    q_start = np.where(shift, older, np.where(whole, not_newer, b))
    n_q = np.maximum(0, np.minimum(shape.q, m - q_start))
    small = task_rows is not None and task_rows < shape.min_support + shape.min_query
    emitted = (b >= 1) & (n_s >= shape.min_support) & (n_q >= shape.min_query) & (not small)
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
        values = _per_sample(rows.column(column), width)[gather]
        values[pad] = 0
        size = length * (width or 1)
        offsets = np.concatenate([[0], np.cumsum(np.where(emitted, size, 0))])
        kind = schema.field(out).type
        values = pa.array(values.ravel().astype(kind.value_type.to_pandas_dtype()))
        return pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()), values, type=kind, mask=absent
        )

    # The rows no episode takes: all of a chunk that yields none, else its tie overflow.
    chunks = start.size
    chunk_of = np.repeat(np.arange(chunks), m)
    pos = np.arange(n) - start[chunk_of]
    in_query = (pos >= q_start[chunk_of]) & (pos < q_start[chunk_of] + n_q[chunk_of])
    dropped = np.nonzero(~((pos < n_s[chunk_of]) | in_query))[0]
    why = pa.array([TASK_TOO_SMALL if small else EPISODE_TOO_SMALL, TIE_OVERFLOW])
    reasons = why.take(pa.array(emitted[chunk_of[dropped]].astype(np.int8)))
    counts = np.bincount(chunk_of[dropped], minlength=chunks)
    rejects = _rejects(reasons, rows.take(dropped), raw=False)
    return pa.RecordBatch.from_arrays(
        [
            rows.column("_pk").take(np.zeros(chunks, np.int64)).combine_chunks(),
            pa.array(np.ones(chunks, bool)),
            pa.array(np.arange(first, first + chunks, dtype=np.int32)),
            pa.array(n_s.astype(np.int32)),
            pa.array(n_q.astype(np.int32)),
            pa.array(
                np.full(chunks, task_rows or 0), pa.int64(), mask=np.full(chunks, task_rows is None)
            ),
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


def _reject_rows(rows: pa.RecordBatch, first: int) -> pa.RecordBatch:
    """Rows that already failed, listed with their own reason and raw line in groups of at most
    :data:`REJECT_GROUP` (``_c``: the group's index; ``first``: rows of the task listed before)."""
    import numpy as np
    import pyarrow as pa

    group = (first + np.arange(rows.num_rows)) // REJECT_GROUP
    ids, counts = np.unique(group, return_counts=True)
    table = pa.Table.from_batches([rows])
    out = len(ids)
    none = np.ones(out, bool)
    schema = arrow_schema()
    nulls = {name: pa.nulls(out, schema.field(name).type) for name in schema.names}
    columns = {
        **nulls,
        "_pk": table.column("_pk").take(np.zeros(out, np.int64)).combine_chunks(),
        "_ok": pa.array(~none),
        "_c": pa.array(ids.astype(np.int32)),
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
    import pyarrow.compute as pc

    array = column.combine_chunks()
    if width is None:
        return array.to_numpy(zero_copy_only=False).reshape(-1, 1)
    sizes = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if (sizes != width).any():
        raise ValueError(f"{column.type} column: every sample must hold {width} values")
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width)


def output_schema():
    """The Spark schema of :func:`build_episodes`' rows (:func:`arrow_schema` as Spark types).

    ``n_query`` and the ``dense`` values are declared non-null, as the window-and-aggregate
    cutting this replaced produced them: the episode files' schema is unchanged.
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(arrow_schema())


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
