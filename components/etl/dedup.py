"""Transform, part 2: de-duplicate on ``event_id`` over the whole interval, without a row shuffle.

Among the rows that passed validation, the rows sharing an ``event_id`` keep ONE winner, the
smallest ``(event_time, content hash, source file, read position)``. The content hash is
``xxhash64`` over the parsed raw fields, so the winner depends on the data — not on file order,
partitioning, or which copy Spark reads first. The file name orders identical copies in two
files; the read position (``monotonically_increasing_id`` at read time) only separates
byte-identical copies within one file, where the choice cannot show in any output. Losers are quarantined as
``duplicate_event_id``. A duplicate in another hour or another task is found like any other.

How it stays cheap — no shuffle of full rows, and the input is read and parsed once:

1. candidates: a hash aggregate of ``count(*)`` by ``xxhash64(event_id)`` (8-byte keys, narrow)
   keeps the hashes seen on more than one valid row — a small table;
2. winners: the rows whose id hash is a candidate (a broadcast join) are grouped by ``event_id``
   to find each id's smallest key — a small aggregate;
3. the winners are broadcast and joined back onto every row.

Both aggregates read the task shuffle that the episode cutting needs anyway: they are computed
from the same repartitioned frame, in the same query, and reference every column of it, so Spark
plans the identical exchange and reuses it (``ReusedExchange``; a test checks the plan).
"""

from __future__ import annotations

from components.etl.rows import DATA_COLUMNS

DUPLICATE = "duplicate_event_id"
PAYLOAD = ("_sparse", "_dense", "_click", "_conversion")
"""Encoded sample columns: set for valid rows, null for rejected ones (see transform.compact)."""


def content_hash(columns: dict):
    """``xxhash64`` over the parsed raw fields (``_t`` stands for event_time), from the canonical
    frame as ``{name: column}`` (``rows.parquet_columns`` or ``rows.columns_of``)."""
    from pyspark.sql import functions as F

    return F.xxhash64(*[columns[c] for c in DATA_COLUMNS])


def winner_key():
    """``(event_time, content hash, source file, read position)``: the smallest wins."""
    from pyspark.sql import functions as F

    return F.struct(
        F.col("_t").alias("t"),
        F.col("_h").alias("h"),
        F.col("_hour").alias("hour"),  # (hour, file) orders like the file's path
        F.col("_file").alias("file"),
        F.col("_uid").alias("u"),
    )


def _valid():
    """A valid row: no reason, no raw line, its payload set. Spelled out over every column the
    exchange carries, so the aggregate's plan reads the very same exchange (see docstring)."""
    from pyspark.sql import functions as F

    cond = F.col("_reason").isNull() & F.col("_raw").isNull()
    for c in ("event_id", "_t", "_h", *PAYLOAD, "_hour"):
        cond = cond & F.col(c).isNotNull()
    # (conditions the optimizer cannot fold away: the file name and read position are never null)
    return cond & (F.col("_file") != "") & (F.col("_uid") >= 0)


def duplicate_candidates(df):
    """``_eh``: hashes of the event ids carried by more than one valid row (a small table)."""
    from pyspark.sql import functions as F

    return (
        df.groupBy(F.xxhash64("event_id").alias("_eh"))
        .agg(F.count(F.when(_valid(), 1)).alias("_copies"))
        .where(F.col("_copies") > 1)
        .select("_eh")
    )


def duplicate_winners(df, candidates=None):
    """``(_eid, _win)``: each event id carried by more than one valid row, and its winner's key."""
    from pyspark.sql import functions as F

    candidates = duplicate_candidates(df) if candidates is None else candidates
    rows = df.join(F.broadcast(candidates), F.xxhash64("event_id") == candidates["_eh"])
    valid = _valid()
    return (
        rows.groupBy(_event_key().alias("_eid"))
        .agg(
            F.count(F.when(valid, 1)).alias("_copies"),
            F.min(F.when(valid, winner_key())).alias("_win"),
        )
        .where(F.col("_copies") > 1)
        .select("_eid", "_win")
    )


def _event_key():
    """The join key: ``event_id`` made non-null (rows without one are invalid and never win).

    A nullable key would make Spark infer ``isnotnull(event_id)`` and push it below the
    exchange on the aggregate's side, which then no longer matches the main plan's exchange.
    """
    from pyspark.sql import functions as F

    return F.coalesce(F.col("event_id"), F.lit(""))


def mark_duplicates(df, winners=None):
    """Set ``_reason = duplicate_event_id`` on every valid row that is not its id's winner.

    Args:
        df: compact rows (:func:`components.etl.transform.compact`): ``event_id``, ``_t``,
            ``_h``, ``_reason``, ``_raw``, ``_hour``, ``_file``, ``_uid`` and the payload.
        winners: the output of :func:`duplicate_winners` (default: computed from ``df``).
    """
    from pyspark.sql import functions as F

    winners = duplicate_winners(df) if winners is None else winners
    joined = df.join(F.broadcast(winners), _event_key() == winners["_eid"], how="left")
    loser = F.col("_reason").isNull() & F.col("_win").isNotNull() & (winner_key() != F.col("_win"))
    return joined.withColumn(
        "_reason", F.when(loser, F.lit(DUPLICATE)).otherwise(F.col("_reason"))
    ).select(*df.columns)
