"""Read raw events (JSONL, JSONL.gz or Parquet; a file or a ``dt=/hr=`` tree) in typed batches.

No Spark: numpy + pyarrow only, so ``metarec score`` runs in the trainer image. Every batch is the
*canonical* table of the ETL's parse step (:mod:`components.etl.rows`): the raw columns typed (ids
and categoricals as strings, lists of strings, dense and labels as float64) with the event time
as epoch milliseconds ``_t``, plus

    _line         the row's line (JSONL, 1-based, blank lines counted) or row number (Parquet)
    _line_reason  ``line_too_long`` or ``malformed_record`` when the line is not one record
    _bad_type     ",f1,f2," the fields present but not of their type, in raw-schema order (or null)

JSONL follows the rules of :mod:`components.raw_rules`, which the ETL compiles to Spark: lines end
at LF, CR or CRLF; a line holds exactly one JSON object; ids and categoricals are strings,
booleans or integers, read as their text (:func:`~components.raw_rules.id_text`); dense values and
labels are numbers or numeric strings; ``event_time`` is ISO-8601 text (naive = UTC); unknown keys
are ignored; blank lines are not rows. A block is parsed by pyarrow's JSON reader when every line
passes the line rule (checked vectorised, with the same patterns) and every value has its expected
JSON type (the common case, ~1M lines/s); any other block is read line by line with
:func:`components.raw_rules.read_line`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components import raw_rules as rules
from components.etl.extract import filesystem, format_of
from components.raw_schema import FIELDS_BY_NAME, JSON_WHITESPACE, RAW_FIELDS

log = logging.getLogger(__name__)
_TYPES = {"id": pa.string(), "time": pa.string(), "categorical": pa.string(),
          "multi": pa.list_(pa.string()), "dense": pa.float64(), "label": pa.float64()}  # fmt: skip
JSON_SCHEMA = pa.schema([(f.name, _TYPES[f.kind]) for f in RAW_FIELDS])
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


def _parse_lines(lines: list[str]) -> dict[str, list]:
    """The canonical columns of ``lines``, one line at a time (the exact path):
    :func:`components.raw_rules.read_line` of each."""
    cols: dict[str, list] = {f.name: [] for f in RAW_FIELDS}
    line_reasons, bad = [], []
    for line in lines:
        reason, values, wrong = rules.read_line(line)
        line_reasons.append(reason)
        for f in RAW_FIELDS:
            cols[f.name].append(values.get(f.name))
        bad.append("," + ",".join(wrong) + "," if wrong else None)
    cols["_line_reason"], cols["_bad_type"] = line_reasons, bad
    return cols


def _lines_pass(lines: list[str]) -> bool:
    """Whether every line passes :func:`components.raw_rules.line_reason`, vectorised (RE2 runs
    the rule's patterns as Python's ``re`` does)."""
    text = pa.array(lines, pa.string())
    if len(text) and pc.max(pc.utf8_length(text)).as_py() > rules.MAX_LINE_CHARS:
        return False
    for op, pattern in rules.LINE_STEPS:
        if op == "remove":
            text = pc.replace_substring_regex(text, pattern, "")
        elif op == "refuse":
            if pc.any(pc.match_substring_regex(text, pattern)).as_py():
                return False
        elif not pc.all(pc.match_substring_regex(text, f"^(?:{pattern})$")).as_py():
            return False
    inner = pc.utf8_slice_codeunits(text, 1, -1)
    for _ in range(rules.MAX_DEPTH - 1):
        inner = pc.replace_substring_regex(inner, rules.EMPTY_PAIR, "")
    return not len(inner) or pc.max(pc.utf8_length(inner)).as_py() == 0


def _event_ms(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(epoch ms, valid)`` of ISO-8601 event times; naive times are UTC."""
    n = len(text)
    ms = np.zeros(n, np.int64)
    valid = pc.fill_null(pc.match_substring_regex(text, rules.ISO_8601), False).to_numpy(
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


def _with_event_time(bad: str | None) -> str:
    """``_bad_type`` with event_time added, fields kept in raw-schema order."""
    names = {*(bad or ",").strip(",").split(","), "event_time"} - {""}
    return "," + ",".join(f.name for f in RAW_FIELDS if f.name in names) + ","


def _finish_jsonl(cols: dict[str, Any], lines_no: list[int]) -> pa.Table:
    """Typed table from parsed columns: event time to ``_t``, its type errors into ``_bad_type``."""
    table = cols if isinstance(cols, pa.Table) else pa.table(
        {**{f.name: pa.array(cols[f.name], _TYPES[f.kind]) for f in RAW_FIELDS},
         "_line_reason": pa.array(cols["_line_reason"], pa.string()),
         "_bad_type": pa.array(cols["_bad_type"], pa.string())})  # fmt: skip
    text = table.column("event_time").combine_chunks()
    ms, valid = _event_ms(text)
    present = pc.is_valid(text).to_numpy(zero_copy_only=False)
    bad_time = (
        present
        & ~valid
        & (pc.fill_null(pc.not_equal(text, ""), True).to_numpy(zero_copy_only=False))
    )
    bad = [_with_event_time(b) if bt else b
           for b, bt in zip(table.column("_bad_type").to_pylist(), bad_time, strict=True)]  # fmt: skip
    i = table.schema.get_field_index("event_time")
    table = table.set_column(i, "_t", pa.array(ms, pa.int64(), mask=~valid))
    table = table.set_column(
        table.schema.get_field_index("_bad_type"), "_bad_type", pa.array(bad, pa.string())
    )
    return table.append_column("_line", pa.array(lines_no, pa.int64()))


def _jsonl_block(lines: list[str], lines_no: list[int]) -> pa.Table:
    import pyarrow.json as pj

    if not _lines_pass(lines):
        return _finish_jsonl(_parse_lines(lines), lines_no)
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
        table = table.append_column("_line_reason", pa.nulls(len(lines), pa.string()))
        table = table.append_column("_bad_type", pa.nulls(len(lines), pa.string()))
        return _finish_jsonl(table, lines_no)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _finish_jsonl(_parse_lines(lines), lines_no)


def _damaged(f: EventFile, where: str, e: BaseException) -> ValueError:
    """The error that names a file that cannot be read to its end."""
    return ValueError(f"{f.rel}: damaged, unreadable after {where} ({type(e).__name__}: {e}); "
                      "restore the file or move it out of the input")  # fmt: skip


def _read_jsonl(fs: Any, f: EventFile, batch_rows: int) -> Iterator[RawBatch]:
    lines, numbers = [], []
    with fs.open_input_file(f.path) as raw:
        stream = pa.CompressedInputStream(raw, "gzip") if f.fmt == "jsonl.gz" else raw
        # newline=None: LF, CR and CRLF end a line (raw_rules), each read as "\n"
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None)
        n = 0
        try:
            for n, line in enumerate(text, 1):
                line = line.rstrip("\n")
                if not line.strip(JSON_WHITESPACE):
                    continue  # a blank line is not a row (the ETL's definition)
                lines.append(line)
                numbers.append(n)
                if len(lines) == batch_rows:
                    yield RawBatch(_jsonl_block(lines, numbers), f.rel, lines, raw.tell())
                    lines, numbers = [], []
        except (OSError, EOFError, pa.ArrowException) as e:  # e.g. a truncated .jsonl.gz
            raise _damaged(f, f"line {n}", e) from None
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
        batches = pfile.iter_batches(batch_size=batch_rows, columns=names)
        while True:
            try:
                batch = next(batches, None)
            except (OSError, pa.ArrowException) as e:  # e.g. a damaged data page
                raise _damaged(f, f"row {start}", e) from None
            if batch is None:
                return
            n = batch.num_rows
            cols = {x.name if x.name != "event_time" else "_t": _parquet_column(batch, x.name, f.rel)
                    for x in RAW_FIELDS}  # fmt: skip
            cols["_line_reason"] = pa.nulls(n, pa.string())
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
