"""Validate canonical raw rows and encode them exactly as the ETL encodes episode samples.

Validation is the reader's: every row of :mod:`components.score.events` carries the reason code
that :mod:`components.raw_records` (the ETL's parser) gives it, with the ``click`` label required
(support events, which adaptation learns from) or not (events to score: serving traffic has no
label yet). Time-window rules (``event_time_out_of_range``) are interval rules of the ETL and do
not apply here.

Encoding is the Python twin of :mod:`components.etl.encode` (ids with
:func:`trainer.data.hashing.feature_id`, per feature of the model's spec in slot order; a
multi-valued field keeps its first ``slots`` values, 0-padded; ``hour_of_day`` hashes the UTC hour
of ``event_time`` as "0".."23"; dense values transformed, null -> 0.0, float32; an unknown
conversion is -1). It is vectorised over a batch: each distinct value of a column is hashed once
(Arrow dictionary encoding) and the ids are gathered with numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.etl.config import DERIVED_SOURCES
from components.raw_schema import FIELDS_BY_NAME
from trainer.data.contract import UNKNOWN_LABEL, DenseSpec, FeatureSpec
from trainer.data.hashing import feature_id

DUPLICATE = "duplicate_event_id"


def check_spec(features: Sequence[FeatureSpec], dense: Sequence[DenseSpec], task_key: str) -> None:
    """Refuse a model whose features are not computed from raw-log columns (e.g. a model trained
    on synthetic episodes): it can score episodes, not raw events."""
    problems = []
    for f in features:
        raw = FIELDS_BY_NAME.get(f.source)
        if f.source in DERIVED_SOURCES:
            ok = f.name == DERIVED_SOURCES[f.source] and f.kind == "categorical"
        else:
            ok = raw is not None and (raw.kind == "multi") == (f.kind == "multi") and raw.kind in (
                "id", "categorical", "multi")  # fmt: skip
        if not ok:
            problems.append(f"sparse feature {f.name!r} (source {f.source!r}, {f.kind})")
    for d in dense:
        raw = FIELDS_BY_NAME.get(d.source)
        if raw is None or raw.kind != "dense" or d.transform not in ("identity", "log1p"):
            problems.append(f"dense feature {d.name!r} (source {d.source!r}, {d.transform})")
    if problems:
        raise ValueError(
            "this model's features are not computed from raw ad-log columns: "
            + ", ".join(problems)
            + ". It was trained on episodes that no raw event maps to (e.g. synthetic episodes); "
            "score ETL episodes with it instead, or train on `metarec etl` output"
        )
    if FIELDS_BY_NAME.get(task_key) is None or FIELDS_BY_NAME[task_key].kind != "id":
        raise ValueError(f"task key {task_key!r} is not an id column of the raw schema")


def _np(a: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False) if isinstance(a, pa.Array) else np.asarray(a)


def validate(table: pa.Table, labels_required: bool) -> np.ndarray:
    """One reason per row (``None`` for a good row): the reader's verdict
    (:mod:`components.score.events`), with the click label required or not."""
    column = "_reason" if labels_required else "_reason_unlabelled"
    return np.array(table.column(column).to_pylist(), dtype=object)


@dataclass
class Encoded:
    """Encoded samples (the ETL's per-sample episode values) of the good rows of a batch."""

    event_id: np.ndarray
    """(n,) str."""
    task: np.ndarray
    """(n,) str: the task key's value."""
    t: np.ndarray
    """(n,) int64 epoch ms."""
    sparse: np.ndarray
    """(n, S) int64 local ids, slot order of the spec."""
    dense: np.ndarray
    """(n, Dn) float32 transformed dense values."""
    click: np.ndarray
    """(n,) float32; NaN where the event has no click label."""
    conversion: np.ndarray
    """(n,) float32; -1 where unknown."""

    def __len__(self) -> int:
        return len(self.event_id)

    def take(self, rows: np.ndarray) -> Encoded:
        return Encoded(*(getattr(self, k)[rows] for k in self.__dataclass_fields__))


def _hashed(name: str, buckets: int, values: pa.Array) -> np.ndarray:
    """``feature_id(name, v, buckets)`` of every value (0 for null), each distinct value once."""
    encoded = pc.dictionary_encode(values)
    table = np.array([feature_id(name, v, buckets) for v in encoded.dictionary.to_pylist()] + [0])
    return table[_np(encoded.indices.fill_null(len(encoded.dictionary)))].astype(np.int64)


def _multi(name: str, buckets: int, slots: int, values: pa.Array) -> np.ndarray:
    """(n, slots) ids of a list column: its first ``slots`` values, 0-padded (null list: all 0)."""
    n = len(values)
    lengths = _np(pc.list_value_length(values).fill_null(0)).astype(np.int64)
    flat = _hashed(name, buckets, pc.list_flatten(values))
    starts = np.cumsum(lengths) - lengths
    out = np.zeros((n, slots), np.int64)
    for j in range(slots):
        has = lengths > j
        out[has, j] = flat[starts[has] + j]
    return out


def encode(
    table: pa.Table, features: Sequence[FeatureSpec], dense: Sequence[DenseSpec], task_key: str
) -> Encoded:
    """Encode validated rows (``table`` holds only good rows) for a model's feature spec."""
    n = table.num_rows
    t = _np(table.column("_t").combine_chunks()).astype(np.int64)
    sparse = np.zeros((n, sum(f.slots for f in features)), np.int64)
    at = 0
    for f in features:
        if f.source == "event_time":  # hour_of_day: the UTC hour as text
            hours = np.array([feature_id(f.name, str(h), f.buckets) for h in range(24)])
            sparse[:, at] = hours[(t // 3_600_000) % 24]
        elif f.kind == "multi":
            sparse[:, at : at + f.slots] = _multi(f.name, f.buckets, f.slots,
                                                  table.column(f.source).combine_chunks())  # fmt: skip
        else:
            sparse[:, at] = _hashed(f.name, f.buckets, table.column(f.source).combine_chunks())
        at += f.slots
    values = np.zeros((n, len(dense)), np.float32)
    for j, d in enumerate(sorted(dense, key=lambda d: d.index)):
        x = _np(table.column(d.source).combine_chunks()).astype(np.float64)  # null -> NaN
        x = np.log1p(x) if d.transform == "log1p" else x
        values[:, j] = np.where(np.isnan(x), 0.0, x).astype(np.float32)
    click = _np(table.column("click").combine_chunks()).astype(np.float32)
    conv = _np(table.column("conversion").combine_chunks()).astype(np.float64)
    return Encoded(
        event_id=_np(table.column("event_id").combine_chunks()).astype(object),
        task=_np(table.column(task_key).combine_chunks()).astype(object),
        t=t,
        sparse=sparse,
        dense=values,
        click=click,
        conversion=np.where(np.isnan(conv), UNKNOWN_LABEL, conv).astype(np.float32),
    )
