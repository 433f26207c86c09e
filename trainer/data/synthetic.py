"""Synthetic episodes written exactly as the ETL writes them (torch-free: numpy + pyarrow).

For tests, benchmarks and examples that need an ETL-shaped output without running Spark::

    from trainer.data.synthetic import write_synthetic_episodes
    manifest = write_synthetic_episodes("out/syn", num_tasks=200, k_support=8, q_query=8,
                                        features=[("user", 10_007, 1), ("ad", 5_003, 1),
                                                  ("tags", 1_009, 3)], dense_width=2)

writes ``out/syn/split=<split>/bucket=<bbbbb>/part-00000.parquet`` (rows ordered by task key and
episode, ``rows_per_group`` episodes per row group, zstd) and ``_manifest.json`` last, per
:mod:`trainer.data.contract` with the Arrow types of :mod:`trainer.data.schema`. Each manifest
``files`` entry is ``{path, split, bucket, rows, row_groups, bytes, sha256, data_sha256}`` (``path``
relative to the root, ``/``-separated); ``content_hash`` is
:func:`trainer.data.contract.content_hash`, over the rows, as the ETL's.

What the data looks like (all of it a pure function of the arguments and ``seed``):

- tasks: ``num_tasks`` tasks ``task-0000000``…; each has ``episodes_per_task`` episodes, or when
  that is None a Zipf(``zipf_exponent``) number of them capped at ``max_episodes_per_task``;
- splits: a ``cold_fraction`` of the tasks go to ``test_cold`` whole; of the other tasks the last
  ``valid_fraction`` of their episodes (by time) go to ``valid`` and the rest to ``train``. A split
  not listed in ``splits`` gets nothing (its share stays in ``train``; unlisted ``train`` episodes
  are dropped);
- padding: with probability ``partial_fraction`` a task's last episode is partial (``n_support`` in
  [min_support, K], ``n_query`` in [min_query, Q]); padded positions hold id 0, 0.0 and label 0;
- ids: per slot a Zipf-like(``zipf_exponent``) rank (discrete Pareto) hashed into ``[1, buckets)``; half the samples draw
  from a task-specific hash so tasks have their own popular rows; a multi-slot feature holds 0 to
  ``slots`` values (trailing 0s);
- labels with per-task signal, ``logit = -1 + b_t + signal * (s_t * e_0(id_0) + 0.5 * sum e_f(id_f))
  + dense . (w + signal * w_t)``: ``b_t ~ N(0, signal)`` a task bias, ``s_t = ±1`` flips the effect
  of the first feature per task, ``w_t`` a per-task dense slope, ``e_f`` a fixed per-id effect in
  [-1, 1]. So a global model learns ``e_f`` and ``w`` but only adaptation on a task's support set
  recovers ``b_t``, ``s_t`` and ``w_t``. ``conversion`` is 1 with probability
  ``sigmoid(logit - 1.5)`` among clicks, and -1 (unknown) for a 10 % share of tasks;
- times: each task's samples are strictly increasing in time across episodes and positions, so
  support is always older than query.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.data.contract import (
    COL_TASK_KEY,
    EPISODE_COLUMNS,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SPLITS,
    DenseSpec,
    FeatureSpec,
    Manifest,
    content_hash,
    data_sha256,
)
from trainer.data.hashing import HASH_CONTRACT, signed_hash
from trainer.data.schema import episode_schema
from trainer.durable import write_atomic

DEFAULT_FEATURES: tuple[tuple[str, int, int], ...] = (
    ("user_id", 10_007, 1),
    ("ad_id", 5_003, 1),
    ("campaign_id", 1_009, 1),
    ("hour_of_day", 29, 1),
    ("user_interests", 1_009, 3),
)
INTERVAL_START_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z
INTERVAL_MS = 24 * 3600 * 1000
_UNKNOWN_CONVERSION_TASKS = 0.1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 (wrapping arithmetic): a cheap vectorised hash."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _zipf_like(rng: np.random.Generator, a: float, shape: tuple[int, ...]) -> np.ndarray:
    """Ranks >= 1 with ``P(rank >= k) = k ** (1 - a)``: the tail of Zipf(a), drawn by inversion
    (a discrete Pareto law; ~7x faster than ``rng.zipf``, which dominated generation time)."""
    u = rng.random(shape)
    return np.floor(np.minimum(u ** (-1.0 / (a - 1.0)), 2.0**53)).astype(np.uint64)


def _effect(feature: int, ids: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random effect in [-1, 1) per (feature, id)."""
    h = _mix(ids.astype(np.uint64) + np.uint64(0x51ED27 + 7919 * feature))
    return ((h >> np.uint64(11)).astype(np.float64) * 2.0**-52 - 1.0).astype(np.float32)


