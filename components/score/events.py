"""Read raw events (JSONL, JSONL.gz or Parquet; a file or a ``dt=/hr=`` tree) in typed batches.

No Spark: numpy + pyarrow only, so ``metarec score`` runs in the trainer image. Every batch is the
*canonical* table of the ETL's parse step (:mod:`components.etl.rows`): the raw columns typed (ids
and categoricals as strings, lists of strings, dense and labels as float64) with the event time
as epoch milliseconds ``_t``, plus

    _line       the row's line (JSONL, 1-based, blank lines counted) or row number (Parquet)
    _malformed  the line is not a JSON object
    _bad_type   ",f1,f2," the fields present but not of their type, in raw-schema order (or null)

JSONL follows the ETL's reading rules: ids and categoricals accept any JSON scalar as its text
(``123`` -> ``"123"``, ``true`` -> ``"true"``), dense values and labels accept numbers and numeric
strings, ``event_time`` must be ISO-8601 text (naive = UTC), unknown keys are ignored, blank lines
are not rows. A block is parsed by pyarrow's JSON reader when every value has its expected JSON
type (the common case, ~1M lines/s); a block it refuses is parsed line by line in Python.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.etl.extract import filesystem, format_of
from components.etl.rows import ISO_8601
from components.raw_schema import FIELDS_BY_NAME, JSON_WHITESPACE, RAW_FIELDS

log = logging.getLogger(__name__)
_TYPES = {"id": pa.string(), "time": pa.string(), "categorical": pa.string(),
          "multi": pa.list_(pa.string()), "dense": pa.float64(), "label": pa.float64()}  # fmt: skip
JSON_SCHEMA = pa.schema([(f.name, _TYPES[f.kind]) for f in RAW_FIELDS])
_NUMBER = re.compile(r"\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf|infinity)\s*", re.I)
_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)$"


@dataclass
class RawBatch:
    """One batch of canonical rows from one file (see the module docstring)."""

    table: pa.Table
    source: str
    """The file, relative to the input root (the file name when the input is a file)."""
    raw: list[str] | None
    """The original line of each row (JSONL), for the rejects file."""
    position: int = 0
    """Input bytes (compressed, over all files in order) read up to the end of this batch."""


@dataclass
class EventFile:
    path: str
    rel: str
    fmt: str
    size: int


def list_event_files(uri: str) -> tuple[Any, list[EventFile]]:
    """``(pyarrow filesystem, files)`` of a file or of every data file under a directory (any
    depth, sorted; names starting with ``_`` or ``.`` skipped, as the ETL does).

    Raises:
        FileNotFoundError: nothing at ``uri``.
        ValueError: a file of unknown format was named, or a directory holds no data file.
    """
    import pyarrow.fs as pafs

    fs, base = filesystem(uri)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    if info.type == pafs.FileType.File:
        if format_of(info.base_name) is None:
            raise ValueError(
                f"{uri}: not .jsonl, .jsonl.gz or .parquet; name the format by its suffix"
            )
        return fs, [EventFile(base, info.base_name, format_of(info.base_name), info.size)]
    files = []
    for f in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        rel = f.path[len(base) :].lstrip("/")
        if f.type != pafs.FileType.File or any(p.startswith(("_", ".")) for p in rel.split("/")):
            continue
        if (fmt := format_of(f.base_name)) is not None:
            files.append(EventFile(f.path, rel, fmt, f.size))
    if not files:
        raise ValueError(f"{uri} holds no .jsonl, .jsonl.gz or .parquet file")
    return fs, sorted(files, key=lambda f: f.rel)


# ------------------------------------------------------------------------------------- JSONL


def _text(v: Any) -> str | None:
    """A categorical's text as Spark reads a JSON value into a string column."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)  # objects, arrays


def _number(v: Any) -> tuple[float | None, bool]:
    """``(value, ok)`` of a dense/label value: numbers (kept as text by the parser) and numeric
    strings; anything else is a type error."""
    if v is None:
        return None, True
    if isinstance(v, str) and _NUMBER.fullmatch(v):
        return float(v), True
    return None, False


