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

How: one window (partitioned by task key, so it reuses the task shuffle) numbers the rows; the
chunk aggregate collects each chunk (at most L samples) as one list of sample structs, in time
order, and compiled array functions (``array_position``, ``slice``, ``concat``,
``array_repeat``) place the boundary, build the fixed-size list columns (a full chunk's lists
are its episode as they are) and list the chunk's rejected rows. No UDF, no lambda, no per-task
Python loop, and no array longer than L, however large a task.
"""

from __future__ import annotations

TASK_TOO_SMALL = "task_too_small"
EPISODE_TOO_SMALL = "episode_too_small"
TIE_OVERFLOW = "episode_tie_overflow"
REJECT_GROUP = 1024
"""Rows that already failed are gathered in groups of this many per key (bounded aggregate rows)."""


def number_rows(df, k: int, q: int):
    """Number each task's valid rows in time order and give each row its chunk.

    Args:
        df: rows with ``_pk`` (task key), ``_t``, ``event_id``, ``_uid`` and ``_reason``
            (null = valid so far; valid rows have unique event ids, see dedup.py).

    Returns:
        ``df`` plus ``_ok`` (valid so far), ``_r`` (0-based rank in its task), ``_n`` (valid
        rows of the task) and ``_c`` (chunk: the episode index for valid rows; for rows that
        already failed, a group of ``REJECT_GROUP`` rows).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = df.withColumn("_ok", F.col("_reason").isNull())
    ordered = Window.partitionBy("_pk", "_ok").orderBy("_t", "event_id", "_uid")
    whole = ordered.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    r = F.row_number().over(ordered) - 1
    df = df.select("*", r.alias("_r"), F.count(F.lit(1)).over(whole).alias("_n"))
    size = F.when(F.col("_ok"), F.lit(k + q)).otherwise(F.lit(REJECT_GROUP))
    return df.withColumn("_c", F.floor(F.col("_r") / size).cast("int"))


