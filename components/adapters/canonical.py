"""Vectorised helpers that turn parsed source columns into tables of the canonical raw schema."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.adapters.accounting import Accounting
from components.raw_schema import RAW_COLUMNS, arrow_schema

_SCHEMA = arrow_schema()
INT_RE = r"^[0-9]{1,18}$"  # fits int64; longer ids are rejected as bad values
NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
MS_PER_HOUR = 3_600_000


def raw_table(num_rows: int, columns: Mapping[str, pa.Array | str | None]) -> pa.Table:
    """A table with exactly the raw schema: given columns cast to their type, the rest null.

    A ``str`` value is repeated for every row (e.g. ``scene_id="movielens"``).
    """
    unknown = set(columns) - set(RAW_COLUMNS)
    assert not unknown, f"not raw schema columns: {sorted(unknown)}"
    arrays = []
    for f in _SCHEMA:
        value = columns.get(f.name)
        if value is None:
            assert f.nullable, f"required raw column {f.name} not mapped"
            arrays.append(pa.nulls(num_rows, f.type))
        elif isinstance(value, str):
            arrays.append(pa.repeat(pa.scalar(value, f.type), num_rows))
        else:
            arrays.append(value if value.type == f.type else pc.cast(value, f.type))
        assert len(arrays[-1]) == num_rows, f.name
    return pa.Table.from_arrays(arrays, schema=_SCHEMA)


def is_int(values: pa.Array) -> pa.Array:
    """True where the string is a non-negative decimal integer."""
    return pc.match_substring_regex(values, INT_RE)


def is_nonempty(values: pa.Array) -> pa.Array:
    return pc.greater(pc.utf8_length(values), 0)


def in_set(values: pa.Array, allowed: list[str]) -> pa.Array:
    return pc.is_in(values, value_set=pa.array(allowed, pa.string()))


def empty_to_null(values: pa.Array, *null_markers: str) -> pa.Array:
    """Empty strings (and any of ``null_markers``, e.g. ``"NULL"``) become null."""
    missing = pc.equal(pc.utf8_length(values), 0)
    for marker in null_markers:
        missing = pc.or_(missing, pc.equal(values, marker))
    return pc.if_else(missing, pa.scalar(None, pa.string()), values)


def optional_number(
    values: pa.Array,
    column: str,
    acct: Accounting,
    *,
    minimum: float = 0.0,
    null_markers: tuple[str, ...] = ("NULL",),
) -> pa.Array:
    """A float64 column from an optional numeric field: empty/markers -> null; values that do not
    parse, are not finite or are below ``minimum`` -> null, counted in ``acct.values_nulled``."""
    values = empty_to_null(values, *null_markers)
    ok = pc.match_substring_regex(values, NUMBER_RE)
    parsed = pc.cast(pc.if_else(ok, values, pa.scalar(None, pa.string())), pa.float64())
    ok = pc.and_(ok, pc.and_(pc.is_finite(parsed), pc.greater_equal(parsed, minimum)))
    bad = pc.sum(pc.and_(pc.is_valid(values), pc.invert(pc.fill_null(ok, False)))).as_py() or 0
    if bad:
        acct.values_nulled[column] += bad
    return pc.if_else(pc.fill_null(ok, False), parsed, pa.scalar(None, pa.float64()))


def recode(values: pa.Array, mapping: Mapping[str, str]) -> pa.Array:
    """Replace codes by names (e.g. ``{"1": "m", "2": "f"}``); other values pass through; empty
    strings become null."""
    values = empty_to_null(values)
    for code, name in mapping.items():
        values = pc.if_else(pc.equal(values, code), name, values)
    return values


class KeyIndex:
    """Row positions of a lookup table's integer keys (user ids, item ids), built once.

    ``pc.index_in`` would rebuild a hash table of the whole lookup table for every block (a
    second per block for Taobao's million users). Ids of these datasets are dense integers, so a
    direct-address array (row = table[key]) answers in one gather; sparse keys (a maximum above
    16 x the row count) fall back to binary search. Duplicate keys: the first row wins.
    """

    def __init__(self, keys: pa.Array) -> None:
        k = pc.cast(keys, pa.int64()).to_numpy(zero_copy_only=False)
        self.duplicates = int(len(k) - len(np.unique(k))) if len(k) else 0
        top = int(k.max()) if len(k) else -1
        self._direct: np.ndarray | None = None
        if top < max(16 * len(k), 1 << 20):
            self._direct = np.full(top + 2, -1, dtype=np.int64)  # last slot: "not found"
            self._direct[k[::-1]] = np.arange(len(k) - 1, -1, -1)  # first occurrence wins
        else:
            order = np.argsort(k, kind="stable")
            self._sorted, self._rows = k[order], order

    def find(self, keys: pa.Array) -> pa.Array:
        """Row of each key, null where the key is absent or not an integer (see :func:`is_int`)."""
        ok = np.asarray(is_int(keys).to_numpy(zero_copy_only=False), dtype=bool)
        k = pc.cast(pc.if_else(pa.array(ok), keys, "-1"), pa.int64()).to_numpy()
        if self._direct is not None:
            top = len(self._direct) - 1
            rows = self._direct[np.where(ok & (k < top), k, top)]
            return pa.array(rows, pa.int64(), mask=rows < 0)
        if len(self._sorted) == 0:
            return pa.nulls(len(k), pa.int64())
        pos = np.minimum(np.searchsorted(self._sorted, k), len(self._sorted) - 1)
        found = ok & (self._sorted[pos] == k)
        return pa.array(self._rows[pos], pa.int64(), mask=~found)


def timestamps_ms(ms: np.ndarray | pa.Array) -> pa.Array:
    return pc.cast(pa.array(ms, pa.int64()), pa.timestamp("ms", tz="UTC"))


def parse_base_time(text: str) -> int:
    """Milliseconds since the epoch of an ISO-8601 UTC time (``2017-05-06T00:00:00Z``, ``...+00:00``
    or no offset); a ``ValueError`` says what is expected."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(
            f"base time {text!r} is not ISO-8601: use e.g. 2017-05-06T00:00:00Z"
        ) from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def format_ms(ms: int) -> str:
    """``2017-05-06T00:00:00.000Z`` for milliseconds since the epoch."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def hour_label(hour: int) -> str:
    """``2017-05-06T00`` for an hour number since the epoch (the ETL's ``--start`` format)."""
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H")


def safe_label(text: str) -> str:
    """A file stem usable inside an event id (letters, digits, ``_``, ``.``)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", text)


def distinct_by_frequency(values: pa.Array, keep: np.ndarray, width: int) -> pa.Array:
    """Per row of a ``(rows, width)`` history, its distinct values, most frequent first (ties: the
    one that appears first in the row), skipping entries where ``keep`` is false; rows with
    nothing kept get null.

    Args:
        values: the history flattened row-major (``rows * width`` strings).
        keep: boolean mask of the same shape (e.g. the source's history mask).
        width: entries per row.

    Example: the row ``["7", "3", "7", "9", "3", "7"]`` becomes ``["7", "3", "9"]``.
    """
    n = len(values) // width
    encoded = pc.dictionary_encode(values)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64).reshape(n, width)
    codes = np.where(keep.reshape(n, width), codes, -1)
    pos = np.argsort(codes, axis=1, kind="stable")  # equal codes keep their column order
    srt = np.take_along_axis(codes, pos, axis=1)
    start = np.ones_like(srt, dtype=bool)
    start[:, 1:] = srt[:, 1:] != srt[:, :-1]
    run_len = np.bincount(np.cumsum(start.ravel()) - 1)
    rows = np.repeat(np.arange(n), width)[start.ravel()]
    vals, first = srt.ravel()[start.ravel()], pos.ravel()[start.ravel()]
    ok = vals >= 0
    rows, vals, first, run_len = rows[ok], vals[ok], first[ok], run_len[ok]
    order = np.lexsort((first, -run_len, rows))
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    flat = encoded.dictionary.take(pa.array(vals[order], pa.int64()))
    empty = pa.array(offsets[1:] == offsets[:-1])
    return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=empty)