def _parse_lines(lines: list[str]) -> dict[str, list]:
    """The canonical columns of ``lines``, one line at a time (the slow, exact path)."""
    cols: dict[str, list] = {f.name: [] for f in RAW_FIELDS}
    malformed, bad = [], []
    for line in lines:
        try:  # numbers stay text: a JSON 1.0 id hashes as "1.0", as in the ETL
            obj = json.loads(line, parse_int=str, parse_float=str, parse_constant=str)
        except ValueError:
            obj = None
        ok = isinstance(obj, dict)
        malformed.append(not ok)
        obj = obj if ok else {}
        wrong = []
        for f in RAW_FIELDS:
            v = obj.get(f.name)
            if f.kind in ("dense", "label"):
                v, good = _number(v)
            elif f.kind == "multi":
                good = v is None or isinstance(v, list)
                v = [_text(x) for x in v] if good and v is not None else None
            else:
                v, good = _text(v), True
            cols[f.name].append(v)
            if not good:
                wrong.append(f.name)
        bad.append("," + ",".join(wrong) + "," if wrong else None)
    cols["_malformed"], cols["_bad_type"] = malformed, bad
    return cols


def _event_ms(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(epoch ms, valid)`` of ISO-8601 event times; naive times are UTC."""
    n = len(text)
    ms = np.zeros(n, np.int64)
    valid = pc.fill_null(pc.match_substring_regex(text, ISO_8601), False).to_numpy(
        zero_copy_only=False
    )
    zoned = pc.fill_null(pc.match_substring_regex(text, _ZONE), False).to_numpy(
        zero_copy_only=False
    )
    for mask, typ in (
        (valid & zoned, pa.timestamp("ns", "UTC")),
        (valid & ~zoned, pa.timestamp("ns")),
    ):
        idx = np.flatnonzero(mask)
        if not len(idx):
            continue
        values = pc.take(text, pa.array(idx))
        try:
            ns = pc.cast(values, typ).cast(pa.int64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. month 13: one at a time
            ns = np.zeros(len(idx), np.int64)
            for j, v in enumerate(values):
                try:
                    ns[j] = pc.cast(pa.array([v.as_py()]), typ).cast(pa.int64())[0].as_py()
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    valid[idx[j]] = False
        ms[idx] = np.floor_divide(ns, 1_000_000)
    return ms, valid


def _finish_jsonl(cols: dict[str, Any], lines_no: list[int]) -> pa.Table:
    """Typed table from parsed columns: event time to ``_t``, its type errors into ``_bad_type``."""
    table = cols if isinstance(cols, pa.Table) else pa.table(
        {**{f.name: pa.array(cols[f.name], _TYPES[f.kind]) for f in RAW_FIELDS},
         "_malformed": pa.array(cols["_malformed"], pa.bool_()),
         "_bad_type": pa.array(cols["_bad_type"], pa.string())})  # fmt: skip
    text = table.column("event_time").combine_chunks()
    ms, valid = _event_ms(text)
    present = pc.is_valid(text).to_numpy(zero_copy_only=False)
    bad_time = (
        present
        & ~valid
        & (pc.fill_null(pc.not_equal(text, ""), True).to_numpy(zero_copy_only=False))
    )
    bad = table.column("_bad_type").to_pylist()
    bad = [(",event_time" + (b or ",")) if bt else b for b, bt in zip(bad, bad_time, strict=True)]
    i = table.schema.get_field_index("event_time")
    table = table.set_column(i, "_t", pa.array(ms, pa.int64(), mask=~valid))
    table = table.set_column(
        table.schema.get_field_index("_bad_type"), "_bad_type", pa.array(bad, pa.string())
    )
    return table.append_column("_line", pa.array(lines_no, pa.int64()))


def _jsonl_block(lines: list[str], lines_no: list[int]) -> pa.Table:
    import pyarrow.json as pj

    data = "\n".join(lines).encode("utf-8", errors="replace")
    try:
        table = pj.read_json(
            io.BytesIO(data),
            read_options=pj.ReadOptions(block_size=max(len(data) + 1, 1 << 20)),
            parse_options=pj.ParseOptions(
                explicit_schema=JSON_SCHEMA, unexpected_field_behavior="ignore"
            ),
        )
        if table.num_rows != len(lines):
            raise pa.ArrowInvalid("row count differs from the line count")
        table = table.select(JSON_SCHEMA.names)
        table = table.append_column("_malformed", pa.array(np.zeros(len(lines), bool)))
        table = table.append_column("_bad_type", pa.nulls(len(lines), pa.string()))
        return _finish_jsonl(table, lines_no)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _finish_jsonl(_parse_lines(lines), lines_no)


def _read_jsonl(fs: Any, f: EventFile, batch_rows: int) -> Iterator[RawBatch]:
    lines, numbers = [], []
    with fs.open_input_file(f.path) as raw:
        stream = pa.CompressedInputStream(raw, "gzip") if f.fmt == "jsonl.gz" else raw
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="\n")
        for n, line in enumerate(text, 1):
            line = line.rstrip("\r\n")
            if not line.strip(JSON_WHITESPACE):
                continue  # a blank line is not a row (the ETL's definition)
            lines.append(line)
            numbers.append(n)
            if len(lines) == batch_rows:
                yield RawBatch(_jsonl_block(lines, numbers), f.rel, lines, raw.tell())
                lines, numbers = [], []
        if lines:
            yield RawBatch(_jsonl_block(lines, numbers), f.rel, lines, f.size)


# ----------------------------------------------------------------------------------- Parquet


def _parquet_column(batch: pa.RecordBatch, name: str, where: str) -> pa.Array:
    kind = FIELDS_BY_NAME[name].kind
    if name not in batch.schema.names:
        return pa.nulls(batch.num_rows, pa.int64() if kind == "time" else _TYPES[kind])
    col = batch.column(name)
    try:
        if kind == "time":
            if not pa.types.is_timestamp(col.type):
                raise pa.ArrowInvalid(f"not a timestamp ({col.type})")
            raw = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
            unit = col.type.unit
            ms = raw * 1000 if unit == "s" else raw // {"ms": 1, "us": 1000, "ns": 1_000_000}[unit]
            return pa.array(ms, pa.int64(), mask=col.is_null().to_numpy(zero_copy_only=False))
        return col.cast(_TYPES[kind])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{where}: column {name!r} of type {col.type} cannot be read as the raw "
                         f"schema's {kind} ({e}); fix the file or its adapter") from None  # fmt: skip


def _read_parquet(fs: Any, f: EventFile, batch_rows: int) -> Iterator[RawBatch]:
    import pyarrow.parquet as pq

    with fs.open_input_file(f.path) as src:
        try:
            pfile = pq.ParquetFile(src)
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{f.rel} is not a readable Parquet file ({e})") from None
        names = [c for c in JSON_SCHEMA.names if c in pfile.schema_arrow.names]
        start, total = 0, max(pfile.metadata.num_rows, 1)
        for batch in pfile.iter_batches(batch_size=batch_rows, columns=names):
            n = batch.num_rows
            cols = {x.name if x.name != "event_time" else "_t": _parquet_column(batch, x.name, f.rel)
                    for x in RAW_FIELDS}  # fmt: skip
            cols["_malformed"] = pa.array(np.zeros(n, bool))
            cols["_bad_type"] = pa.nulls(n, pa.string())
            cols["_line"] = pa.array(np.arange(start + 1, start + n + 1, dtype=np.int64))
            start += n
            yield RawBatch(pa.table(cols), f.rel, None, f.size * start // total)


def read_events(uri: str, batch_rows: int = 65_536) -> Iterator[RawBatch]:
    """Canonical batches of every event file under ``uri`` (module docstring), in file order."""
    fs, files = list_event_files(uri)
    before = 0
    for f in files:
        reader = _read_parquet if f.fmt == "parquet" else _read_jsonl
        for batch in reader(fs, f, batch_rows):
            batch.position += before
            yield batch
        before += f.size


def total_bytes(uri: str) -> int:
    """Bytes of the event files under ``uri`` (for the ETA of a scoring run)."""
    return sum(f.size for f in list_event_files(uri)[1])
