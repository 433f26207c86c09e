"""Transform, part 5: which split and which bucket an episode goes to — Spark columns and Python twins.

Split (per task, then per episode). A task is *cold* when unit_interval("split", task_key) <
cold_fraction or when the file of ``--cold-tasks`` names it; then:

    valid_cold if cold and unit_interval("valid_cold", task_key) < valid_cold_fraction
    test_cold  if cold otherwise                                         (the whole task, always)
    valid      else if the episode's first query sample is at or after the warm cutoff
               start + (1 - valid_fraction) * (end - start)              (same tasks, later time)
    train      otherwise

so a cold task never appears in training; ``valid_cold`` (off by default: valid_cold_fraction 0)
holds cold tasks out to tune adaptation on (fine-tuning steps, learning rate), apart from the
``test_cold`` tasks that report it; ``valid`` measures warm tasks on later data.

Bucket (per task): ``pmod(hash(task_key), num_buckets)`` with Spark's ``hash`` (Murmur3 x86_32,
seed 42, over the UTF-8 bytes; Spark's variant mixes the last 1-3 bytes one at a time). It is
also the partition Spark's ``repartition(B, task_key)`` sends the task to, so one Spark task
writes each bucket. :func:`task_bucket` is its Python twin (e.g. to find a task's file).
"""

from __future__ import annotations

import hashlib
from collections.abc import Set
from typing import Any

from components.etl.config import EtlConfig, epoch_ms, iso
from trainer.data.hashing import unit_interval

SPLIT_SALT = "split"
VALID_COLD_SALT = "valid_cold"


def assign_split(
    task_key,
    first_query_t,
    cold_fraction: float,
    warm_cutoff_ms: int,
    *,
    valid_cold_fraction: float = 0.0,
    cold_tasks: Set[str] = frozenset(),
):
    """Column: the episode's split (``task_key`` a string column, ``first_query_t`` epoch ms).
    Spark turns ``isin`` over more than 10 names into one hash-set lookup (``InSet``)."""
    from pyspark.sql import functions as F

    from components.etl.encode import unit_interval as unit_interval_col

    cold = unit_interval_col(SPLIT_SALT, task_key) < cold_fraction
    if cold_tasks:
        cold = cold | task_key.isin(sorted(cold_tasks))
    if valid_cold_fraction > 0:
        held_out = unit_interval_col(VALID_COLD_SALT, task_key) < valid_cold_fraction
        rule = F.when(cold & held_out, F.lit("valid_cold")).when(cold, F.lit("test_cold"))
    else:  # the plan of every run before valid_cold existed
        rule = F.when(cold, F.lit("test_cold"))
    return rule.when(first_query_t >= warm_cutoff_ms, F.lit("valid")).otherwise(F.lit("train"))


def assign_bucket(task_key, num_buckets: int):
    """Column: the task's bucket, ``pmod(hash(task_key), B)``."""
    from pyspark.sql import functions as F

    return F.pmod(F.hash(task_key), F.lit(num_buckets))


def task_split(
    task_key: str,
    first_query_ms: int,
    cold_fraction: float,
    warm_cutoff_ms: int,
    *,
    valid_cold_fraction: float = 0.0,
    cold_tasks: Set[str] = frozenset(),
) -> str:
    """Python twin of :func:`assign_split`."""
    if unit_interval(SPLIT_SALT, task_key) < cold_fraction or task_key in cold_tasks:
        if unit_interval(VALID_COLD_SALT, task_key) < valid_cold_fraction:
            return "valid_cold"
        return "test_cold"
    return "valid" if first_query_ms >= warm_cutoff_ms else "train"


def read_cold_tasks(uri: str) -> frozenset[str]:
    """The task keys named in the file ``uri`` (local path or ``pyarrow.fs`` URI): UTF-8, one key
    per line, surrounding whitespace stripped, blank lines skipped. ``""`` names none.

    Raises:
        ValueError: the file is missing, not UTF-8, or names no task (the message says which).
    """
    if not uri:
        return frozenset()
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    what = f"--cold-tasks {uri}"
    try:
        with fs.open_input_stream(path) as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"{what}: no such file (one task key per line)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: not UTF-8 text ({e}); write one task key per line") from None
    keys = frozenset(line.strip() for line in text.splitlines()) - {""}
    if not keys:
        raise ValueError(f"{what}: names no task; write one task key per line")
    return keys


def describe_rule(config: EtlConfig, cold_tasks: Set[str]) -> dict[str, Any]:
    """The manifest's ``split_rule``: the rule in words and the settings it ran with (the cold
    tasks by count and digest, so two runs with the same file record the same rule)."""
    named = "".join(f"{k}\n" for k in sorted(cold_tasks)).encode()
    return {
        "cold": "tasks with unit_interval('split', task_key) < cold_fraction, or named in "
        "cold_tasks -> valid_cold if unit_interval('valid_cold', task_key) < "
        "valid_cold_fraction, else test_cold",
        "valid": "other tasks' episodes whose first query sample is at or after warm_cutoff",
        "train": "the rest",
        "cold_fraction": config.cold_fraction,
        "valid_cold_fraction": config.valid_cold_fraction,
        "cold_tasks": {
            "file": config.cold_tasks,
            "names": len(cold_tasks),
            "sha256": hashlib.sha256(named).hexdigest(),
        },
        "valid_fraction": config.valid_fraction,
        "warm_cutoff": iso(config.warm_cutoff),
        "warm_cutoff_ms": epoch_ms(config.warm_cutoff),
    }


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
