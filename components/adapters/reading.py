"""Streaming readers for the delimited text files the public datasets ship as, with row accounting.

Every source file is read with pyarrow's streaming CSV reader (one block at a time, so memory is
bounded by the block size, not the file size), every column as a string (so one bad value costs
one row, not the whole block), quoting off (none of these formats quote; with quoting on, a stray
``"`` would swallow the following lines into one field and the line count would be wrong).

A *row* is one line of the file after the header. Every row ends up in exactly one place:
  * a line with the wrong number of fields is rejected as ``wrong_field_count``;
  * an empty line is rejected as ``blank_line``;
  * a line that is not valid UTF-8 (after decoding from the file's encoding) as ``bad_encoding``;
  * otherwise it reaches the adapter, which writes it or rejects it with its own reason.
Each row keeps its 1-based line number in the file, also for the rows after a rejected line, so a
rejection can be traced back (``_rejected.jsonl``) and row-order-derived event times do not shift
when a line is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from components.adapters.accounting import Accounting
from components.adapters.block import Block

log = logging.getLogger(__name__)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and a path for a local path or any ``pyarrow.fs`` URI (``s3://``, ``hdfs://``)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(uri)


def file_size(fs: pafs.FileSystem, path: str) -> int | None:
    """Size in bytes of a regular file, ``None`` when there is no such file."""
    info = fs.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


@dataclass(frozen=True)
class SourceFile:
    """One input file of a source: where it is and what the reports call it."""

    path: str
    label: str
    """Short name used in reason records and ``_adapter.json`` (e.g. ``u.data``)."""
    size: int


def read_header(fs: pafs.FileSystem, src: SourceFile, delimiter: str, encoding: str) -> list[str]:
    """The column names on the first line of ``src`` (whitespace around names stripped)."""
    with fs.open_input_stream(src.path) as stream:
        head = stream.read(1 << 20)
    if not head:
        raise ValueError(f"{src.label} ({src.path}) is empty: expected a header line and data rows")
    first = head.split(b"\n", 1)[0].rstrip(b"\r").decode(encoding).lstrip("\ufeff")
    return [name.strip() for name in first.split(delimiter)]


def require_columns(src: SourceFile, header: Sequence[str], required: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the missing columns when ``header`` lacks any of ``required``."""
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(
            f"{src.label} ({src.path}) lacks column(s) {', '.join(missing)}: its header is "
            f"{', '.join(header) or '(empty)'}; is this the right file?"
        )


