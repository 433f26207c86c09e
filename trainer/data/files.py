"""The episode files of one split: validated against the manifest, decoded per row group
(torch-free: numpy + pyarrow).

:class:`EpisodeFiles` opens every file of a split through ``pyarrow.fs`` (local paths, ``file://``,
``s3://``, ...) and checks, from the footers only (no data read), that it exists and is Parquet,
has the columns the trainer reads with the contract's types (:mod:`trainer.data.schema`), that its
row and row-group counts match the manifest, and that every list column of every row group holds
``rows * (K + Q) * width`` values. Any mismatch is a ContractError naming the file and the fix.
:meth:`EpisodeFiles.read` then decodes one row group into numpy arrays without per-row Python
(offsets checked vectorised -> flat values -> ``reshape(rows, K + Q, width)``, zero copy).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainer.data.contract import (
    COL_CLICK,
    COL_CONVERSION,
    COL_DENSE,
    COL_N_QUERY,
    COL_N_SUPPORT,
    COL_SPARSE,
    COL_TASK_ID,
    ContractError,
    Manifest,
)
from trainer.data.schema import check_episode_schema

READ_COLUMNS = (
    COL_TASK_ID,
    COL_N_SUPPORT,
    COL_N_QUERY,
    COL_SPARSE,
    COL_DENSE,
    COL_CLICK,
    COL_CONVERSION,
)
"""The columns the trainer reads (projection): 7 of the 10."""


@dataclass
class Chunk:
    """Decoded episodes of one row group or block (numpy; ``sparse`` holds local ids)."""

    task_id: np.ndarray  # (n,) int64
    n_support: np.ndarray  # (n,) int64
    n_query: np.ndarray  # (n,) int64
    sparse: np.ndarray  # (n, N, S) int64
    dense: np.ndarray  # (n, N, Dn) float32
    click: np.ndarray  # (n, N) int8
    conversion: np.ndarray  # (n, N) int8

    @staticmethod
    def concat(chunks: list[Chunk]) -> Chunk:
        if len(chunks) == 1:
            return chunks[0]
        return Chunk(*(np.concatenate([getattr(c, f) for c in chunks]) for f in _CHUNK_FIELDS))


_CHUNK_FIELDS = ("task_id", "n_support", "n_query", "sparse", "dense", "click", "conversion")


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(root)


class EpisodeFiles:
    """The files of ``split`` under ``root``, validated; ``units``/``sizes`` list its row groups.

    Args:
        root: the ETL output directory (local path or ``pyarrow.fs`` URI).
        split: the split whose files to open.
        manifest: the manifest read from ``root``.
        verify_checksums: also compare each file's sha256 with the manifest (reads all bytes).
    """

    def __init__(
        self, root: str, split: str, manifest: Manifest, verify_checksums: bool = False
    ) -> None:
        self.root, self.split, self.manifest = root, split, manifest
        self._fs, self._base = _filesystem(root)
        self._paths = [str(f.get("path", "")) for f in manifest.files_of(split)]
        self.units: list[tuple[int, int]] = []
        """(file index, row group) of every row group, in manifest order."""
        self.sizes: list[int] = []
        """Episodes of every unit."""
        self._open: tuple[int, pq.ParquetFile] | None = None
        self._slot_buckets = np.repeat(
            [f.buckets for f in manifest.features], [f.slots for f in manifest.features]
        )
        """(S,) rows of the table of each sparse slot: every local id is below it."""
        self._validate(verify_checksums)

    def uri(self, i: int) -> str:
        return f"{self.root.rstrip('/')}/{self._paths[i]}"

    def _validate(self, verify_checksums: bool) -> None:
        m = self.manifest
        widths = {
            COL_SPARSE: m.sparse_width,
            COL_DENSE: m.dense_width,
            COL_CLICK: 1,
            COL_CONVERSION: 1,
        }
        for i, entry in enumerate(m.files_of(self.split)):
            path = self._paths[i]
            if not path:
                raise ContractError(f"{self.root}: a manifest files entry has no 'path': {entry}")
            uri = self.uri(i)
            pf = self._parquet(i)
            check_episode_schema(pf.schema_arrow, READ_COLUMNS, uri)
            md = pf.metadata
            rows = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            for key, actual in (("rows", sum(rows)), ("row_groups", len(rows))):
                if key in entry and int(entry[key]) != actual:
                    raise ContractError(
                        f"{uri}: the manifest says {key}={entry[key]}, the file has {actual}; the "
                        "file changed after the ETL wrote the manifest: rerun `metarec etl`"
                    )
            leaf = {md.schema.column(j).path.split(".")[0]: j for j in range(md.num_columns)}
            for g, n in enumerate(rows):
                for col, width in widths.items():
                    if width == 0:  # empty lists: Parquet counts one level entry per list
                        continue
                    values = md.row_group(g).column(leaf[col]).num_values
                    if values != n * m.samples_per_episode * width:
                        raise ContractError(
                            f"{uri} row group {g}: column {col!r} holds {values} values for {n} "
                            f"episodes, the manifest's K + Q = {m.samples_per_episode} and width "
                            f"{width} need {n * m.samples_per_episode * width}; the data and its "
                            "manifest disagree: rerun `metarec etl`"
                        )
                self.units.append((i, g))
                self.sizes.append(n)
            if verify_checksums and "sha256" in entry:
                self._check_sha256(uri, path, entry["sha256"])
        expected = m.splits.get(self.split, {}).get("episodes")
        if expected is not None and int(expected) != sum(self.sizes):
            raise ContractError(
                f"{self.root}: the manifest counts {expected} {self.split} episodes, its files hold "
                f"{sum(self.sizes)}: the output is inconsistent; rerun `metarec etl`"
            )

    def _parquet(self, i: int) -> pq.ParquetFile:
        uri = self.uri(i)
        try:
            f = self._fs.open_input_file(f"{self._base.rstrip('/')}/{self._paths[i]}")
            return pq.ParquetFile(f)
        except FileNotFoundError:
            raise ContractError(
                f"{uri}: listed in the manifest but missing; the ETL output is incomplete or was "
                "modified: rerun `metarec etl` for this interval"
            ) from None
        except (pa.ArrowException, OSError) as e:  # a damaged footer: any Arrow error
            raise ContractError(
                f"{uri}: not a readable Parquet file ({e}); rerun `metarec etl`"
            ) from e

    def _check_sha256(self, uri: str, path: str, expected: str) -> None:
        h = hashlib.sha256()
        with self._fs.open_input_stream(f"{self._base.rstrip('/')}/{path}") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        if h.hexdigest() != expected:
            raise ContractError(f"{uri}: sha256 differs from the manifest: the file was modified")

    def read(self, unit: int) -> Chunk:
        """Read one row group and convert it to numpy arrays without per-row Python."""
        i, g = self.units[unit]
        if self._open is None or self._open[0] != i:
            self._open = (i, self._parquet(i))
        where = f"{self.uri(i)} row group {g}"
        try:  # one thread: the reader's own threads overlap reading with assembly, and Arrow's
            # pool would only add CPU (~0.25x more under load, bench/reader.py) for little overlap
            # (the sparse column is ~70% of the decoding, and one column decodes on one thread)
            table = self._open[1].read_row_group(g, columns=list(READ_COLUMNS), use_threads=False)
        except (pa.ArrowException, OSError) as e:  # a damaged page: undecodable, bad compression
            raise ContractError(
                f"{where} cannot be decoded ({e}): the file is damaged; rerun `metarec etl` for "
                "this interval (data.verify_checksums=true finds such files before training)"
            ) from e
        m = self.manifest
        N, S, Dn, n = m.samples_per_episode, m.sparse_width, m.dense_width, table.num_rows
        sparse = _list_values(table, COL_SPARSE, N * S, where).reshape(n, N, S)
        # An id outside its feature's table would index past the stacked table (a damaged page
        # can decode to such ids without any other error).
        if sparse.size and not _ids_in_range(sparse, self._slot_buckets):
            raise ContractError(
                f"{where}: column {COL_SPARSE!r} holds ids outside their feature's buckets "
                f"({[f.buckets for f in m.features]}): the file is damaged or was written for "
                "another feature spec; rerun `metarec etl` for this interval"
            )
        return Chunk(
            task_id=table.column(COL_TASK_ID).to_numpy().astype(np.int64, copy=False),
            n_support=table.column(COL_N_SUPPORT).to_numpy().astype(np.int64, copy=False),
            n_query=table.column(COL_N_QUERY).to_numpy().astype(np.int64, copy=False),
            sparse=sparse,
            dense=_list_values(table, COL_DENSE, N * Dn, where).reshape(n, N, Dn),
            click=_list_values(table, COL_CLICK, N, where).reshape(n, N),
            conversion=_list_values(table, COL_CONVERSION, N, where).reshape(n, N),
        )

    def close(self) -> None:
        self._open = None


def _ids_in_range(sparse: np.ndarray, buckets: np.ndarray) -> bool:
    """Whether every id of ``sparse`` ``(n, N, S)`` is in ``[0, buckets[slot])``. One pass: read
    as unsigned, a negative id is huge, so the largest value per slot decides; reduced over the
    episodes first (rows of ``N * S`` values: vectorised), ~4x faster than ``min`` + compare."""
    unsigned = sparse.view(np.dtype(f"u{sparse.itemsize}"))
    largest = unsigned.reshape(len(sparse), -1).max(axis=0).reshape(-1, sparse.shape[-1]).max(0)
    return bool(np.all(largest < buckets.astype(unsigned.dtype)))


def _list_values(table: pa.Table, name: str, width: int, where: str) -> np.ndarray:
    """The values of a list column whose lists all have ``width`` elements, as (rows, width)."""
    col = table.column(name)
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if arr.null_count:
        raise ContractError(f"{where}: column {name!r} has {arr.null_count} null lists")
    if pa.types.is_fixed_size_list(arr.type):
        if arr.type.list_size != width:
            raise ContractError(
                f"{where}: column {name!r} has lists of {arr.type.list_size}, expected {width}"
            )
        values = arr.values.slice(arr.offset * width, len(arr) * width)
    else:
        offsets = arr.offsets.to_numpy()
        lengths = np.diff(offsets)
        bad = np.flatnonzero(lengths != width)
        if bad.size:
            raise ContractError(
                f"{where}: column {name!r} has lists of length {int(lengths[bad[0]])} (episode row "
                f"{int(bad[0])}, {bad.size} such rows), expected {width} = (K + Q) * width from the "
                "manifest; the data and its manifest disagree: rerun `metarec etl`"
            )
        values = arr.values.slice(int(offsets[0]), len(arr) * width)
    if values.null_count:
        raise ContractError(f"{where}: column {name!r} has {values.null_count} null values")
    return values.to_numpy()
