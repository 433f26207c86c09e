"""Memory is bounded by the chunk size, not by --rows."""

from __future__ import annotations

import pyarrow.parquet as pq

from tests.components.generate.helpers import data_files, make


def test_chunk_size_is_bounded_irrespective_of_rows(tmp_path):
    small, _ = make(tmp_path / "small", rows=2_000, chunk_rows=500)
    large, root = make(tmp_path / "large", rows=40_000, chunk_rows=500, format="parquet")
    assert small.max_chunk_rows <= 500 and large.max_chunk_rows <= 500
    assert large.chunks >= 40_000 // 500  # the work really was split
    assert large.rows_written == 40_000
    # One row group per chunk: the writer never held more than a chunk either.
    for f in data_files(root):
        meta = pq.read_metadata(f)
        assert all(meta.row_group(i).num_rows <= 500 for i in range(meta.num_row_groups))


def test_default_chunk_bounds_a_big_hour(tmp_path):
    summary, _ = make(tmp_path, rows=30_000, hours=1, num_users=2_000)
    assert summary.chunks == 1 and summary.max_chunk_rows == 30_000  # below the 131072 default
    summary, _ = make(tmp_path / "b", rows=30_000, hours=1, num_users=2_000, chunk_rows=7_000)
    assert summary.chunks == 5 and summary.max_chunk_rows == 6_000
