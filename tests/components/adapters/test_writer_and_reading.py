"""Unit tests of the partition writer and the streaming reader (no sample data needed)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from components.adapters.accounting import Accounting, RejectLog
from components.adapters.canonical import KeyIndex, distinct_by_frequency, raw_table, timestamps_ms
from components.adapters.reading import SourceFile, read_delimited
from components.adapters.writer import PartitionWriter, partition_dir
from components.raw_schema import arrow_schema
from tests.components.adapters.conftest import assert_raw_output, tree_bytes

HOUR_MS = 3_600_000
T0 = 1_800_000_000_000 // HOUR_MS * HOUR_MS  # an hour boundary in 2027


def _events(hours: list[int], start: int = 0) -> pa.Table:
    """One event per entry of ``hours`` (hour offsets from T0), ids numbered from ``start``."""
    n = len(hours)
    ms = np.array([T0 + h * HOUR_MS + (i * 7919) % HOUR_MS for i, h in enumerate(hours)])
    ids = pa.array([f"e{start + i}" for i in range(n)])
    return raw_table(
        n,
        {
            "event_id": ids,
            "event_time": timestamps_ms(ms),
            "user_id": ids,
            "ad_id": "a",
            "campaign_id": "c",
            "advertiser_id": "v",
            "scene_id": "s",
            "click": pa.array(np.zeros(n, dtype=np.int8)),
        },
    )


def _write(out: Path, tables: list[pa.Table], fill: bool = True, **options) -> PartitionWriter:
    writer = PartitionWriter(pafs.LocalFileSystem(), str(out), **options)
    for t in tables:
        writer.write(t)
    writer.close(fill)
    return writer


def test_unsorted_rows_land_in_their_hour_with_bounded_buffers(tmp_path):
    rng = random.Random(0)
    batches = [_events([rng.randrange(6) for _ in range(50)], start=50 * b) for b in range(20)]
    for name, max_open, per_file in (("many", 256, 10_000), ("few", 2, 90)):
        out = tmp_path / name
        stats = _write(
            out, batches, flush_rows=120, max_open_files=max_open, rows_per_file=per_file
        ).stats
        table = assert_raw_output(out)
        assert table.num_rows == 1000 == stats.rows
        assert sorted(table["event_id"].to_pylist()) == sorted(f"e{i}" for i in range(1000))
        assert stats.peak_buffered_rows < 120 + 50  # flush_rows + one incoming table
        files = sorted(out.glob("dt=*/hr=*/part-*.parquet"))
        assert stats.files == len(files)
        assert all(pq.ParquetFile(f).metadata.num_rows <= per_file for f in files)
        if name == "many":  # one file per hour, one row group per flush that touched it
            assert stats.files == 6
            assert max(pq.ParquetFile(f).metadata.num_row_groups for f in files) > 1
        else:  # closed (LRU) or full files continue in the next part
            assert stats.files_per_hour_max > 1
    # Determinism: the same input and options give the same bytes.
    _write(tmp_path / "again", batches, flush_rows=120, max_open_files=2, rows_per_file=90)
    assert tree_bytes(tmp_path / "few") == tree_bytes(tmp_path / "again")


def test_empty_hours_are_filled_between_first_and_last_event(tmp_path):
    stats = _write(tmp_path / "out", [_events([0, 0, 3, 5])]).stats
    hours = sorted(p.parent.name for p in (tmp_path / "out").glob("dt=*/hr=*/part-00000.parquet"))
    start_hour = T0 // HOUR_MS
    assert hours == sorted(partition_dir(start_hour + h).split("/")[1] for h in range(6))
    assert (stats.hours_with_rows, stats.empty_hours_filled) == (3, 3)
    empty = tmp_path / "out" / partition_dir(start_hour + 1) / "part-00000.parquet"
    assert pq.ParquetFile(empty).metadata.num_rows == 0
    assert pq.read_schema(empty).equals(arrow_schema(), check_metadata=False)
    stats = _write(tmp_path / "nofill", [_events([0, 3])], fill=False).stats
    assert stats.empty_hours_filled == 0
    assert len(list((tmp_path / "nofill").glob("dt=*/hr=*"))) == 2


def _read_lines(tmp_path: Path, lines: list[str], block_bytes: int) -> tuple[list[int], Accounting]:
    path = tmp_path / "f.csv"
    path.write_text("a,b,c\n" + "\n".join(lines) + "\n")
    acct = Accounting(log=RejectLog(None, None))
    src = SourceFile(str(path), "f.csv", path.stat().st_size)
    seen = []
    for block in read_delimited(
        pafs.LocalFileSystem(),
        src,
        acct,
        names=("a", "b", "c"),
        include=("a", "c"),
        delimiter=",",
        has_header=True,
        block_bytes=block_bytes,
    ):
        assert block.columns["a"].to_pylist() == [f"r{n}" for n in block.lines]
        seen.extend(block.lines.tolist())
    return seen, acct


@pytest.mark.parametrize("seed", range(6))
def test_reader_keeps_true_line_numbers_around_rejected_lines(tmp_path, seed):
    rng = random.Random(seed)
    lines, valid = [], []
    for number in range(2, 400):  # line 1 is the header
        kind = rng.random()
        if kind < 0.1:
            lines.append(f"r{number},x")  # too few fields
        elif kind < 0.15:
            lines.append(f"r{number},x,y,z")  # too many
        elif kind < 0.2:
            lines.append("")  # blank
        else:
            lines.append(f"r{number},x,y")
            valid.append(number)
    seen, acct = _read_lines(tmp_path, lines, block_bytes=rng.choice([64, 100, 257, 4096]))
    assert seen == valid
    reasons = Counter(r for (_, r), n in acct.rejected.items() for _ in range(n))
    assert acct.rows_in["f.csv"] == len(lines)
    assert sum(reasons.values()) + len(valid) == len(lines)
    assert reasons["blank_line"] == sum(1 for x in lines if not x)


def test_reader_rejects_bad_utf8_and_unreadable_files(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"a,b,c\nr2,x,y\nr3,\xff\xfe,y\nr4,x,y\n")
    acct = Accounting(log=RejectLog(None, None))
    src = SourceFile(str(path), "f.csv", path.stat().st_size)
    fs = pafs.LocalFileSystem()
    kwargs = dict(names=("a", "b", "c"), include=("a", "b"), delimiter=",", has_header=True)
    blocks = list(read_delimited(fs, src, acct, **kwargs))
    assert [n for b in blocks for n in b.lines.tolist()] == [2, 4]
    assert acct.rejected == Counter({("f.csv", "bad_encoding"): 1})
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"f\.csv .*cannot read the file"):
        list(read_delimited(fs, src, acct, **kwargs))


def test_key_index_dense_and_sparse():
    for keys in (["5", "3", "9", "3"], ["5", "3", "900000000000", "3"]):
        index = KeyIndex(pa.array(keys))
        found = index.find(pa.array(["3", "9", "4", "x", "5", "900000000000"])).to_pylist()
        assert found[:5] == [1, 2 if "9" in keys else None, None, None, 0]
        assert index.duplicates == 1


def test_distinct_by_frequency():
    history = pa.array(["7", "3", "7", "9", "3", "7", "a", "b", "b", "a", "c", "z"])
    keep = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    assert distinct_by_frequency(history, keep, 6).to_pylist() == [["7", "3", "9"], ["a", "b", "c"]]
    assert distinct_by_frequency(history, np.zeros(12, bool), 6).to_pylist() == [None, None]
