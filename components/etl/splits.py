"""Transform, part 5: which split and which bucket an episode goes to — Spark columns and Python twins.

Split (per task, then per episode):

    test_cold  if unit_interval("split", task_key) < cold_fraction      (the whole task, always)
    valid      else if the episode's first query sample is at or after the warm cutoff
               start + (1 - valid_fraction) * (end - start)              (same tasks, later time)
    train      otherwise

so a ``test_cold`` task never appears in training, and ``valid`` measures warm tasks on later data.

Bucket (per task): ``pmod(hash(task_key), num_buckets)`` with Spark's ``hash`` (Murmur3 x86_32,
seed 42, over the UTF-8 bytes; Spark's variant mixes the last 1-3 bytes one at a time). It is
also the partition Spark's ``repartition(B, task_key)`` sends the task to, so one Spark task
writes each bucket. :func:`task_bucket` is its Python twin (e.g. to find a task's file).
"""

from __future__ import annotations

from trainer.data.hashing import unit_interval

SPLIT_SALT = "split"


def assign_split(task_key, first_query_t, cold_fraction: float, warm_cutoff_ms: int):
    """Column: the episode's split (``task_key`` a string column, ``first_query_t`` epoch ms)."""
    from pyspark.sql import functions as F

    from components.etl.encode import unit_interval as unit_interval_col

    return (
        F.when(unit_interval_col(SPLIT_SALT, task_key) < cold_fraction, F.lit("test_cold"))
        .when(first_query_t >= warm_cutoff_ms, F.lit("valid"))
        .otherwise(F.lit("train"))
    )


def assign_bucket(task_key, num_buckets: int):
    """Column: the task's bucket, ``pmod(hash(task_key), B)``."""
    from pyspark.sql import functions as F

    return F.pmod(F.hash(task_key), F.lit(num_buckets))


def task_split(
    task_key: str, first_query_ms: int, cold_fraction: float, warm_cutoff_ms: int
) -> str:
    """Python twin of :func:`assign_split`."""
    if unit_interval(SPLIT_SALT, task_key) < cold_fraction:
        return "test_cold"
    return "valid" if first_query_ms >= warm_cutoff_ms else "train"


def task_bucket(task_key: str, num_buckets: int) -> int:
    """Python twin of :func:`assign_bucket`: Spark's ``pmod(hash(task_key), num_buckets)``."""
    return spark_murmur3(task_key.encode("utf-8")) % num_buckets


_M32 = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix_k1(k1: int) -> int:
    k1 = (k1 * 0xCC9E2D51) & _M32
    return (_rotl(k1, 15) * 0x1B873593) & _M32


def _mix_h1(h1: int, k1: int) -> int:
    h1 = _rotl(h1 ^ k1, 13)
    return (h1 * 5 + 0xE6546B64) & _M32


def spark_murmur3(data: bytes, seed: int = 42) -> int:
    """Spark's ``Murmur3_x86_32.hashUnsafeBytes`` as a signed 32-bit int (``hash(string)``)."""
    n = len(data)
    aligned = n - n % 4
    h1 = seed & _M32
    for i in range(0, aligned, 4):
        h1 = _mix_h1(h1, _mix_k1(int.from_bytes(data[i : i + 4], "little")))
    for i in range(aligned, n):  # Spark's tail: each byte, sign-extended, as a full block
        h1 = _mix_h1(h1, _mix_k1((data[i] - 256 if data[i] > 127 else data[i]) & _M32))
    h1 ^= n
    h1 ^= h1 >> 16
    h1 = (h1 * 0x85EBCA6B) & _M32
    h1 ^= h1 >> 13
    h1 = (h1 * 0xC2B2AE35) & _M32
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 & 0x80000000 else h1
