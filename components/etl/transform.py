"""Transform: raw rows -> one frame holding every episode and every quarantined row.

The plan, and why (measured with ``bench/etl_throughput.py``, whose JSON has per-stage times):

1. parse + validate (``rows.py``: JSONL by the shared Python parser ``raw_records`` inside
   ``mapInArrow``, one task per file; Parquet by Spark expressions) and encode (``encode.py``):
   narrow, compiled Spark expressions. A row that fails keeps flowing with its reason (``_reason``), so accounting
   never loses it; valid rows are reduced to what the rest needs (``compact``: ~120 bytes);
2. ONE full-row shuffle: ``repartition(num_buckets, task_key)``. Spark's hash partitioning puts
   task key ``k`` in partition ``pmod(hash(k), B)`` (Murmur3, seed 42) — exactly the bucket we
   write, so each Spark partition is one bucket and each (split, bucket) folder gets one file;
3. de-duplication (``dedup.py``): two narrow aggregates over the same exchange (Spark reuses
   it: the input is read once), filtered to repeated ids and broadcast back — no second row
   shuffle;
4. episode cutting (``episodes.py``): a window partitioned by task key reuses the partitioning
   of step 2 (no exchange) and numbers each task's rows in time order; the chunk aggregate then
   reads rows re-sorted by chunk (a cheap sort of ordered rows) and builds the fixed-size list
   columns with compiled array functions (no lambdas);
5. split and bucket (``splits.py``) are pure expressions of the task key and the episode's first
   query time.

The result has one row per chunk: the episode's contract columns (``n_support = 0`` when the
chunk yields no episode) and ``_rejects``, the chunk's quarantined rows. Both outputs are
projections of it, so the job caches it once and writes episodes and quarantine from the cache.

Where the time goes (200k Parquet rows, 2 cores): parse+validate+encode ~40 %, the two
de-duplication aggregates ~10 %, numbering + chunk aggregate ~30 %, Parquet writes ~20 %.
"""

from __future__ import annotations

from components.etl import dedup, encode, episodes, rows, splits
from components.etl.config import EtlConfig, epoch_ms
from trainer.data.contract import EPISODE_COLUMNS
from trainer.data.hashing import HASH_CONTRACT, HASH_SEED, UNIT_BITS

OBSERVED = ("rows_read", "blank_lines")
COMPACT_COLUMNS = ("_pk", "event_id", "_t", "_h", "_reason", "_raw", "_hour", "_file", "_uid",
                   "_sparse", "_dense", "_click", "_conversion")  # fmt: skip
"""The rows that get shuffled, in order (:func:`compact`)."""


def hash_contract(num_buckets: int) -> dict:
    """The manifest's ``hash`` entry: :data:`~trainer.data.hashing.HASH_CONTRACT` plus how the ETL
    derives task ids, splits and buckets, written from the constants its expressions use."""
    unit = f"pmod(signed_hash({splits.SPLIT_SALT!r}, task_key), 2^{UNIT_BITS}) / 2^{UNIT_BITS}"
    return {
        **HASH_CONTRACT,
        "task_id": f"signed_hash({encode.TASK_SALT!r}, task_key)",
        "split": f"test_cold if {unit} < cold_fraction",
        # Spark's hash() is Murmur3 with seed 42, the seed of its xxhash64 too
        "bucket": f"pmod(murmur3_x86_32(utf8(task_key), seed={HASH_SEED}), num_buckets): "
        "Spark's hash()",
        "num_buckets": num_buckets,
    }


def parse(raw, fmt: str, config: EtlConfig, observation=None):
    """Extracted rows -> validated canonical rows (``rows.py``), observing the rows read.

    Returns ``(frame, columns, observe)``: the canonical frame as expressions (``{name: column}``)
    over ``frame``, not as a frame of its own, so that :func:`compact` selects parsed, validated
    and encoded columns without a projection per step (each copied every column); and
    ``observe``, which :func:`compact` applies to its output. Parquet rows are counted there (one
    compact row per row read): observing the raw rows made Spark copy every raw column into a
    row first and end whole-stage codegen there (measured: first-stage CPU ~20 % higher). JSONL
    lines are counted as read (blank lines are dropped here), where rows exist already.
    """
    from pyspark.sql import functions as F

    def observe(df):
        return df

    if fmt == "parquet":
        frame, columns = raw, rows.parquet_columns()
        if observation is not None:

            def observe(df):
                blank = F.lit(0).cast("long").alias("blank_lines")
                return df.observe(observation, F.count(F.lit(1)).alias("rows_read"), blank)

    else:  # parsed while read (rows.read_jsonl); blank lines are not rows
        if observation is not None:
            raw = raw.observe(
                observation,
                F.count(F.when(~F.col("_blank"), 1)).alias("rows_read"),
                F.count(F.when(F.col("_blank"), 1)).alias("blank_lines"),
            )
        frame = raw.where(~F.col("_blank")).drop("_blank")
        columns = rows.columns_of(frame)
    columns["_reason"] = rows.validated_reason(
        columns,
        start_ms=epoch_ms(config.start),
        end_ms=epoch_ms(config.end),
        max_lateness_ms=int(config.max_lateness.total_seconds() * 1000),
    )
    return frame, columns, observe


