"""Spark-side derived columns that turn list-valued episodes and raw logs into flat, checkable frames.

GX checks scalar columns well and list columns poorly, so the episode suite validates a per-episode
*profile* computed here with Spark built-ins and higher-order functions (no Python UDFs, so it
scales with the data): list lengths, per-feature min/max sparse id, support/query time bounds,
label sanity, padding, and a per-task flag for tasks seen in both the cold and the warm splits.
A per-split *summary* (observed counts next to the manifest's, aggregated in the same pass)
feeds the count checks.

Positions inside a list column follow the contract (``trainer/data/contract.py``): sample ``j`` of
an episode occupies ``[j * width, (j + 1) * width)``; sample ``j`` is real when
``j < n_support`` or ``K <= j < K + n_query``, padding otherwise.

Example (K=2, Q=1, sparse width 2): ``sparse = [5, 9, 7, 0, 3, 9]``, ``n_support = 2``,
``n_query = 1`` gives ``support_max_time_ms = max(t0, t1)``, ``query_min_time_ms = t2``,
``min_id__f0 = 3``, ``max_id__f0 = 7`` for the feature in slot 0.
"""

from __future__ import annotations

from typing import Any

from trainer.data.contract import Manifest

# Per-sample list columns and their width source ("sparse" / "dense" / 1).
LIST_COLUMNS = ("sparse", "dense", "click", "conversion", "event_time_ms")
# Per-split counts compared with the manifest's ``splits`` entry.
SUMMARY_METRICS = (
    "episodes",
    "tasks",
    "samples",
    "support_samples",
    "query_samples",
    "clicks",
    "conversions",
)
# Columns whose values are null on no row; the suite expects each to be non-null.
NOT_NULL_COLUMNS = (
    "split",
    "task_key",
    "task_id",
    "episode",
    "n_support",
    "n_query",
    *(f"len_{c}" for c in LIST_COLUMNS),
)


def list_widths(manifest: Manifest) -> dict[str, int]:
    """Values per sample of each list column."""
    return {
        "sparse": manifest.sparse_width,
        "dense": manifest.dense_width,
        "click": 1,
        "conversion": 1,
        "event_time_ms": 1,
    }


def _parts(col: str, width: int, k: int, q: int) -> dict[str, str]:
    """SQL for the real-sample and padding elements of a list column, by position (no lambdas).

    ``slice`` lengths are clamped at 0 so that a defective ``n_support``/``n_query`` (negative, or
    larger than K/Q) yields a failed check, not a failed Spark job.
    """
    ns = f"least(greatest(n_support, 0), {k})"
    nq = f"least(greatest(n_query, 0), {q})"
    return {
        "support": f"slice(`{col}`, 1, {ns} * {width})",
        "query": f"slice(`{col}`, {k * width + 1}, {nq} * {width})",
        "padding": (
            f"concat(slice(`{col}`, {ns} * {width} + 1, ({k} - {ns}) * {width}), "
            f"slice(`{col}`, ({k} + {nq}) * {width} + 1, ({q} - {nq}) * {width}))"
        ),
    }


def _real(col: str, width: int, k: int, q: int) -> str:
    p = _parts(col, width, k, q)
    return f"concat({p['support']}, {p['query']})"


def _slot_ids(offset: int, slots: int, width: int, samples: int) -> str:
    """SQL: the ids of one feature in every sample (``slots`` per sample), one lambda per sample."""
    return (
        f"flatten(transform(sequence(0, {samples - 1}), "
        f"j -> slice(sparse, j * {width} + {offset + 1}, {slots})))"
    )


