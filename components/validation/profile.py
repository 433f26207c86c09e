"""Derived columns that turn list-valued episodes and raw logs into flat, checkable tables.

GX checks scalar columns well and list columns poorly, so the episode suite validates a per-episode
*profile*: list lengths, per-feature min/max sparse id, support/query time bounds, label sanity,
padding, and a per-task flag for tasks seen in both the cold and the warm splits. It is computed
here from the episode Parquet files with pyarrow and numpy, a batch of episodes at a time (its
lists as ``episodes x positions`` matrices, every fact a masked reduction over them): no Spark job,
and the memory of a few batches plus the profile (a few dozen scalars per episode). A per-split *summary*
(observed counts next to the manifest's) is aggregated from the profile. The raw profile
(:func:`raw_profile`) stays a Spark frame: raw logs are read by Spark (JSONL's permissive parse).

Positions inside a list column follow the contract (``trainer/data/contract.py``): sample ``j`` of
an episode occupies ``[j * width, (j + 1) * width)``; sample ``j`` is real when
``j < n_support`` or ``K <= j < K + n_query``, padding otherwise. ``n_support`` and ``n_query`` are
clamped to ``[0, K]`` and ``[0, Q]`` (a null counts as 0) to place the samples, so a defective
count fails its own check and does not break the profile. Only positions ``< (K + Q) * width`` are
samples; a list of another length fails ``list_length`` and is profiled on the positions it has.

Example (K=2, Q=1, sparse width 2): ``sparse = [5, 9, 7, 0, 3, 9]``, ``n_support = 2``,
``n_query = 1`` gives ``support_max_time_ms = max(t0, t1)``, ``query_min_time_ms = t2``,
``min_id__f0 = 3``, ``max_id__f0 = 7`` for the feature in slot 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.data.contract import Manifest

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

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
COLD_SPLITS = ("test_cold", "valid_cold")


def list_widths(manifest: Manifest) -> dict[str, int]:
    """Values per sample of each list column."""
    return {
        "sparse": manifest.sparse_width,
        "dense": manifest.dense_width,
        "click": 1,
        "conversion": 1,
        "event_time_ms": 1,
    }


@dataclass
class _Grid:
    """One list column of a file: its first ``(K + Q) * width`` positions as a matrix."""

    values: np.ndarray
    """``(episodes, (K + Q) * width)``; 0 where ``valid`` is false."""
    valid: np.ndarray
    """True where the position exists and holds a non-null value."""
    null: np.ndarray
    """``(episodes,)``: the list itself is null."""
    length: pa.Array
    """Elements per list (null for a null list)."""
    null_elements: np.ndarray
    """``(episodes,)``: null values inside the whole list."""
    nonfinite: np.ndarray
    """``(episodes,)``: a NaN or infinite value anywhere in the list."""
    any_valid: np.ndarray
    """``(episodes,)``: at least one non-null value anywhere in the list."""


def _grid(column, positions: int) -> _Grid:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    length = pc.list_value_length(arr).cast(pa.int64())
    null = length.is_null().to_numpy(zero_copy_only=False)
    counts = length.fill_null(0).to_numpy()
    flat = arr.flatten()  # null lists contribute nothing
    values = flat.fill_null(0).to_numpy(zero_copy_only=False)
    if flat.null_count:
        flat_valid = flat.is_valid().to_numpy(zero_copy_only=False)
    else:
        flat_valid = np.ones(len(values), bool)
    finite = np.isfinite(values) if values.dtype.kind == "f" else np.ones(len(values), bool)
    if not null.any() and (counts == positions).all():  # the contract's shape: a reshape
        grid, valid = values.reshape(n, positions), flat_valid.reshape(n, positions)
        return _Grid(
            values=grid,
            valid=valid,
            null=null,
            length=length,
            null_elements=positions - valid.sum(axis=1),
            nonfinite=(valid & ~finite.reshape(n, positions)).any(axis=1),
            any_valid=valid.any(axis=1),
        )
    parent = np.repeat(np.arange(n), counts)
    pos = np.arange(len(values)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = pos < positions
    grid = np.zeros((n, positions), dtype=values.dtype)
    valid = np.zeros((n, positions), dtype=bool)
    grid[parent[keep], pos[keep]] = values[keep]
    valid[parent[keep], pos[keep]] = flat_valid[keep]
    return _Grid(
        values=grid,
        valid=valid,
        null=null,
        length=length,
        null_elements=np.bincount(parent[~flat_valid], minlength=n),
        nonfinite=np.bincount(parent[flat_valid & ~finite], minlength=n) > 0,
        any_valid=np.bincount(parent[flat_valid], minlength=n) > 0,
    )


def _array(values: np.ndarray, null: np.ndarray) -> pa.Array:
    import pyarrow as pa

    return pa.array(values, mask=null)


def _count(mask: np.ndarray, null: np.ndarray) -> pa.Array:
    """Per episode: true positions of ``mask``; null where the list is null."""
    return _array(mask.sum(axis=1).astype("int64"), null)


def _extreme(values: np.ndarray, valid: np.ndarray, op: str) -> pa.Array:
    """Per episode (row): the min or max of ``values`` where ``valid``; null if nowhere."""
    import numpy as np

    if values.shape[1] == 0:
        return _array(np.zeros(len(values), values.dtype), np.ones(len(values), bool))
    kind = np.iinfo if values.dtype.kind == "i" else np.finfo
    if op == "min":
        out = np.where(valid, values, kind(values.dtype).max).min(axis=1)
    else:
        out = np.where(valid, values, kind(values.dtype).min).max(axis=1)
    return _array(out, ~valid.any(axis=1))


def _int(column) -> pa.Array:
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.cast(pa.int64())


def _task_hashes(task_key: pa.Array) -> pa.Array:
    """``signed_hash("task", key)`` per episode (hashed once per distinct key); null for null."""
    import pyarrow as pa

    from trainer.data.hashing import signed_hash

    encoded = task_key.dictionary_encode()
    hashes = pa.array([signed_hash("task", k) for k in encoded.dictionary.to_pylist()], pa.int64())
    return hashes.take(encoded.indices)


def batch_profile(split: str, episodes: pa.Table, manifest: Manifest) -> pa.Table:
    """The profile of a batch of episodes of one split; see :func:`episode_profile`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    k, q, widths = manifest.k_support, manifest.q_query, list_widths(manifest)
    n = episodes.num_rows
    task_key = episodes.column("task_key").combine_chunks().cast(pa.string())
    n_support, n_query = _int(episodes.column("n_support")), _int(episodes.column("n_query"))
    out: dict[str, Any] = {
        "split": pa.array([split] * n, pa.string()),
        "task_key": task_key,
        "task_id": _int(episodes.column("task_id")),
        "episode": _int(episodes.column("episode")),
        "n_support": n_support,
        "n_query": n_query,
        "n_samples": pc.add(n_support, n_query),
    }
    # Sample j of each episode: support (j < ns), query (K <= j < K + nq) or padding.
    ns = np.clip(n_support.fill_null(0).to_numpy(), 0, k)[:, None]
    nq = np.clip(n_query.fill_null(0).to_numpy(), 0, q)[:, None]
    j = np.arange(k + q)[None, :]
    support, query = j < ns, (j >= k) & (j < k + nq)
    real = support | query
    grids = {c: _grid(episodes.column(c), (k + q) * widths[c]) for c in LIST_COLUMNS}
    for c in LIST_COLUMNS:
        out[f"len_{c}"] = grids[c].length
    any_null = np.zeros(n, bool)
    for g in grids.values():
        any_null |= g.null
    out["null_elements"] = _array(sum(g.null_elements for g in grids.values()), any_null)
    sparse, w = grids["sparse"], widths["sparse"]
    for f in manifest.features:  # the feature's positions in every sample, padding included
        at = (np.arange(k + q)[:, None] * w + f.offset + np.arange(f.slots)[None, :]).ravel()
        at = at[at < sparse.values.shape[1]]
        ids, valid = sparse.values[:, at], sparse.valid[:, at]
        out[f"min_id__{f.name}"] = _extreme(ids, valid, "min")
        out[f"max_id__{f.name}"] = _extreme(ids, valid, "max")
    padding, padding_null = np.zeros(n, "int64"), np.zeros(n, bool)
    for c in LIST_COLUMNS:
        if widths[c] > 0:
            g, pad = grids[c], np.repeat(~real, widths[c], axis=1)
            padding += (g.valid & pad & (g.values != 0)).sum(axis=1)
            padding_null |= g.null
    out["padding_nonzero"] = _array(padding, padding_null)
    click, conversion = grids["click"], grids["conversion"]
    out["click_invalid"] = _count(click.valid & real & ~np.isin(click.values, (0, 1)), click.null)
    out["conversion_invalid"] = _count(
        conversion.valid & real & ~np.isin(conversion.values, (-1, 0, 1)), conversion.null
    )
    out["n_clicks"] = _count(click.valid & real & (click.values == 1), click.null)
    out["n_conversions"] = _count(
        conversion.valid & real & (conversion.values == 1), conversion.null
    )
    dense = grids["dense"]
    out["dense_nonfinite"] = _array(dense.nonfinite.astype("int64"), ~dense.any_valid)
    t = grids["event_time_ms"]
    out["support_max_time_ms"] = _extreme(t.values, t.valid & support, "max")
    out["query_min_time_ms"] = _extreme(t.values, t.valid & query, "min")
    out["min_time_ms"] = _extreme(t.values, t.valid & real, "min")
    out["max_time_ms"] = _extreme(t.values, t.valid & real, "max")
    out["expected_task_id"] = _task_hashes(task_key)
    samples = out["n_samples"]
    nonzero = pc.if_else(pc.equal(samples, 0), None, samples)
    out["click_rate"] = pc.divide(out["n_clicks"].cast(pa.float64()), nonzero)
    return pa.table(out)


