"""The episode contract between the Meta-IO offline stage (Spark ETL) and the trainer.

Torch-free (stdlib, plus pyarrow inside functions) so the Spark side imports it too.

An ETL output directory (one data interval) looks like::

    <root>/
      split=train/bucket=00000/part-00000.parquet     one file per (split, bucket); buckets are
      split=train/bucket=00001/part-00000.parquet     hash(task_key) mod num_buckets, so the ranks
      ...                                             of a job read disjoint files
      split=valid/...        warm evaluation: later episodes of training tasks (by time)
      split=test_cold/...    cold start: tasks (by hash of the task key) never seen in training
      split=valid_cold/...   (optional) other cold tasks, to tune adaptation on
      _quarantine/...        rejected raw rows with a reason code (not read by the trainer)
      _manifest.json         written last: its presence marks the output complete

One Parquet row is one **episode**: ``K`` support and ``Q`` query samples of one task, support
strictly older than query. Per-sample columns are lists of constant length ``(K + Q) * width``,
samples in row-major order, support first::

    position:   0 .. n_support-1 | n_support .. K-1 | K .. K+n_query-1 | K+n_query .. K+Q-1
    content:    support samples  | padding          | query samples    | padding

so a row group converts to ``(episodes, K + Q, width)`` arrays with one reshape and no per-row
Python. Padding is masked through ``n_support``/``n_query`` (sparse id 0, dense 0.0, labels 0).

Example (K=2, Q=1, two sparse slots): ``sparse = [5, 9,  7, 0,  3, 9]``, ``n_support = 2``,
``n_query = 1`` reshapes to ``[[5, 9], [7, 0], [3, 9]]``: rows 0-1 are support, row 2 is query.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from trainer.paths import check_relative

FORMAT = "metarec.episodes"
SCHEMA_VERSION = 1
MANIFEST_NAME = "_manifest.json"
QUARANTINE_DIR = "_quarantine"
SPLITS = ("train", "valid", "test_cold")
"""The splits of every episode output: its manifest counts each (0 when empty)."""
OPTIONAL_SPLITS = ("valid_cold",)
"""Splits an output has only when asked: ``valid_cold``, cold tasks held out to tune adaptation on
(never trained on, never in ``test_cold``; the ETL's ``valid_cold_fraction``). Older outputs and
synthetic data have none; a manifest counts it when it holds episodes, a reader takes an absent
split as empty."""
ALL_SPLITS = (*SPLITS, *OPTIONAL_SPLITS)
LABELS = ("click", "conversion")
UNKNOWN_LABEL = -1
"""Label value for a sample whose label the source does not have (e.g. conversion)."""

# Episode columns, in file order.
COL_TASK_KEY = "task_key"  # string: the raw task key value
COL_TASK_ID = "task_id"  # int64: signed_hash("task", task_key), stable across intervals
COL_EPISODE = "episode"  # int32: index of the episode within its task, 0 = oldest
COL_N_SUPPORT = "n_support"  # int32: real support samples (the rest of K is padding)
COL_N_QUERY = "n_query"  # int32: real query samples
COL_SPARSE = "sparse"  # list<int64>, (K+Q) * sparse_width feature ids (0 = null/padding)
COL_DENSE = "dense"  # list<float32>, (K+Q) * dense_width transformed dense values
COL_CLICK = "click"  # list<int8>, K+Q
COL_CONVERSION = "conversion"  # list<int8>, K+Q (UNKNOWN_LABEL where unknown)
COL_EVENT_TIME = "event_time_ms"  # list<int64>, K+Q epoch milliseconds (0 for padding)
EPISODE_COLUMNS = (
    COL_TASK_KEY,
    COL_TASK_ID,
    COL_EPISODE,
    COL_N_SUPPORT,
    COL_N_QUERY,
    COL_SPARSE,
    COL_DENSE,
    COL_CLICK,
    COL_CONVERSION,
    COL_EVENT_TIME,
)


class ContractError(ValueError):
    """The episode data or its manifest does not match the contract this code was built for."""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """A sparse feature: a raw categorical or multi-valued column hashed into its own table."""

    name: str
    source: str
    """Raw column it is computed from (``event_time`` for the derived ``hour_of_day``)."""
    kind: str
    """``categorical`` (one slot) or ``multi`` (``slots`` values, 0-padded)."""
    buckets: int
    """Rows of its embedding table, row 0 (null/padding) included."""
    slots: int
    offset: int
    """First slot of this feature in a sample's ``sparse_width`` ids."""


@dataclass(frozen=True, slots=True)
class DenseSpec:
    """A dense feature; ``transform`` is ``identity`` or ``log1p``; nulls become 0.0."""

    name: str
    source: str
    transform: str
    index: int


@dataclass(slots=True)
class Manifest:
    """``_manifest.json``: the contract the trainer reads. See the module docstring for layout."""

    schema_version: int
    interval: dict[str, str]
    task_key: str
    k_support: int
    q_query: int
    min_support: int
    min_query: int
    hash: dict[str, Any]
    features: list[FeatureSpec]
    dense_features: list[DenseSpec]
    splits: dict[str, dict[str, int]]
    files: list[dict[str, Any]]
    """One entry per data file: ``{path, split, bucket, rows, row_groups, bytes, sha256,
    data_sha256}``, ``path`` relative to the root and ``/``-separated; ``sha256`` hashes the
    file's bytes, ``data_sha256`` its rows (:func:`data_sha256`; absent in older manifests)."""
    content_hash: str
    """:func:`content_hash` of ``files``: what the data is, stable across writers and reruns."""
    time_range: dict[str, str] = field(default_factory=dict)
    accounting: dict[str, Any] = field(default_factory=dict)
    split_rule: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] | None = None
    producer: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def sparse_width(self) -> int:
        return sum(f.slots for f in self.features)

    @property
    def dense_width(self) -> int:
        return len(self.dense_features)

    @property
    def samples_per_episode(self) -> int:
        return self.k_support + self.q_query

    def table_offsets(self) -> list[int]:
        """Start row of each feature's table when all tables are stacked into one id space."""
        offsets, total = [], 0
        for f in self.features:
            offsets.append(total)
            total += f.buckets
        return offsets

    def files_of(self, split: str) -> list[dict[str, Any]]:
        if split not in ALL_SPLITS:
            raise ContractError(f"unknown split {split!r}: the splits are {', '.join(ALL_SPLITS)}")
        return [f for f in self.files if f["split"] == split]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if not isinstance(d, dict):
            raise ContractError(
                f"not an episode manifest: a JSON {type(d).__name__}, not an object"
            )
        if d.get("format") != FORMAT:
            raise ContractError(
                f"not an episode manifest: format is {d.get('format')!r}, expected {FORMAT!r}"
            )
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ContractError(
                f"episode schema version {d.get('schema_version')!r} is not supported by this trainer "
                f"(it reads version {SCHEMA_VERSION}); rerun the ETL with a matching metarec version"
            )
        try:
            d = dict(d)
            d["features"] = [FeatureSpec(**f) for f in d["features"]]
            d["dense_features"] = [DenseSpec(**f) for f in d["dense_features"]]
            manifest = cls(**d)
        except (KeyError, TypeError) as e:
            raise ContractError(f"malformed episode manifest: {e}") from e
        _check_types(manifest)
        return manifest


