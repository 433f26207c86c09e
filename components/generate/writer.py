"""Output: the ``dt=/hr=`` layout on any ``pyarrow.fs`` filesystem, one open file set per hour.

Files are deterministic byte for byte: gzip members carry ``mtime = 0`` and no file name, Parquet
files carry no timestamps (zstd, pyarrow's defaults otherwise). Encoding, compression and I/O run
on one background thread (zlib, zstd and file writes release the GIL) while the next chunk is
generated; it is at most one chunk behind, so at most two chunks are in memory.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

GENERATION_FILE = "_generation.json"
CAMPAIGNS_FILE = "_campaigns.parquet"
OWN_FILES = (GENERATION_FILE, CAMPAIGNS_FILE)
GZIP_LEVEL = 1


class OutputExistsError(ValueError):
    """The output directory is not empty and ``--overwrite`` was not given (or cannot apply)."""


def resolve(out: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` of a local path or a URI (``s3://``, ``gs://``, ``hdfs://``...)."""
    if "://" in out:
        return pafs.FileSystem.from_uri(out)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(out)


def prepare_output(fs: pafs.FileSystem, root: str, out: str, overwrite: bool) -> None:
    """Create ``root``; refuse a non-empty one unless ``overwrite`` and it holds only our output."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise OutputExistsError(f"--out {out} is a file, not a directory")
    if info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(root))
        if entries and not overwrite:
            names = ", ".join(sorted(e.base_name for e in entries)[:3])
            raise OutputExistsError(
                f"--out {out} is not empty ({len(entries)} entries: {names}...): pass --overwrite "
                "to replace a previous generator output, or choose an empty directory"
            )
        foreign = [e.base_name for e in entries if not _is_ours(e.base_name)]
        if foreign:
            raise OutputExistsError(
                f"refusing to --overwrite {out}: it holds entries the generator does not write "
                f"({', '.join(sorted(foreign)[:3])}); only dt=... partitions and "
                f"{', '.join(OWN_FILES)} are replaced"
            )
        for entry in entries:
            if entry.type == pafs.FileType.Directory:
                fs.delete_dir(entry.path)
            else:
                fs.delete_file(entry.path)
    fs.create_dir(root, recursive=True)


def _is_ours(name: str) -> bool:
    return name.startswith("dt=") or name in OWN_FILES or name.startswith(GENERATION_FILE)


class WriteBehind:
    """Runs writes in order on one background thread, at most one task behind the caller."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="metarec-generate-writer")
        self._pending: Future | None = None

    def submit(self, fn: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(fn)

    def wait(self) -> None:
        """Block until the last task is done; re-raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()


def partition_of(hour_ms: int) -> str:
    """``dt=YYYY-MM-DD/hr=HH`` of an hour given in epoch milliseconds."""
    return datetime.fromtimestamp(hour_ms / 1000, tz=UTC).strftime("dt=%Y-%m-%d/hr=%H")


class PartitionFiles:
    """The ``files_per_hour`` files of one hourly partition, appended to chunk by chunk."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        root: str,
        hour_ms: int,
        fmt: str,
        n_files: int,
        schema: pa.Schema,
        behind: WriteBehind,
    ) -> None:
        self.behind = behind
        self.partition = partition_of(hour_ms)
        fs.create_dir(f"{root}/{self.partition}", recursive=True)
        self.names = [f"{self.partition}/part-{k:05d}.{fmt}" for k in range(n_files)]
        self.rows = [0] * n_files
        self._streams = [
            fs.open_output_stream(f"{root}/{name}", compression=None) for name in self.names
        ]
        self._sinks: list = []
        for stream in self._streams:
            if fmt == "parquet":
                self._sinks.append(pq.ParquetWriter(stream, schema, compression="zstd"))
            elif fmt == "jsonl.gz":
                self._sinks.append(
                    gzip.GzipFile(
                        filename="", mode="wb", fileobj=stream, mtime=0, compresslevel=GZIP_LEVEL
                    )
                )
            else:
                self._sinks.append(stream)

    def _groups(self, files: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Row order that groups rows by file (stable) and the group boundaries."""
        counts = np.bincount(files, minlength=len(self.names))
        bounds = np.concatenate([[0], np.cumsum(counts)])
        order = None if len(self.names) == 1 else np.argsort(files, kind="stable")
        return order, bounds

    def write_lines(self, lines: pa.StringArray, files: np.ndarray) -> None:
        """Append JSON lines (each already ends with its newline, or is a truncated last line)."""
        order, bounds = self._groups(files)
        if order is not None:
            lines = lines.take(pa.array(order))
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset :]
        data = lines.buffers()[2]

        def write() -> None:
            for k, sink in enumerate(self._sinks):
                lo, hi = int(offsets[bounds[k]]), int(offsets[bounds[k + 1]])
                if hi > lo:
                    sink.write(memoryview(data.slice(lo, hi - lo)))

        self.behind.submit(write)
        self.rows = [r + int(bounds[k + 1] - bounds[k]) for k, r in enumerate(self.rows)]

    def write_table(self, table: pa.Table, files: np.ndarray) -> None:
        """Append typed rows (one row group per file and chunk)."""
        order, bounds = self._groups(files)
        if order is not None:
            table = table.take(pa.array(order))

        def write() -> None:
            for k, sink in enumerate(self._sinks):
                if bounds[k + 1] > bounds[k]:
                    sink.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]))

        self.behind.submit(write)
        self.rows = [r + int(bounds[k + 1] - bounds[k]) for k, r in enumerate(self.rows)]

    def close(self) -> list[dict]:
        """Finish every file (behind the pending writes); returns ``[{"path", "rows"}]``."""
        sinks, streams = self._sinks, self._streams

        def close() -> None:
            for sink, stream in zip(sinks, streams, strict=True):
                if sink is not stream:
                    sink.close()
                stream.close()

        self.behind.submit(close)
        return [
            {"path": name, "rows": rows} for name, rows in zip(self.names, self.rows, strict=True)
        ]
