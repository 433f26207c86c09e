"""Transform, part 3: the feature hash as Spark expressions — the twin of ``trainer/data/hashing.py``.

Spark's ``xxhash64(string)`` is XXH64 with seed 42 over the string's UTF-8 bytes, returned as a
signed 64-bit integer, and ``pmod`` is the non-negative modulo, so these built-in expressions
compute exactly :func:`trainer.data.hashing.feature_id` and friends with no Python UDF
(``tests/components/test_hash_parity.py`` checks it value by value)::

    signed_hash(name, v) = xxhash64(concat(name || '\\x1f', v))
    feature_id(name, v)  = 0 if v is null else 1 + pmod(signed_hash(name, v), buckets - 1)
    unit_interval(s, k)  = pmod(signed_hash(s, k), 2^20) / 2^20

A sample's ``sparse`` ids are the features in spec order, ``slots`` ids each (a multi-valued
field keeps its first ``slots`` values, 0-padded); ``hour_of_day`` hashes the UTC hour of
``event_time`` as the text "0".."23"; ``dense`` applies each dense feature's transform, null -> 0.0,
as float32; ``conversion`` null -> -1 (``UNKNOWN_LABEL``).
"""

from __future__ import annotations

from components.etl.config import DenseConfig, FeatureConfig
from trainer.data.contract import UNKNOWN_LABEL
from trainer.data.hashing import SEPARATOR, UNIT_BITS

TASK_SALT = "task"
"""An episode's ``task_id`` is ``signed_hash(TASK_SALT, task_key)``."""


def signed_hash(name: str, value):
    """Column: ``hashing.signed_hash(name, value)`` (null when ``value`` is null)."""
    from pyspark.sql import functions as F

    return F.xxhash64(F.concat(F.lit(name + SEPARATOR), value))


def feature_id(name: str, value, buckets: int):
    """Column: ``hashing.feature_id(name, value, buckets)`` — 0 for null, else in [1, buckets)."""
    from pyspark.sql import functions as F

    hashed = F.pmod(signed_hash(name, value), F.lit(buckets - 1).cast("long")) + F.lit(1).cast(
        "long"
    )
    return F.when(value.isNull(), F.lit(0).cast("long")).otherwise(hashed)


def multi_ids(name: str, values, buckets: int, slots: int):
    """Columns: ``hashing.feature_ids`` — exactly ``slots`` ids from a list column, 0-padded.

    One expression per slot (``get`` is null past the end, so the id is 0) rather than a
    higher-order ``transform``: Spark compiles these, while a lambda is interpreted per element
    (measured: encoding 20 % faster; ``bench/etl_throughput.py``).
    """
    from pyspark.sql import functions as F

    return [feature_id(name, F.get(values, i), buckets) for i in range(slots)]


def unit_interval(salt: str, key):
    """Column: ``hashing.unit_interval(salt, key)``, a stable double in [0, 1)."""
    from pyspark.sql import functions as F

    scale = float(1 << UNIT_BITS)
    return F.pmod(signed_hash(salt, key), F.lit(1 << UNIT_BITS).cast("long")).cast("double") / scale


def source_value(f: FeatureConfig, columns: dict):
    """The string a feature hashes, from the canonical frame (``_t`` is epoch ms).

    ``columns``, here and below: the canonical frame as ``{name: column}``
    (``rows.parquet_columns``, or ``rows.columns_of(frame)``), so that encoding composes with
    parsing into one projection.
    """
    from pyspark.sql import functions as F

    if f.source == "event_time":
        return F.hour(F.timestamp_millis(columns["_t"])).cast("string")
    return columns[f.source]


def sparse_ids(features: tuple[FeatureConfig, ...], columns: dict, as_int: bool = False):
    """Column ``array<bigint>`` of ``sum(slots)`` ids, in spec (slot) order.

    With ``as_int`` the ids are ``int`` (every table has fewer than 2^31 rows): half the bytes
    while rows travel through the shuffle; the episode builder widens them back to ``bigint``.
    """
    from pyspark.sql import functions as F

    ids = []
    for f in features:
        if f.kind == "multi":
            ids.extend(multi_ids(f.name, source_value(f, columns), f.buckets, f.slots))
        else:
            ids.append(feature_id(f.name, source_value(f, columns), f.buckets))
    return F.array(*[i.cast("int") if as_int else i for i in ids])


def dense_values(dense: tuple[DenseConfig, ...], columns: dict):
    """Column ``array<float>`` of the transformed dense features (null -> 0.0)."""
    from pyspark.sql import functions as F

    values = []
    for d in dense:
        c = columns[d.source]
        c = F.log1p(c) if d.transform == "log1p" else c
        values.append(F.coalesce(c, F.lit(0.0)).cast("float"))
    return F.array(*values) if values else F.array().cast("array<float>")


def labels(columns: dict):
    """``(click, conversion)`` as tinyint columns; an unknown conversion is ``UNKNOWN_LABEL``."""
    from pyspark.sql import functions as F

    click = columns["click"].cast("tinyint")
    unknown = F.lit(float(UNKNOWN_LABEL))
    conversion = F.coalesce(columns["conversion"], unknown).cast("tinyint")
    return click, conversion
