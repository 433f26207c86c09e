"""The feature hash: one definition shared by the Spark ETL and the Python (serving) side.

Every categorical value becomes a row id of its feature's embedding table:

    h  = XXH64( utf8(feature_name + "\\x1f" + value), seed=42 )  as a signed 64-bit integer
    id = 0                              if value is null (also the padding id)
    id = 1 + pmod(h, buckets - 1)       otherwise, so ids lie in [1, buckets)

Spark computes the same thing with built-in expressions (``xxhash64`` uses XXH64 with seed 42 on
the UTF-8 bytes of a string, ``pmod`` is the non-negative modulo), so no Python UDF runs in the
ETL and this module is its bit-for-bit twin (``tests/components/test_hash_parity.py`` checks it).

Values are texts: the ETL reads every raw id as a string, and the scorer hands over the same
text (``components/score/events.py``).

Example:
    >>> feature_id("campaign_id", "c-42", buckets=1_000)   # doctest: +SKIP
    731
    >>> feature_id("campaign_id", None, buckets=1_000)
    0
"""

from __future__ import annotations

import xxhash

HASH_SEED = 42
SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in a feature name
NULL_ID = 0
UNIT_BITS = 20
""":func:`unit_interval` keeps this many bits of the hash: values are multiples of 2^-20."""
HASH_CONTRACT = {
    "algorithm": "xxhash64",
    "seed": HASH_SEED,
    "input": "utf8(feature_name + '\\x1f' + value)",
    "id": "0 for null/padding, else 1 + pmod(signed_hash, buckets - 1)",
    "version": 1,
}

_U64 = 1 << 64
_I63 = 1 << 63


def signed_hash(feature: str, value: str) -> int:
    """XXH64 (seed 42) of ``feature + "\\x1f" + value`` as Spark's signed ``xxhash64`` returns it."""
    h = xxhash.xxh64_intdigest((feature + SEPARATOR + value).encode("utf-8"), seed=HASH_SEED)
    return h - _U64 if h >= _I63 else h


def feature_id(feature: str, value: str | None, buckets: int) -> int:
    """Map one raw value of ``feature`` to its row id in a table of ``buckets`` rows.

    Args:
        feature: the feature name (part of the hash input, so equal values of different features
            land on unrelated rows).
        value: the value's text, or ``None`` if missing.
        buckets: rows of the feature's table, row 0 included; must be at least 2.

    Returns:
        0 for a missing value, otherwise an id in ``[1, buckets)``.
    """
    if buckets < 2:
        raise ValueError(
            f"feature {feature!r}: buckets must be >= 2 (row 0 is reserved), got {buckets}"
        )
    if value is None:
        return NULL_ID
    if not isinstance(value, str):
        raise TypeError(
            f"feature {feature!r}: hash the value's text, not {type(value).__name__} {value!r}"
        )
    # Python's % with a positive divisor is Spark's pmod.
    return 1 + signed_hash(feature, value) % (buckets - 1)


def feature_ids(feature: str, values: list[str | None], buckets: int, slots: int) -> list[int]:
    """Encode a multi-valued field into exactly ``slots`` ids: the first ``slots`` values, 0-padded."""
    ids = [feature_id(feature, v, buckets) for v in (values or [])[:slots]]
    return ids + [NULL_ID] * (slots - len(ids))


def unit_interval(salt: str, key: str) -> float:
    """A stable number in [0, 1) from a key, used to assign tasks to splits (Spark twin in the ETL).

    Computed as ``pmod(signed_hash(salt, key), 2**UNIT_BITS) / 2**UNIT_BITS``.
    """
    return (signed_hash(salt, key) % (1 << UNIT_BITS)) / float(1 << UNIT_BITS)