_FILE_KEYS = {"path": str, "split": str, "rows": int, "row_groups": int, "sha256": str}
_OPTIONAL_FILE_KEYS = {"bucket": (int, type(None)), "bytes": int, "data_sha256": str}


def _check_types(m: Manifest) -> None:
    """Every field of the expected JSON type (a damaged or hand-edited manifest fails here, named,
    instead of deep inside the reader)."""

    def need(value: Any, tp: type | tuple[type, ...], where: str) -> None:
        ok = isinstance(value, tp) and not isinstance(value, bool)  # no field is a boolean
        if not ok or (isinstance(value, int) and value < 0):
            raise ContractError(f"malformed episode manifest: {where} is {value!r}")

    for obj, where in [(m, ""), *((f, f"features[{i}].") for i, f in enumerate(m.features)),
                       *((f, f"dense_features[{i}].") for i, f in enumerate(m.dense_features))]:  # fmt: skip
        for name, tp in _FIELD_TYPES[type(obj)].items():
            need(getattr(obj, name), tp, where + name)
    for split, counts in m.splits.items():
        need(counts, dict, f"splits.{split}")
        for key, value in counts.items():
            need(value, int, f"splits.{split}.{key}")
    for i, f in enumerate(m.files):
        need(f, dict, f"files[{i}]")
        for key, tp in _FILE_KEYS.items():
            need(f.get(key), tp, f"files[{i}].{key}")
        for key, tp in _OPTIONAL_FILE_KEYS.items():
            if key in f:
                need(f[key], tp, f"files[{i}].{key}")
        try:  # the reader opens <root>/<path>: never a file outside the ETL output
            check_relative(f["path"], f"files[{i}].path")
        except ValueError as e:
            raise ContractError(f"malformed episode manifest: {e}") from None


