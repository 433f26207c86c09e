"""The manifest's content hash names the rows, not the bytes one writer chose (issue 18, item 1):
a rerun, by another JVM or another writer, never orphans the checkpoints trained on the first run.

That an ETL rerun in another JVM writes the same bytes (the footer's encodings order pinned by
``components.etl.footer``) is checked with a real second JVM in ``test_etl_concurrency.py``.
"""

from __future__ import annotations


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