def _group_codes(column: pa.Array) -> np.ndarray:
    """Integer codes of ``column``'s values, a null being a value of its own (as a grouping)."""
    import numpy as np

    encoded = column.dictionary_encode(null_encoding="encode")
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype="int64")


def episode_profile(files: Iterable[tuple[str, pa.Table]], manifest: Manifest) -> pa.Table:
    """One row per episode: the scalar facts the episode suite checks.

    Args:
        files: ``(split, episodes)`` batches of the episode files (``sources.read_episode_files``).
        manifest: the interval's manifest (K/Q, feature spec).

    Returns:
        A table with ``split, task_key, task_id, episode, n_support, n_query, n_samples``,
        ``len_<list column>``, ``null_elements``, ``min_id__<feature>``, ``max_id__<feature>``,
        ``padding_nonzero``, ``click_invalid``, ``conversion_invalid``, ``n_clicks``,
        ``n_conversions``, ``dense_nonfinite``, ``support_max_time_ms``, ``query_min_time_ms``,
        ``min_time_ms``, ``max_time_ms``, ``expected_task_id``, ``click_rate`` and
        ``cold_and_warm`` (the task has episodes in a cold split and in train/valid: cold start
        must stay cold).
    """
    import numpy as np
    import pyarrow as pa

    from .sources import BATCH_EPISODES

    def profiled(split: str, tables: list[pa.Table]) -> pa.Table:
        return batch_profile(
            split, pa.concat_tables(tables, promote_options="permissive"), manifest
        )

    parts, pending = [], {}
    for split, table in files:  # small files together: batches of ~BATCH_EPISODES of one split
        pending.setdefault(split, []).append(table)
        if sum(t.num_rows for t in pending[split]) >= BATCH_EPISODES:
            parts.append(profiled(split, pending.pop(split)))
    parts += [profiled(split, tables) for split, tables in pending.items()]
    profile = pa.concat_tables(parts).combine_chunks()
    codes = _group_codes(profile.column("task_key").combine_chunks())
    cold = np.isin(profile.column("split").to_numpy(zero_copy_only=False), COLD_SPLITS)
    episodes, cold_episodes = np.bincount(codes), np.bincount(codes, weights=cold)
    mixed = (cold_episodes > 0) & (cold_episodes < episodes)
    return profile.append_column("cold_and_warm", pa.array(mixed[codes]))


