"""Read raw events (JSONL, JSONL.gz or Parquet; a file or a ``dt=/hr=`` tree) in typed batches.

No Spark: numpy + pyarrow only, so ``metarec score`` runs in the trainer image. Every batch is the
*canonical* table of the ETL's parse step: the raw columns typed (ids and categoricals as strings,
lists of strings, dense and labels as float64) with the event time as epoch milliseconds ``_t``,
plus

    _reason             the record's reason code with a click label required (null: good)
    _reason_unlabelled  the same with the label optional (events to score have none yet)
    _line               the row's line (JSONL, 1-based, blank lines counted) or row number (Parquet)

JSONL lines are split, parsed and judged by :mod:`components.raw_records`, the ETL's own parser
(its docstring has the rules and the codes), so the scorer and the ETL cannot disagree. A file
that cannot be read to its end (a truncated ``.jsonl.gz``, a damaged Parquet page, a Parquet file
without a readable footer) is named in a warning, and the rest of it becomes ONE rejected row of
reason ``damaged_file`` (its ``raw`` says what failed, and from which line or row on): the rows
before are scored and the run goes on with the next file, so one bad file does not stop a scoring
run, and no row goes unaccounted (the damaged rest counts as one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.etl.extract import filesystem, format_of
from components.inputs import refuse_links_out
from components.raw_records import DAMAGED_FILE, parse_stream
from components.raw_schema import FIELDS_BY_NAME, RAW_FIELDS

log = logging.getLogger(__name__)
_TYPES = {"id": pa.string(), "time": pa.string(), "categorical": pa.string(),
          "multi": pa.list_(pa.string()), "dense": pa.float64(), "label": pa.float64()}  # fmt: skip
JSON_SCHEMA = pa.schema([(f.name, _TYPES[f.kind]) for f in RAW_FIELDS])


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
    depth, sorted; names starting with ``_`` or ``.`` skipped, as the ETL does). A local
    directory's symlinks are followed, but each real directory is entered once, so a link loop
    ends the walk instead of hanging it; a file that a link leads outside the directory is
    refused, as the ETL does (``components.inputs.refuse_links_out``).

    Raises:
        FileNotFoundError: nothing at ``uri``.
        ValueError: a file of unknown format was named, a directory holds no data file, or a
            file lies outside it through a symbolic link.
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
    if isinstance(fs, pafs.LocalFileSystem):
        found = _local_files(base)
    else:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        found = [(f.path, f.size) for f in infos if f.type == pafs.FileType.File]
    for path, size in found:
        rel = path[len(base) :].lstrip("/")
        if any(p.startswith(("_", ".")) for p in rel.split("/")):
            continue
        if (fmt := format_of(rel.rsplit("/", 1)[-1])) is not None:
            files.append(EventFile(path, rel, fmt, size))
    if not files:
        raise ValueError(f"{uri} holds no .jsonl, .jsonl.gz or .parquet file")
    refuse_links_out(fs, base, uri, [f.rel for f in files])
    return fs, sorted(files, key=lambda f: f.rel)


def _local_files(base: str) -> list[tuple[str, int]]:
    """``(path, size)`` of every regular file under a local directory, following symlinks but
    entering each real directory once (``os.walk`` alone loops forever on ``a/up -> ..``)."""
    import os
    import stat

    found, entered = [], set()
    for top, dirs, names in os.walk(base, followlinks=True):
        real = os.path.realpath(top)
        if real in entered:  # reached again through a link: a loop, or a second way in
            dirs.clear()
            continue
        entered.add(real)
        dirs.sort()  # the first way in to a directory is the same on every run
        for name in names:
            path = os.path.join(top, name)
            try:
                st = os.stat(path)
            except OSError:  # a dangling link
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((path, st.st_size))
    return found


# ------------------------------------------------------------------------------------- JSONL


def _read_jsonl(fs: Any, f: EventFile, batch_rows: int) -> Iterator[RawBatch]:
    """The ETL's lines and verdicts (:func:`components.raw_records.parse_stream`); a file that
    cannot be read to its end is named, and the rest of it is one ``damaged_file`` row."""
    with fs.open_input_file(f.path) as raw:
        stream = pa.CompressedInputStream(raw, "gzip") if f.fmt == "jsonl.gz" else raw
        for b in parse_stream(stream, batch_rows, quarantine_damage=True):
            if not len(b):
                continue
            if b.columns["_reason"][-1].as_py() == DAMAGED_FILE:
                log.warning("%s: %s; the rest of the file is rejected (%s)", f.rel, b.raw[-1],
                            DAMAGED_FILE)  # fmt: skip
            table = pa.table({**b.columns, "_line": pa.array(b.lines, pa.int64())})
            yield RawBatch(table, f.rel, b.raw, raw.tell())


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


def _parquet_reasons(cols: dict[str, pa.Array], n: int) -> tuple[pa.Array, pa.Array]:
    """``(reason, reason_unlabelled)`` of typed rows: the record rules of
    :mod:`components.raw_records` that typed values can break (``missing:``, ``bad_value:``)."""

    def np_(a: pa.Array) -> np.ndarray:
        return a.to_numpy(zero_copy_only=False)

    missing: list[tuple[str, bool, np.ndarray]] = []
    for f in RAW_FIELDS:
        if f.required:
            col = cols["_t" if f.kind == "time" else f.name]
            gone = np_(pc.is_null(col))
            if f.kind in ("id", "categorical"):
                gone |= np_(pc.fill_null(pc.equal(col, ""), False))
            missing.append((f"missing:{f.name}", f.kind == "label", gone))
    bad: list[tuple[str, np.ndarray]] = []
    for f in RAW_FIELDS:
        if f.kind in ("dense", "label"):
            x = np_(cols[f.name].fill_null(0.0)).astype(np.float64)
            if f.kind == "dense":
                with np.errstate(invalid="ignore"):
                    wrong = ~np.isfinite(x)
                    if f.min_value is not None:
                        wrong |= x < f.min_value
                    if f.max_value is not None:
                        wrong |= x > f.max_value
            else:
                wrong = (x != 0.0) & (x != 1.0)
            bad.append((f"bad_value:{f.name}", wrong))
    out = []
    for labelled in (True, False):
        reason = np.full(n, None, dtype=object)
        rules = [(code, m) for code, label, m in missing if labelled or not label] + bad
        for code, mask in rules:
            reason[mask & np.equal(reason, None)] = code
        out.append(pa.array(reason.tolist(), pa.string()))
    return out[0], out[1]


def _damaged(f: EventFile, line: int, e: BaseException) -> RawBatch:
    """One ``damaged_file`` row standing for the rest of a file that cannot be read."""
    message = f"unreadable from row {line} on ({type(e).__name__}: {e})"
    log.warning("%s: %s; the rest of the file is rejected (%s)", f.rel, message, DAMAGED_FILE)
    cols = {("_t" if x.kind == "time" else x.name): pa.nulls(1, pa.int64() if x.kind == "time"
            else _TYPES[x.kind]) for x in RAW_FIELDS}  # fmt: skip
    reason = pa.array([DAMAGED_FILE], pa.string())
    cols |= {"_reason": reason, "_reason_unlabelled": reason, "_line": pa.array([line], pa.int64())}
    return RawBatch(pa.table(cols), f.rel, [message], f.size)


def _read_parquet(fs: Any, f: EventFile, batch_rows: int) -> Iterator[RawBatch]:
    """Typed batches; a file or a page that cannot be read is named, and the rest of the file is
    one ``damaged_file`` row (the rows before it are scored)."""
    import pyarrow.parquet as pq

    start = 0
    with fs.open_input_file(f.path) as src:
        try:
            pfile = pq.ParquetFile(src)
            names = [c for c in JSON_SCHEMA.names if c in pfile.schema_arrow.names]
            total = max(pfile.metadata.num_rows, 1)
            for batch in pfile.iter_batches(batch_size=batch_rows, columns=names):
                n = batch.num_rows
                cols = {x.name if x.name != "event_time" else "_t":
                        _parquet_column(batch, x.name, f.rel) for x in RAW_FIELDS}  # fmt: skip
                cols["_reason"], cols["_reason_unlabelled"] = _parquet_reasons(cols, n)
                cols["_line"] = pa.array(np.arange(start + 1, start + n + 1, dtype=np.int64))
                start += n
                yield RawBatch(pa.table(cols), f.rel, None, f.size * start // total)
        except (pa.ArrowInvalid, OSError) as e:
            yield _damaged(f, start + 1, e)


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