def build_episodes(df, k: int, q: int, min_support: int, min_query: int, widths: tuple[int, int]):
    """Aggregate each chunk into one row: its episode (if any) and its rejected rows.

    Args:
        df: the output of :func:`number_rows`, with the encoded payload ``_sparse``
            (``array<int>``), ``_dense``, ``_click``, ``_conversion`` and the reject columns
            ``_reason``, ``event_id``, ``_hour``, ``_file``, ``_raw``.
        widths: ``(sparse_width, dense_width)``: ids and dense values per sample.

    Returns:
        One row per ``(_pk, _ok, _c)``: ``n_support``/``n_query`` (0 when the chunk yields no
        episode), the contract's list columns (support, padding to K, query, padding to Q; see
        ``trainer/data/contract.py``), ``_first_query_t``, ``_task_rows`` and ``_rejects``
        (``array<struct<reason, event_id, hour, file, raw>>``; ``rows.source_file(hour, file)``
        is the source file).
    """
    from pyspark.sql import functions as F

    ok = F.col("_ok")
    sample = F.struct(
        F.col("_r").alias("r"),  # first: the array sorts by it
        F.col("_t").alias("t"),
        F.col("_sparse").alias("sparse"),
        F.col("_dense").alias("dense"),
        F.col("_click").alias("click"),
        F.col("_conversion").alias("conversion"),
        F.col("event_id"),
        F.col("_hour").alias("hour"),
        F.col("_file").alias("file"),
    )
    reject = F.struct(
        F.col("_reason").alias("reason"),
        F.col("event_id"),
        F.col("_hour").alias("hour"),
        F.col("_file").alias("file"),
        F.col("_raw").alias("raw"),
    )
    # One list of sample structs per chunk. Rows reach the aggregate sorted by (chunk, r), so a
    # sort aggregate (spark.sql.execution.replaceHashWithSortAgg, set by the job) collects them in
    # time order already; sort_array by r makes the order exact whatever aggregate Spark picks,
    # and costs one comparison per sample on a sorted list.
    g = (
        df.sortWithinPartitions("_pk", "_ok", "_c", "_r")
        .groupBy("_pk", "_ok", "_c")
        .agg(
            F.sort_array(F.collect_list(F.when(ok, sample))).alias("_s"),
            F.collect_list(F.when(~ok, reject)).alias("_bad"),
            F.max("_n").alias("_task_rows"),
        )
    )
    s = F.col("_s")
    g = g.select("_pk", "_ok", "_c", "_s", "_bad", "_task_rows", s["t"].alias("_ts"))

    # The boundary, per chunk (module docstring). Offsets are 0-based positions in the chunk;
    # times are sorted, so "how many are older than t" is the first position of t. Computed in
    # steps (one select each) so that Spark evaluates each quantity once per chunk.
    ts = F.col("_ts")
    m = F.size(ts)
    b = F.least(F.lit(k), m - min_query)
    g = g.select("*", m.alias("_m"), b.alias("_b"))
    m, b = F.col("_m"), F.col("_b")
    t_b = F.when((b >= 0) & (b < m), F.element_at(ts, b + 1))  # first nominal query sample
    g = g.select(
        "*",
        (F.array_position(ts, t_b) - 1).cast("int").alias("_older"),  # strictly older than t_b
        (m - F.array_position(F.reverse(ts), t_b) + 1).cast("int").alias("_not_newer"),
    )
    older, not_newer = F.col("_older"), F.col("_not_newer")
    shift = (older > 0) & (older < b)  # the tied group starts inside the support: move back
    whole = older == 0  # the tied group covers the whole support: move past it
    n_s = F.when(shift, older).otherwise(b)
    q_start = F.when(shift, older).when(whole, not_newer).otherwise(b)
    g = g.select("*", n_s.alias("_ns"), q_start.alias("_qs"))
    n_s, q_start = F.col("_ns"), F.col("_qs")
    n_q = F.greatest(F.lit(0), F.least(F.lit(q), m - q_start))
    small_task = F.col("_task_rows") < min_support + min_query
    emitted = ok & ~small_task & (b >= 1) & (n_s >= min_support) & (n_q >= min_query)
    g = g.select(
        "*",
        F.when(emitted, n_s).otherwise(0).cast("int").alias("n_support"),
        F.when(emitted, n_q).otherwise(0).cast("int").alias("n_query"),
        F.when(emitted, q_start).otherwise(0).cast("int").alias("_q_start"),
    )
    n_s, n_q, q_start = F.col("n_support"), F.col("n_query"), F.col("_q_start")
    full = (n_s == k) & (n_q == q)  # then q_start = K and m = K + Q: the lists are the episode

    def padded(values, width: int, zero):
        """Support values, padding to K, query values, padding to Q (``width`` per sample)."""
        return F.when(
            n_s > 0,
            F.when(full, values).otherwise(
                F.concat(
                    F.slice(values, 1, n_s * width), F.array_repeat(zero, (F.lit(k) - n_s) * width),
                    F.slice(values, q_start * width + 1, n_q * width),
                    F.array_repeat(zero, (F.lit(q) - n_q) * width),
                )
            ),
        )  # fmt: skip

    # The chunk's samples that no episode takes (all of them, or the tie overflow), as reject
    # structs (zipped from their fields: no lambda); only built for chunks that drop samples.
    dropped = F.when(n_s == 0, s).otherwise(
        F.concat(
            F.slice(s, n_s + 1, q_start - n_s), F.slice(s, q_start + n_q + 1, m - q_start - n_q)
        )
    )
    why = (
        F.when(n_s > 0, F.lit(TIE_OVERFLOW))
        .when(small_task, F.lit(TASK_TOO_SMALL))
        .otherwise(F.lit(EPISODE_TOO_SMALL))
    )
    n_dropped = F.when(n_s == 0, m).otherwise(m - n_s - n_q)
    rejects = F.when(~ok | (n_dropped == 0), F.col("_bad")).otherwise(  # (a valid chunk: no _bad)
        F.arrays_zip(
            F.array_repeat(why, n_dropped).alias("reason"),
            dropped["event_id"].alias("event_id"),
            dropped["hour"].alias("hour"),
            dropped["file"].alias("file"),
            F.array_repeat(F.lit(None).cast("string"), n_dropped).alias("raw"),
        )
    )
    return g.select(
        "_pk", "_ok", "_c", "n_support", "n_query", "_task_rows",
        F.when(n_q > 0, F.element_at("_ts", q_start + 1)).alias("_first_query_t"),
        padded(F.flatten(s["sparse"]), widths[0], F.lit(0)).cast("array<bigint>").alias("sparse"),
        padded(F.flatten(s["dense"]), widths[1], F.lit(0.0).cast("float")).alias("dense"),
        padded(s["click"], 1, F.lit(0).cast("tinyint")).alias("click"),
        padded(s["conversion"], 1, F.lit(0).cast("tinyint")).alias("conversion"),
        padded(F.col("_ts"), 1, F.lit(0).cast("long")).alias("event_time_ms"),
        rejects.alias("_rejects"),
    )  # fmt: skip