def read_delimited(
    fs: pafs.FileSystem,
    src: SourceFile,
    acct: Accounting,
    *,
    names: Sequence[str],
    include: Sequence[str],
    delimiter: str,
    has_header: bool,
    encoding: str = "utf8",
    block_bytes: int = 16 << 20,
) -> Iterator[Block]:
    """Stream the rows of a delimited file as string columns, accounting for every line.

    Args:
        fs, src: where to read.
        acct: receives ``rows_in`` for every row and the reader's rejections.
        names: the names of ALL fields of a row, in file order (the header's, or the documented
            layout for a header-less file); a row with another field count is rejected.
        include: the fields to return (the others are parsed for the field count, then dropped).
        delimiter: the field separator.
        has_header: skip the first line.
        encoding: the file's text encoding (``latin1`` for MovieLens' ``u.item``).
        block_bytes: bytes parsed per block (bounds memory).

    Yields:
        :class:`Block` objects with whitespace-trimmed string columns named as in ``include``.
    """
    invalid: list[tuple[int, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # Row numbers are known because the reader runs single-threaded (use_threads=False).
        assert row.number is not None, "pyarrow did not report the line number of an invalid row"
        invalid.append((row.number, row.text))
        return "skip"

    next_line = 2 if has_header else 1  # line number of the next valid row
    pending: list[int] = []  # rejected line numbers not yet passed by the valid rows
    stream = fs.open_input_stream(src.path)
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(
                use_threads=False,
                block_size=block_bytes,
                column_names=list(names),
                skip_rows=1 if has_header else 0,
                encoding=encoding,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char=False,
                newlines_in_values=False,
                ignore_empty_lines=False,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pacsv.ConvertOptions(
                # Bytes first: one row with bad UTF-8 must not fail its whole block.
                column_types={name: pa.binary() for name in include},
                include_columns=list(include),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise ValueError(
                    f"{src.label} ({src.path}): cannot parse the file after line {next_line - 1}: {e}"
                ) from e
            acct.rows_in[src.label] += len(invalid)
            for number, text in invalid:
                acct.reject_one(src.label, number, "wrong_field_count", text)
            pending.extend(n for n, _ in invalid)
            invalid.clear()
            lines, pending, next_line = _assign_lines(batch.num_rows, next_line, pending)
            acct.rows_in[src.label] += batch.num_rows
            if batch.num_rows == 0:
                continue
            columns, lines = _decode(src.label, {n: batch.column(n) for n in include}, lines, acct)
            columns = {name: pc.utf8_trim_whitespace(col) for name, col in columns.items()}
            block = Block(columns, lines)
            blank = np.ones(block.num_rows, dtype=bool)
            for column in columns.values():
                blank &= _np_bool(pc.equal(pc.utf8_length(column), 0))
            yield acct.drop(src.label, block, blank, "blank_line")
        # Invalid rows after the last valid row.
        acct.rows_in[src.label] += len(invalid)
        for number, text in invalid:
            acct.reject_one(src.label, number, "wrong_field_count", text)
        invalid.clear()
    except pa.ArrowInvalid as e:
        raise ValueError(f"{src.label} ({src.path}): cannot read the file: {e}") from e
    finally:
        stream.close()


def _decode(
    label: str, columns: dict[str, pa.Array], lines: np.ndarray, acct: Accounting
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Binary columns as UTF-8 strings; rows with invalid UTF-8 are rejected as ``bad_encoding``
    (the per-row check only runs for the rare block where the vectorised cast fails)."""
    try:
        return {name: col.cast(pa.string()) for name, col in columns.items()}, lines
    except pa.ArrowInvalid:
        pass
    good = np.ones(len(lines), dtype=bool)
    for col in columns.values():
        for i, value in enumerate(col.to_pylist()):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                good[i] = False
    for i in np.flatnonzero(~good):
        record = {k: v[int(i)].as_py().decode("utf-8", "replace") for k, v in columns.items()}
        acct.reject_one(label, int(lines[i]), "bad_encoding", record)
    keep = pa.array(good)
    return {k: pc.filter(v, keep).cast(pa.string()) for k, v in columns.items()}, lines[good]


def _assign_lines(n: int, next_line: int, pending: list[int]) -> tuple[np.ndarray, list[int], int]:
    """Line numbers of the next ``n`` valid rows: consecutive lines from ``next_line``, skipping
    the rejected ones in ``pending`` (the parser reports a block's invalid rows before it returns
    the block, so every rejected line before the last valid row of this batch is known)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64), pending, next_line
    if not pending:
        return np.arange(next_line, next_line + n, dtype=np.int64), pending, next_line + n
    rejected = np.array(sorted(pending), dtype=np.int64)
    candidates = np.arange(next_line, next_line + n + len(rejected), dtype=np.int64)
    lines = candidates[~np.isin(candidates, rejected)][:n]
    last = int(lines[-1])
    return lines, [r for r in pending if r > last], last + 1


def _np_bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean pyarrow array as numpy, nulls as False."""
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


LINE_DELIMITER = "\x1f"
"""ASCII unit separator: no text line of these datasets holds one, so a line is one field."""


def read_separated(
    fs: pafs.FileSystem,
    src: SourceFile,
    acct: Accounting,
    *,
    names: Sequence[str],
    separator: str,
    encoding: str = "utf8",
    block_bytes: int = 16 << 20,
) -> Iterator[Block]:
    """Stream a header-less file whose fields are separated by a multi-character ``separator``
    (MovieLens-1M's ``::``), with the accounting of :func:`read_delimited`.

    Each line is read whole, then split; a line with another number of fields than ``names`` is
    rejected as ``wrong_field_count``. A field may not contain ``separator`` (the format has no
    quoting), so a title holding ``:`` is fine and one holding ``::`` is a wrong field count.

    Yields:
        :class:`Block` objects with whitespace-trimmed string columns named as in ``names``.
    """
    for block in read_delimited(
        fs,
        src,
        acct,
        names=("line",),
        include=("line",),
        delimiter=LINE_DELIMITER,
        has_header=False,
        encoding=encoding,
        block_bytes=block_bytes,
    ):
        parts = pc.split_pattern(block.columns["line"], separator)
        ok = pc.equal(pc.list_value_length(parts), len(names))
        block = acct.drop(src.label, block, ~_np_bool(ok), "wrong_field_count")
        if block.num_rows == 0:
            continue
        parts = pc.split_pattern(block.columns["line"], separator)
        yield Block(
            {
                name: pc.utf8_trim_whitespace(pc.list_element(parts, i))
                for i, name in enumerate(names)
            },
            block.lines,
        )


def load_side_table(
    fs: pafs.FileSystem,
    src: SourceFile,
    acct: Accounting,
    *,
    names: Sequence[str],
    include: Sequence[str],
    delimiter: str,
    has_header: bool,
    encoding: str = "utf8",
) -> Block:
    """Read a whole lookup table (users, items, ads): same accounting, one concatenated block."""
    blocks = read_delimited(
        fs,
        src,
        acct,
        names=names,
        include=include,
        delimiter=delimiter,
        has_header=has_header,
        encoding=encoding,
    )
    return concat_blocks(blocks, include)


def concat_blocks(blocks: Iterator[Block], columns: Sequence[str]) -> Block:
    """One block of every row of ``blocks`` (a whole lookup table), ``columns`` kept."""
    blocks = list(blocks)
    if not blocks:
        return Block(
            {name: pa.array([], pa.string()) for name in columns}, np.zeros(0, dtype=np.int64)
        )
    return Block(
        {name: pa.concat_arrays([b.columns[name] for b in blocks]) for name in columns},
        np.concatenate([b.lines for b in blocks]),
    )


def locate_files(
    fs: pafs.FileSystem,
    root: str,
    *,
    dataset: str,
    download: str,
    required: dict[str, str] | None = None,
    any_of: dict[str, str] | None = None,
    single_file_role: str | None = None,
) -> dict[str, SourceFile]:
    """Find a source's files under ``root`` or raise a ``FileNotFoundError`` that says which files
    are expected, which are missing and where to download them.

    Args:
        required: role -> file name; all must exist in ``root``.
        any_of: role -> file name; at least one must exist (the others are skipped).
        single_file_role: when set, ``root`` may also be one file, given this role.
    """
    required, any_of = required or {}, any_of or {}
    expected = ", ".join([*required.values(), *any_of.values()])
    how = f"{'all of' if required else 'at least one of'} {expected}"
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        if single_file_role is None:
            raise FileNotFoundError(
                f"{dataset}: --src {root} is a file; give the directory that holds {how}. "
                f"Download: {download}"
            )
        return {single_file_role: SourceFile(root, info.base_name, info.size)}
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"{dataset}: --src {root} does not exist; expected a directory with {how}. "
            f"Download: {download}"
        )
    found: dict[str, SourceFile] = {}
    for role, name in [*required.items(), *any_of.items()]:
        size = file_size(fs, f"{root}/{name}")
        if size is not None:
            found[role] = SourceFile(f"{root}/{name}", name, size)
    missing = [name for role, name in required.items() if role not in found]
    if missing or (any_of and not any(role in found for role in any_of)):
        hint = ""
        names = [*required.values(), *any_of.values()]
        for sub in fs.get_file_info(pafs.FileSelector(root)):
            if sub.type != pafs.FileType.Directory:
                continue
            there = [n for n in names if file_size(fs, f"{sub.path}/{n}") is not None]
            if there:
                hint = f" (found {there[0]} in {sub.path}: did you mean --src {sub.path}?)"
                break
        what = f"missing {', '.join(missing)}" if missing else f"none of {expected} found"
        raise FileNotFoundError(
            f"{dataset}: expected {how} in {root}; {what}{hint}. Download: {download}"
        )
    return found


def prefer_full_files(found: dict[str, SourceFile], splits: Sequence[str]) -> dict[str, SourceFile]:
    """Per split, the full file (role ``<split>``) or else its sample (role ``<split>_sample``),
    in ``splits`` order: a directory holding both never mixes a sample into the full data."""
    chosen = {}
    for split in splits:
        f = found.get(split) or found.get(f"{split}_sample")
        if f is not None:
            chosen[split] = f
    return chosen
