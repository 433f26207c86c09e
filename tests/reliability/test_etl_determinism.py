"""The manifest's content hash names the rows, not the bytes one writer chose (issue 18, item 1):
a rerun, by another JVM or another writer, never orphans the checkpoints trained on the first run;
and the footer's encodings lists, the part of Spark's bytes that changed with every JVM, are pinned.

That an ETL rerun in another JVM writes the same bytes (the footer's encodings order pinned by
``components.etl.footer``) is checked with a real second JVM in ``test_etl_concurrency.py``.
"""

from __future__ import annotations

import pytest


def test_the_content_hash_names_the_rows_not_the_bytes(tmp_path) -> None:
    """Rewritten with another compression, row-group and page size, a file keeps its rows' digest
    (and so the dataset its content hash); one changed value or another row order changes it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tests.trainer.run_helpers import write_episodes
    from trainer.data.contract import content_hash, data_sha256, load_manifest

    manifest = load_manifest(str(write_episodes(tmp_path / "syn", num_tasks=12)))
    entry = manifest.files[0]
    path = tmp_path / "syn" / entry["path"]
    table = pq.read_table(path)
    assert table.num_rows > 2 and entry["data_sha256"] == data_sha256(path)
    other = tmp_path / "other.parquet"
    pq.write_table(table, other, compression="snappy", row_group_size=2, data_page_size=512,
                   use_dictionary=False)  # fmt: skip
    assert other.read_bytes() != path.read_bytes()
    assert data_sha256(other) == entry["data_sha256"]
    i = table.schema.get_field_index("n_support")
    changed = table.set_column(i, "n_support", pc.add(table["n_support"], pa.scalar(1, pa.int32())))
    pq.write_table(changed, other)
    assert data_sha256(other) != entry["data_sha256"]
    pq.write_table(table.take(list(range(table.num_rows))[::-1]), other)
    assert data_sha256(other) != entry["data_sha256"]
    assert manifest.content_hash == content_hash(manifest.files)


def _encodings_lists(data: bytes) -> tuple[int, list[tuple[int, int, list[int]]]]:
    from components.etl import footer

    offset, length = footer.footer_span(len(data), data[-8:])
    walker = footer._Walker(data[offset : offset + length])
    walker.struct(depth=0)
    return offset, walker.lists


@pytest.mark.parametrize("store", ["local", "object store"])
def test_pinning_the_footer_sorts_every_encodings_list(tmp_path, store) -> None:
    """Each column chunk's encodings written in another order (as another JVM would) come out
    sorted, patched in place on a local disk or rewritten through a copy elsewhere; the file
    reads the same and only those bytes changed."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from components.etl.load import pin_footer

    path = tmp_path / "part-00000.parquet"
    table = pa.table({"id": [3, 3, 5, None], "key": ["a", "a", "b", "c"]})
    pq.write_table(table, path)  # dictionary pages: several encodings per chunk
    data = bytearray(path.read_bytes())
    offset, lists = _encodings_lists(bytes(data))
    assert any(len(set(values)) > 1 for *_, values in lists)
    for start, end, values in lists:  # one byte per value here: sort the bytes, descending
        assert end - start == len(values)
        span = slice(offset + start, offset + end)
        data[span] = bytes(sorted(data[span], reverse=True))
    path.write_bytes(bytes(data))
    assert any(v != sorted(v) for *_, v in _encodings_lists(bytes(data))[1])
    if store == "local":
        fs, where = pafs.LocalFileSystem(), str(path)
    else:  # not a LocalFileSystem: the copy-and-move path that object stores take
        fs, where = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), path.name
    pin_footer(fs, where)
    pinned = path.read_bytes()
    assert len(pinned) == len(data) and all(v == sorted(v) for *_, v in _encodings_lists(pinned)[1])
    changed = [i for i, (a, b) in enumerate(zip(pinned, data, strict=True)) if a != b]
    assert changed and min(changed) >= offset  # only footer bytes
    assert pq.read_table(path).equals(table)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no copy left behind