def _validate(features, k_support, q_query, num_tasks, zipf_exponent, splits, min_s, min_q) -> None:
    if num_tasks < 1 or k_support < 1 or q_query < 1:
        raise ValueError("num_tasks, k_support and q_query must all be >= 1")
    if not 1 <= min_s <= k_support or not 1 <= min_q <= q_query:
        raise ValueError("need 1 <= min_support <= k_support and 1 <= min_query <= q_query")
    if zipf_exponent <= 1.0:
        raise ValueError(f"zipf_exponent must be > 1 (numpy's Zipf sampler), got {zipf_exponent}")
    names = [f[0] for f in features]
    if not features or len(set(names)) != len(names):
        raise ValueError(f"features must be a non-empty list of uniquely named features: {names}")
    for name, buckets, slots in features:
        if buckets < 2 or slots < 1:
            raise ValueError(f"feature {name!r}: need buckets >= 2 and slots >= 1")
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}: the splits are {SPLITS}")


def write_synthetic_episodes(
    root: str | os.PathLike,
    *,
    num_tasks: int = 200,
    k_support: int = 8,
    q_query: int = 8,
    features: Sequence[tuple[str, int, int]] = DEFAULT_FEATURES,
    dense_width: int = 3,
    episodes_per_task: int | None = None,
    max_episodes_per_task: int = 32,
    zipf_exponent: float = 1.2,
    rows_per_group: int = 256,
    num_buckets: int = 4,
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
    cold_fraction: float = 0.2,
    valid_fraction: float = 0.2,
    partial_fraction: float = 0.1,
    min_support: int = 1,
    min_query: int = 1,
    signal: float = 1.0,
) -> Manifest:
    """Write an ETL-shaped episode directory under the local path ``root``; return its manifest.

    Args:
        root: output directory (created; existing files of the same names are overwritten).
        num_tasks: number of tasks.
        k_support, q_query: K and Q of every episode.
        features: ``(name, buckets, slots)`` per sparse feature, in slot order.
        dense_width: number of dense features.
        episodes_per_task: episodes of every task, or None for Zipf-distributed task sizes.
        max_episodes_per_task: cap on Zipf task sizes.
        zipf_exponent: exponent (> 1) of the Zipf laws of ids and of task sizes.
        rows_per_group: episodes per Parquet row group.
        num_buckets: task buckets per split (one file per non-empty bucket).
        seed: everything is a function of the arguments and this seed.
        splits: the splits to write (see the module docstring).
        cold_fraction, valid_fraction: task share of ``test_cold``; episode share of ``valid``.
        partial_fraction: probability that a task's last episode is partial (padded).
        min_support, min_query: lower bounds of a partial episode's real counts.
        signal: scale of the per-task effects (0 = no task signal).

    Returns:
        The :class:`~trainer.data.contract.Manifest` written to ``<root>/_manifest.json``.
    """
    features = [tuple(f) for f in features]
    _validate(
        features, k_support, q_query, num_tasks, zipf_exponent, splits, min_support, min_query
    )
    rng = np.random.default_rng(seed)
    K, Q, N = k_support, q_query, k_support + q_query

    # --- tasks, episodes, splits -------------------------------------------------------------
    if episodes_per_task is not None:
        sizes = np.full(num_tasks, int(episodes_per_task), np.int64)
    else:
        sizes = np.minimum(rng.zipf(zipf_exponent, num_tasks), max_episodes_per_task).astype(
            np.int64
        )
    cold = (rng.random(num_tasks) < cold_fraction) & ("test_cold" in splits)
    ep_task = np.repeat(np.arange(num_tasks), sizes)
    first = np.cumsum(sizes) - sizes
    ep_index = np.arange(len(ep_task)) - first[ep_task]
    n_valid = np.where(sizes >= 2, np.floor(valid_fraction * sizes), 0).astype(np.int64)
    n_valid = n_valid * ("valid" in splits)
    ep_split = np.where(ep_index >= sizes[ep_task] - n_valid[ep_task], 1, 0)  # 0 train, 1 valid
    ep_split = np.where(cold[ep_task], 2, ep_split)
    n_ep = len(ep_task)

    n_s = np.full(n_ep, K, np.int64)
    n_q = np.full(n_ep, Q, np.int64)
    last = ep_index == sizes[ep_task] - 1
    partial = last & (rng.random(n_ep) < partial_fraction)
    n_s[partial] = rng.integers(min_support, K + 1, partial.sum())
    n_q[partial] = rng.integers(min_query, Q + 1, partial.sum())
    pos = np.arange(N)
    real = np.where(pos < K, pos[None, :] < n_s[:, None], pos[None, :] - K < n_q[:, None])

    # --- sparse ids ---------------------------------------------------------------------------
    task_of_sample = np.broadcast_to(ep_task[:, None], (n_ep, N))
    columns = []
    for f, (_, buckets, slots) in enumerate(features):
        ranks = _zipf_like(rng, zipf_exponent, (n_ep, N, slots))
        local = rng.random((n_ep, N, 1)) < 0.5
        salt = np.where(
            local, task_of_sample[..., None].astype(np.uint64) * np.uint64(1_000_003), 0
        )
        salt = salt.astype(np.uint64) + np.uint64(0xABCDEF * (f + 1))
        ids = (1 + _mix(ranks + salt) % np.uint64(buckets - 1)).astype(np.int64)
        if slots > 1:
            count = rng.integers(0, slots + 1, (n_ep, N, 1))
            ids[np.arange(slots)[None, None, :] >= count] = 0
        columns.append(ids)
    sparse = np.concatenate(columns, axis=2)
    sparse[~real] = 0

    # --- dense, labels, times -----------------------------------------------------------------
    dense = rng.normal(size=(n_ep, N, dense_width)).astype(np.float32)
    dense[~real] = 0.0
    task_bias = rng.normal(0.0, signal, num_tasks)
    task_sign = rng.choice([-1.0, 1.0], num_tasks)
    w_global = rng.normal(0.0, 0.5, dense_width)
    w_task = rng.normal(0.0, 0.5 * signal, (num_tasks, dense_width))
    logit = (
        -1.0
        + task_bias[ep_task][:, None]
        + np.einsum("enj,ej->en", dense, w_task[ep_task] + w_global)
    )
    single = [i for i, f in enumerate(features) if f[2] == 1]
    offsets = np.cumsum([0] + [f[2] for f in features])
    for rank, f in enumerate(single):
        scale = task_sign[ep_task][:, None] if rank == 0 else 0.5
        logit = logit + signal * scale * _effect(f, sparse[:, :, offsets[f]])
    p_click = 1.0 / (1.0 + np.exp(-logit))
    click = (rng.random((n_ep, N)) < p_click) & real
    conv = click & (rng.random((n_ep, N)) < 1.0 / (1.0 + np.exp(-(logit - 1.5))))
    conversion = conv.astype(np.int8)
    unknown = rng.random(num_tasks) < _UNKNOWN_CONVERSION_TASKS
    conversion[unknown[ep_task][:, None] & real] = -1
    gaps = rng.integers(1, 20_000, (n_ep, N))
    csum = np.cumsum(gaps.ravel()).reshape(n_ep, N)
    task_start = csum[first, 0] - gaps[first, 0]
    start_ms = INTERVAL_START_MS + rng.integers(0, INTERVAL_MS // 2, num_tasks)
    event_ms = np.where(real, start_ms[ep_task][:, None] + csum - task_start[ep_task][:, None], 0)

    # --- write --------------------------------------------------------------------------------
    task_keys = np.array([f"task-{t:07d}" for t in range(num_tasks)], dtype=object)
    task_ids = np.array([signed_hash("task", k) for k in task_keys], np.int64)
    buckets = np.array([signed_hash("bucket", k) % num_buckets for k in task_keys], np.int64)
    cols = {
        "task_key": task_keys[ep_task],
        "task_id": task_ids[ep_task],
        "episode": ep_index.astype(np.int32),
        "n_support": n_s.astype(np.int32),
        "n_query": n_q.astype(np.int32),
        "sparse": sparse.reshape(n_ep, -1),
        "dense": dense.reshape(n_ep, -1),
        "click": click.astype(np.int8),
        "conversion": conversion,
        "event_time_ms": event_ms.astype(np.int64),
    }
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files, counts = [], {}
    for code, split in enumerate(("train", "valid", "test_cold")):
        in_split = ep_split == code
        counts[split] = {
            "episodes": int(in_split.sum()) if split in splits else 0,
            "tasks": len(np.unique(ep_task[in_split])) if split in splits else 0,
            "samples": int((n_s + n_q)[in_split].sum()) if split in splits else 0,
            "clicks": int(click[in_split].sum()) if split in splits else 0,
        }
        if split not in splits:
            continue
        for b in range(num_buckets):
            rows = np.flatnonzero(
                in_split & (buckets[ep_task] == b)
            )  # already (task_key, episode) order
            if len(rows):
                files.append(
                    _write_file(
                        root, split, b, {k: v[rows] for k, v in cols.items()}, rows_per_group
                    )
                )

    real_times = event_ms[real]
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        interval={"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"},
        task_key="synthetic_task",
        k_support=K,
        q_query=Q,
        min_support=min_support,
        min_query=min_query,
        hash=dict(HASH_CONTRACT),
        features=[
            FeatureSpec(
                name,
                name,
                "categorical" if slots == 1 else "multi",
                buckets,
                slots,
                int(offsets[i]),
            )
            for i, (name, buckets, slots) in enumerate(features)
        ],
        dense_features=[
            DenseSpec(f"dense_{j}", f"dense_{j}", "identity", j) for j in range(dense_width)
        ],
        splits=counts,
        files=files,
        content_hash=content_hash(files),
        time_range={
            "min_event_time_ms": str(int(real_times.min())),
            "max_event_time_ms": str(int(real_times.max())),
        },
        accounting={"episodes_written": int(sum(c["episodes"] for c in counts.values()))},
        split_rule={
            "cold_fraction": cold_fraction,
            "valid_fraction": valid_fraction,
            "kind": "synthetic",
        },
        producer={
            "name": "trainer.data.synthetic",
            "seed": seed,
            "num_tasks": num_tasks,
            "zipf_exponent": zipf_exponent,
            "signal": signal,
            "pyarrow": pa.__version__,
        },
    )
    write_atomic(root / MANIFEST_NAME, manifest.to_json())
    return manifest


def _write_file(root: Path, split: str, bucket: int, cols: dict, rows_per_group: int) -> dict:
    """Write one (split, bucket) file; return its manifest ``files`` entry."""
    schema = episode_schema()
    arrays = []
    for name in EPISODE_COLUMNS:
        typ = schema.field(name).type
        values = cols[name]
        if pa.types.is_list(typ):
            n, width = values.shape
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
            arrays.append(
                pa.ListArray.from_arrays(offsets, pa.array(values.ravel(), typ.value_type))
            )
        elif name == COL_TASK_KEY:
            arrays.append(pa.array(values.tolist(), typ))
        else:
            arrays.append(pa.array(values, typ))
    table = pa.Table.from_arrays(arrays, schema=schema)
    rel = f"split={split}/bucket={bucket:05d}/part-00000.parquet"
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=rows_per_group, compression="zstd")
    data = path.read_bytes()
    return {
        "path": rel,
        "split": split,
        "bucket": bucket,
        "rows": table.num_rows,
        "row_groups": pq.ParquetFile(path).metadata.num_row_groups,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data_sha256": data_sha256(path),
    }