def content_hash(files: list[dict[str, Any]]) -> str:
    """The dataset's content hash: sha256 of the lines ``"<path>\\t<data_sha256>\\n"`` sorted by
    path, where ``data_sha256`` is each file's :func:`data_sha256`.

    It names what the data IS, not the bytes a writer chose: the same episodes rewritten with
    another compression, row-group size, encoding order or Parquet writer keep their content
    hash, so a rerun of the ETL never orphans the checkpoints trained on the first run (their
    resume and export compare this hash). Each file's ``sha256`` (its bytes) is still what the
    reader's checksum verification compares.
    """
    import hashlib

    missing = [f["path"] for f in files if "data_sha256" not in f]
    if missing:
        raise ContractError(f"no data_sha256 for {', '.join(missing[:3])}: cannot hash the content")
    lines = "".join(
        f"{f['path']}\t{f['data_sha256']}\n" for f in sorted(files, key=lambda f: f["path"])
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def data_sha256(source: Any) -> str:
    """sha256 of the rows an episode Parquet file holds, whatever wrote it and however.

    Decodes the file (``source``: a path or a pyarrow file) batch by batch and hashes, per column
    in file order, separate streams: null positions, list lengths, string bytes and fixed-width
    values (with their dtype). Streams make it independent of batch and row-group boundaries;
    nothing of the file's layout (compression, encodings, page or row-group sizes, footer)
    enters it.
    """
    import hashlib

    import pyarrow.parquet as pq

    streams: dict[str, Any] = {}
    seen: dict[str, int] = {}  # values fed so far per array key: where a batch's nulls lie

    def feed(key: str, data: bytes) -> None:
        streams.setdefault(key, hashlib.sha256()).update(data)

    parquet = pq.ParquetFile(source)
    # Small batches: an episode row holds K + Q samples of every column. Hashing a 10M-row
    # interval's 64 files: 65,536 rows a batch peaked at 996 MB RSS (16.6 s), 256 at 254 MB (9.2 s).
    for batch in parquet.iter_batches(batch_size=256):
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            _feed_array(feed, seen, name, column)
    text = f"rows\t{parquet.metadata.num_rows}\n" + "".join(
        f"{key}\t{h.hexdigest()}\n" for key, h in streams.items()
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _feed_array(feed: Any, seen: dict[str, int], key: str, array: Any) -> None:
    """Feed one array's streams: its nulls' positions, then lengths and values by type."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    start = seen.get(key, 0)
    seen[key] = start + len(array)
    kind = array.type
    if array.null_count:
        nulls = np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)) + start
        feed(f"{key}:nulls", nulls.astype(np.int64).tobytes())
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.fill_null(pc.list_value_length(array), 0).cast(pa.int64())
        feed(f"{key}:lengths", lengths.to_numpy().tobytes())
        _feed_array(feed, seen, key + "[]", pc.list_flatten(array))
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        lengths = pc.fill_null(pc.binary_length(array), 0).cast(pa.int64())
        feed(f"{key}:lengths", lengths.to_numpy().tobytes())
        feed(f"{key}:utf8", "".join(v for v in array.to_pylist() if v).encode())
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        if array.null_count:
            array = pc.fill_null(array, pa.scalar(False if pa.types.is_boolean(kind) else 0, kind))
        values = array.to_numpy(zero_copy_only=False)
        feed(f"{key}:{values.dtype}", values.tobytes())
    else:
        raise ContractError(f"column {key!r} of type {kind} is not an episode column type")


def load_manifest(root: str) -> Manifest:
    """Read ``<root>/_manifest.json`` from a local path or any ``pyarrow.fs`` URI.

    Raises:
        ContractError: the manifest is missing (the ETL output is incomplete), unreadable, or of
            another schema version.
    """
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(root) if "://" in root else (pafs.LocalFileSystem(), root)
    mpath = path.rstrip("/") + "/" + MANIFEST_NAME
    try:
        with fs.open_input_stream(mpath) as f:
            raw = f.read()
    except FileNotFoundError:
        raise ContractError(
            f"{root}: no {MANIFEST_NAME} — not an ETL output, or the ETL did not finish "
            "(the manifest is written last); run `metarec etl` for this interval"
        ) from None
    try:
        return Manifest.from_dict(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # damaged bytes: not even UTF-8
        raise ContractError(f"{root}/{MANIFEST_NAME} is not valid JSON: {e}") from e


def _json_types(cls: type) -> dict[str, type | tuple[type, ...]]:
    """The JSON type of each field of a manifest dataclass (``X | None`` fields allow None)."""
    base = {"int": int, "str": str, "dict": dict, "list": list}
    out: dict[str, type | tuple[type, ...]] = {}
    for f in fields(cls):
        text = str(f.type)
        head = text.split("[")[0].split(" |")[0]
        tp = base[head]
        out[f.name] = (tp, type(None)) if text.endswith("| None") else tp
    return out


_FIELD_TYPES = {c: _json_types(c) for c in (Manifest, FeatureSpec, DenseSpec)}