def split_summary(profile: pa.Table, splits: list[str]) -> dict[str, Any]:
    """The interval-wide facts ``<split>__<metric>`` for each split and metric, and
    ``click_rate`` (clicks / samples over every real sample of the interval; None if no sample).

    Metrics (``SUMMARY_METRICS``, as the ETL's manifest counts them): ``episodes``, ``tasks``
    (distinct task keys), real ``samples`` = ``support_samples`` + ``query_samples``, ``clicks``
    and ``conversions`` (labels equal to 1); a split with no episodes gets 0; nulls are not
    counted.
    """
    import pyarrow.compute as pc

    summed = {
        "samples": "n_samples",
        "support_samples": "n_support",
        "query_samples": "n_query",
        "clicks": "n_clicks",
        "conversions": "n_conversions",
    }
    split = profile.column("split").to_numpy(zero_copy_only=False)
    values = {c: profile.column(c).fill_null(0).to_numpy() for c in summed.values()}
    keys = profile.column("task_key")
    out: dict[str, Any] = {}
    for s in splits:
        here = split == s
        out[f"{s}__episodes"] = int(here.sum())
        out[f"{s}__tasks"] = int(pc.count_distinct(keys.filter(here), mode="only_valid").as_py())
        for m, c in summed.items():
            out[f"{s}__{m}"] = int(values[c][here].sum())
    samples = int(values["n_samples"].sum())
    out["click_rate"] = int(values["n_clicks"].sum()) / samples if samples else None
    return out


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