def compact(parsed, config: EtlConfig):
    """Encode valid rows and keep only what the rest of the job needs (the rows that get shuffled).

    Args:
        parsed: ``(frame, columns, observe)`` from :func:`parse`.

    Columns: ``_pk`` (task key; rows without one are keyed by their file), ``event_id``, ``_t``,
    ``_h`` (content hash, for de-duplication), ``_reason``, ``_raw`` (the original line or a JSON
    rendering — rejected rows only), ``_hour`` and ``_file`` (the source file, see
    ``rows.source_file``), ``_uid`` (read position), and the payload
    ``_sparse`` (``array<int>``), ``_dense``, ``_click``, ``_conversion`` (valid rows only).

    Two projections, so that Spark compiles the stage whole (measured: first-stage CPU ~20 % lower
    than one projection, ~25 % than three; ``bench/etl_throughput.py``). As one, its generated
    method passes ``spark.sql.codegen.hugeMethodLimit`` (8000 bytes, the JIT's limit; the job
    sets it) and Spark falls back to interpreted row-by-row projections. So the first computes
    every column but ``_sparse`` into one struct ``_carry`` and passes the feature sources; the
    second hashes the ids and unpacks ``_carry``. Each reads every input at least twice, so Spark
    gives each its own method; ``_carry`` holds the read position, a non-deterministic
    expression, so the optimizer does not merge them back (``tests/components/etl/test_plan.py``).
    """
    from pyspark.sql import functions as F

    frame, c, observe = parsed
    ok = c["_reason"].isNull()
    file = rows.source_file(c["_hour"], c["_file"])
    pk = F.coalesce(c[config.task_key], F.concat(F.lit("\u0000"), file))
    click, conversion = encode.labels(c)
    carried = {
        "_pk": pk,
        "event_id": c["event_id"],
        "_t": c["_t"],
        "_h": F.when(ok, dedup.content_hash(c)),
        "_reason": c["_reason"],
        "_raw": F.when(~ok, F.coalesce(c["_raw"], rows.render_raw(c))),
        "_hour": c["_hour"],
        "_file": c["_file"],
        "_uid": F.monotonically_increasing_id(),
        "_dense": F.when(ok, encode.dense_values(config.dense_features, c)),
        "_click": F.when(ok, click),
        "_conversion": F.when(ok, conversion),
    }
    sources = sorted({f.source for f in config.features if f.source != "event_time"})
    df = frame.select(
        F.struct(*[e.alias(name) for name, e in carried.items()]).alias("_carry"),
        *[c[name].alias(name) for name in sources],
    )
    features = {name: F.col(name) for name in sources}
    features["_t"] = F.col("_carry._t")
    sparse = encode.sparse_ids(config.features, features, as_int=True)
    unpacked = {name: F.col(f"_carry.{name}") for name in carried}
    unpacked["_sparse"] = F.when(F.col("_carry._reason").isNull(), sparse)
    return observe(df.select(*[unpacked[name].alias(name) for name in COMPACT_COLUMNS]))


def partition_by_task(df, num_buckets: int):
    """The one full-row shuffle: task key ``k`` goes to partition ``pmod(hash(k), B)``."""
    return df.repartition(num_buckets, "_pk")


def transform(raw, fmt: str, config: EtlConfig, observation=None):
    """Run the whole transform (lazily); see the module docstring for the plan.

    Args:
        raw: the extracted DataFrame (:func:`components.etl.rows.read_raw`).
        fmt: the input format (``jsonl``, ``jsonl.gz``, ``parquet``).
        observation: a ``pyspark.sql.Observation`` to collect ``rows_read``/``blank_lines``.
    """
    from pyspark.sql import functions as F

    df = compact(parse(raw, fmt, config, observation), config)
    df = partition_by_task(df, config.num_buckets)
    df = dedup.mark_duplicates(df)
    df = episodes.number_rows(df, config.k_support, config.q_query)
    g = episodes.build_episodes(
        df,
        config.k_support,
        config.q_query,
        config.min_support,
        config.min_query,
        (config.sparse_width, len(config.dense_features)),
    )
    task_key = F.col("_pk")
    return g.select(
        task_key.alias("task_key"),
        encode.signed_hash(encode.TASK_SALT, task_key).alias("task_id"),
        F.col("_c").alias("episode"),
        "n_support",
        "n_query",
        "sparse",
        "dense",
        "click",
        "conversion",
        "event_time_ms",
        (F.col("n_support") > 0).alias("_is_episode"),
        splits.assign_split(
            task_key,
            F.col("_first_query_t"),
            config.cold_fraction,
            epoch_ms(config.warm_cutoff),
            valid_cold_fraction=config.valid_cold_fraction,
            cold_tasks=splits.read_cold_tasks(config.cold_tasks),
        ).alias("split"),
        F.lpad(splits.assign_bucket(task_key, config.num_buckets).cast("string"), 5, "0").alias(
            "bucket"
        ),
        "_ok",
        "_first_query_t",
        "_task_rows",
        "_rejects",
    )


def episodes_of(frame):
    """The episode rows: contract columns in order, plus ``split`` and ``bucket`` for the layout."""
    from pyspark.sql import functions as F

    return frame.where(F.col("_is_episode")).select(*EPISODE_COLUMNS, "split", "bucket")


def quarantine_of(frame):
    """The quarantined rows: ``reason, event_id, source_file, raw``."""
    from pyspark.sql import functions as F

    q = frame.select(F.explode("_rejects").alias("q"))
    return q.select(
        "q.reason", "q.event_id", rows.source_file("q.hour", "q.file").alias("source_file"), "q.raw"
    )
