"""Writes canonical raw tables into hourly partitions, the layout of production logs.

    <out>/dt=YYYY-MM-DD/hr=HH/part-NNNNN.parquet     (or .jsonl)

Rows arrive in source order, which is rarely time order (MovieLens' ``u.data`` is shuffled), so
they are buffered per UTC hour and flushed when ``flush_rows`` are buffered: the largest hour
buffers first, until half the budget is free (memory stays bounded by ``flush_rows`` rows). Each
hour has at most one open file at a time (one Parquet row group per flush); at most
``max_open_files`` stay open (least recently used closed first) and a file holds at most
``rows_per_file`` rows, so a reopened or full hour continues in the next ``part-NNNNN``.

Hours between the first and the last event with no events get one empty file (a zero-row Parquet
file with the schema, or an empty JSONL file) unless ``fill_empty_hours`` is off: a production
producer writes every hour, and the ETL treats a missing hour as an error (an empty one is fine).

Everything is deterministic: the same input and options give byte-identical files.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from components.adapters.canonical import MS_PER_HOUR
from components.raw_schema import arrow_schema

FORMATS = ("parquet", "jsonl")
PARQUET_COMPRESSION = "zstd"


def partition_dir(hour: int) -> str:
    """``dt=2017-05-06/hr=03`` for an hour number since the epoch."""
    t = datetime.fromtimestamp(hour * 3600, UTC)
    return f"dt={t:%Y-%m-%d}/hr={t:%H}"


def encode_jsonl(table: pa.Table) -> bytes:
    """JSON lines following ``raw_schema``'s encoding: ISO-8601 UTC milliseconds for
    ``event_time``, strings for ids, arrays for lists, 0/1 labels, null for missing values."""
    times = pc.strftime(table["event_time"], format="%Y-%m-%dT%H:%M:%SZ").to_pylist()
    rows = table.drop_columns(["event_time"]).to_pylist()
    names = table.column_names
    out = []
    for t, row in zip(times, rows, strict=True):
        row["event_time"] = t
        ordered = {name: row[name] for name in names}
        out.append(json.dumps(ordered, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode() if out else b""


@dataclass
class _OpenFile:
    path: str
    rows: int = 0
    parquet: pq.ParquetWriter | None = None
    stream: pa.NativeFile | None = None

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if self.stream is not None:
            self.stream.close()


@dataclass
class WriteStats:
    """What the writer produced (for the summary and ``_adapter.json``)."""

    files: int = 0
    rows: int = 0
    hours_with_rows: int = 0
    empty_hours_filled: int = 0
    first_hour: int | None = None
    last_hour: int | None = None
    min_ms: int | None = None
    max_ms: int | None = None
    rows_per_hour_max: int = 0
    files_per_hour_max: int = 0
    peak_buffered_rows: int = 0
    """Most rows held in memory at once (< flush_rows + the rows of one incoming table)."""
    _hour_rows: dict[int, int] = field(default_factory=dict, repr=False)


class PartitionWriter:
    """Buffers canonical tables per hour and writes them as hourly part files (see module doc)."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        root: str,
        fmt: str = "parquet",
        *,
        flush_rows: int = 500_000,
        max_open_files: int = 256,
        rows_per_file: int = 2_000_000,
    ) -> None:
        assert fmt in FORMATS, fmt
        self._fs, self._root, self._fmt = fs, root.rstrip("/"), fmt
        self._flush_rows, self._max_open, self._rows_per_file = (
            flush_rows,
            max_open_files,
            rows_per_file,
        )
        self._schema = arrow_schema()
        self._buffers: dict[int, list[pa.Table]] = {}
        self._buffered = 0
        self._open: OrderedDict[int, _OpenFile] = OrderedDict()
        self._parts: dict[int, int] = {}  # hour -> number of part files started
        self.stats = WriteStats()

    def write(self, table: pa.Table) -> None:
        """Add rows (any hours, any order); they are written at a flush or at :meth:`close`."""
        if table.num_rows == 0:
            return
        assert table.schema.equals(self._schema), "tables must have the raw schema"
        ms = table["event_time"].cast(pa.int64()).to_numpy()
        hours = ms // MS_PER_HOUR
        order = np.argsort(hours, kind="stable")
        table, hours = table.take(pa.array(order)), hours[order]
        uniq, starts = np.unique(hours, return_index=True)
        ends = np.append(starts[1:], len(hours))
        for hour, a, b in zip(uniq.tolist(), starts.tolist(), ends.tolist(), strict=True):
            self._buffers.setdefault(hour, []).append(table.slice(a, b - a))
        self._buffered += table.num_rows
        s = self.stats
        s.peak_buffered_rows = max(s.peak_buffered_rows, self._buffered)
        lo, hi = int(ms.min()), int(ms.max())
        s.min_ms = lo if s.min_ms is None else min(s.min_ms, lo)
        s.max_ms = hi if s.max_ms is None else max(s.max_ms, hi)
        if self._buffered >= self._flush_rows:
            sizes = sorted(((-sum(t.num_rows for t in ts), h) for h, ts in self._buffers.items()))
            for _, hour in sizes:
                if self._buffered <= self._flush_rows // 2:
                    break
                self._flush_hour(hour)

    def close(self, fill_empty_hours: bool = True) -> WriteStats:
        """Flush every buffer, close every file, fill empty hours; return the statistics."""
        for hour in sorted(self._buffers):
            self._flush_hour(hour)
        for f in self._open.values():
            f.close()
        self._open.clear()
        s = self.stats
        s.hours_with_rows = len(s._hour_rows)
        if s._hour_rows:
            s.first_hour, s.last_hour = min(s._hour_rows), max(s._hour_rows)
            s.rows_per_hour_max = max(s._hour_rows.values())
            s.files_per_hour_max = max(self._parts.values())
            if fill_empty_hours:
                for hour in range(s.first_hour, s.last_hour + 1):
                    if hour not in self._parts:
                        self._open_part(hour).close()
                        s.empty_hours_filled += 1
        return s

    def _flush_hour(self, hour: int) -> None:
        tables = self._buffers.pop(hour)
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        self._buffered -= table.num_rows
        self.stats._hour_rows[hour] = self.stats._hour_rows.get(hour, 0) + table.num_rows
        self.stats.rows += table.num_rows
        offset = 0
        while offset < table.num_rows:
            f = self._open.get(hour)
            if f is None or f.rows >= self._rows_per_file:
                if f is not None:
                    self._open.pop(hour).close()
                f = self._open_part(hour)
                self._open[hour] = f
                if len(self._open) > self._max_open:
                    _, oldest = self._open.popitem(last=False)
                    oldest.close()
            self._open.move_to_end(hour)
            chunk = table.slice(offset, self._rows_per_file - f.rows)
            if f.parquet is not None:
                f.parquet.write_table(chunk)
            else:
                f.stream.write(encode_jsonl(chunk))
            f.rows += chunk.num_rows
            offset += chunk.num_rows

    def _open_part(self, hour: int) -> _OpenFile:
        part = self._parts.get(hour, 0)
        self._parts[hour] = part + 1
        directory = f"{self._root}/{partition_dir(hour)}"
        self._fs.create_dir(directory, recursive=True)
        path = f"{directory}/part-{part:05d}.{self._fmt}"
        self.stats.files += 1
        if self._fmt == "parquet":
            writer = pq.ParquetWriter(
                path, self._schema, filesystem=self._fs, compression=PARQUET_COMPRESSION
            )
            return _OpenFile(path, parquet=writer)
        return _OpenFile(path, stream=self._fs.open_output_stream(path))