def episode_profile(episodes, manifest: Manifest):
    """One row per episode: the scalar facts the episode suite checks.

    Everything is positional slicing plus a few higher-order functions over at most K+Q elements
    per feature (Spark's lambdas run interpreted: filtering a whole ``sparse`` list once per
    feature cost ~5x more on 94k episodes).

    Args:
        episodes: a Spark DataFrame of episode rows with a ``split`` column (from ``split=`` dirs).
        manifest: the interval's manifest (K/Q, feature spec).

    Returns:
        A DataFrame with ``split, task_key, task_id, episode, n_support, n_query, n_samples,
        n_clicks, click_rate``, ``len_<list column>``, ``null_elements``, ``min_id__<feature>``,
        ``max_id__<feature>``, ``padding_nonzero``, ``click_invalid``, ``conversion_invalid``,
        ``dense_nonfinite``, ``support_max_time_ms``, ``query_min_time_ms``, ``min_time_ms``,
        ``max_time_ms``, ``expected_task_id`` and ``cold_and_warm``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    k, q, widths = manifest.k_support, manifest.q_query, list_widths(manifest)
    w_sparse = widths["sparse"]
    base = [
        "split",
        "task_key",
        "task_id",
        "episode",
        "n_support",
        "n_query",
        "n_support + n_query AS n_samples",
    ]
    # size() of a null list is -1 or null depending on settings: make it null so "not null" sees it.
    base += [f"CASE WHEN size(`{c}`) >= 0 THEN size(`{c}`) END AS len_{c}" for c in LIST_COLUMNS]
    base.append(
        " + ".join(f"(size(`{c}`) - size(array_compact(`{c}`)))" for c in LIST_COLUMNS)
        + " AS null_elements"
    )
    # Stage 1: per-feature id arrays (each used twice below; Spark does not inline them twice).
    ids = [
        f"{_slot_ids(f.offset, f.slots, w_sparse, k + q)} AS `ids__{f.name}`"
        for f in manifest.features
    ]
    padding = " + ".join(
        f"size(filter({_parts(c, widths[c], k, q)['padding']}, x -> x != 0))"
        for c in LIST_COLUMNS
        if widths[c] > 0
    )
    clicks, conversions = _real("click", 1, k, q), _real("conversion", 1, k, q)
    times = _parts("event_time_ms", 1, k, q)
    extra = [
        f"{padding} AS padding_nonzero",
        f"size(filter({clicks}, x -> x NOT IN (0, 1))) AS click_invalid",
        f"size(filter({conversions}, x -> x NOT IN (-1, 0, 1))) AS conversion_invalid",
        f"size(filter({clicks}, x -> x = 1)) AS n_clicks",
        f"size(filter({conversions}, x -> x = 1)) AS n_conversions",
        # Spark orders NaN above +inf, so the max/min of the list expose any non-finite value.
        "CAST(isnan(array_max(dense)) OR array_max(dense) = double('inf') "
        "OR array_min(dense) = double('-inf') AS INT) AS dense_nonfinite",
        f"array_max({times['support']}) AS support_max_time_ms",
        f"array_min({times['query']}) AS query_min_time_ms",
        f"array_min({_real('event_time_ms', 1, k, q)}) AS min_time_ms",
        f"array_max({_real('event_time_ms', 1, k, q)}) AS max_time_ms",
        # signed_hash("task", key) of trainer/data/hashing.py: Spark's xxhash64 is XXH64 seed 42.
        "xxhash64(concat('task\x1f', task_key)) AS expected_task_id",
    ]
    staged = episodes.selectExpr(*base, *ids, *extra)
    cols = [c for c in staged.columns if not c.startswith("ids__")]
    for f in manifest.features:
        cols += [
            F.array_min(f"ids__{f.name}").alias(f"min_id__{f.name}"),
            F.array_max(f"ids__{f.name}").alias(f"max_id__{f.name}"),
        ]
    prof = staged.select(*cols, (F.col("n_clicks") / F.col("n_samples")).alias("click_rate"))
    # A task must live in the cold splits or in train/valid, never in both (cold start must stay
    # cold).
    by_task = Window.partitionBy("task_key")
    cold = F.col("split").isin("test_cold", "valid_cold").cast("int")
    return prof.withColumn("cold_and_warm", F.max(cold).over(by_task) != F.min(cold).over(by_task))


def split_summary(splits: list[str]) -> dict[str, Any]:
    """Aggregate Columns over the profile, by name: the interval-wide facts ``<split>__<metric>``
    for each split and metric, and ``click_rate`` (clicks / samples over every real sample of the
    interval); computed in the episode suite's own pass (``runner.run_with_aggregates``).

    Metrics (``SUMMARY_METRICS``, as the ETL's manifest counts them): ``episodes``, ``tasks``
    (distinct task keys), real ``samples`` = ``support_samples`` + ``query_samples``, ``clicks``
    and ``conversions`` (labels equal to 1); a split with no episodes gets 0.
    """
    from pyspark.sql import functions as F

    summed = {
        "samples": "n_samples",
        "support_samples": "n_support",
        "query_samples": "n_query",
        "clicks": "n_clicks",
        "conversions": "n_conversions",
    }
    cols = {}
    for s in splits:
        here = F.col("split") == s
        cols[f"{s}__episodes"] = F.coalesce(F.sum(F.when(here, 1)), F.lit(0))
        cols[f"{s}__tasks"] = F.countDistinct(F.when(here, F.col("task_key")))
        for m, c in summed.items():
            cols[f"{s}__{m}"] = F.coalesce(F.sum(F.when(here, F.col(c))), F.lit(0))
    cols["click_rate"] = F.sum("n_clicks") / F.sum("n_samples")
    return cols


def raw_profile(raw):
    """Typed raw columns the raw suite checks, from a frame read by ``sources.read_raw``.

    Ids and labels keep their names (labels as ints, ``event_time`` as a timestamp, dense fields
    as doubles, via ``try_cast`` so a wrong type becomes null instead of failing the job);
    ``<field>__parses`` is false where a value is present but of the wrong type; ``malformed`` is
    true for a line that is not a JSON object; ``click_label`` is ``click`` where it is 0/1 (the
    CTR is measured on valid labels only).
    """
    from pyspark.sql import functions as F

    from components.raw_schema import fields_of

    typed = {"time": "timestamp", "dense": "double", "label": "int"}
    cols = [F.col("_corrupt_record").isNotNull().alias("malformed")]
    for f in fields_of("id"):
        cols.append(F.col(f.name).cast("string").alias(f.name))
    for f in fields_of("time", "dense", "label"):
        value = F.col(f.name).try_cast(typed[f.kind])
        cols.append(value.alias(f.name))
        cols.append((F.col(f.name).isNull() | value.isNotNull()).alias(f"{f.name}__parses"))
    df = raw.select(*cols)
    return df.withColumn(
        "click_label", F.when(F.col("click").isin(0, 1), F.col("click").cast("double"))
    )
