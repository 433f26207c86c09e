"""Helpers for the adapter tests: read an adapter's output back and check its invariants."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from components.raw_schema import arrow_schema


def _dataset(root: Path) -> ds.Dataset:
    part = ds.partitioning(pa.schema([("dt", pa.string()), ("hr", pa.string())]), flavor="hive")
    return ds.dataset(root, format="parquet", partitioning=part)


def read_output(root: Path) -> pa.Table:
    """Every row of a Parquet adapter output, with its partition's ``dt`` and ``hr`` as strings."""
    return _dataset(root).to_table()


def report(root: Path) -> dict:
    return json.loads((root / "_adapter.json").read_text())


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def assert_raw_output(root: Path, unique_ids: bool = True) -> pa.Table:
    """Schema of every file = ``arrow_schema()``; every row in its own hour; ids populated."""
    files = sorted(root.glob("dt=*/hr=*/part-*.parquet"))
    assert files, f"no part files under {root}"
    dataset = _dataset(root)
    assert sorted(dataset.files) == [str(f) for f in files]
    expected = arrow_schema()
    for fragment in dataset.get_fragments():  # each footer read once: the schema, then the scan
        schema = fragment.physical_schema
        assert schema.equals(expected, check_metadata=False), fragment.path
        assert schema.metadata[b"metarec.schema"] == b"raw_ad_log"
    table = dataset.to_table()
    hour = pc.strftime(table["event_time"], format="%Y-%m-%d %H")
    where = pc.binary_join_element_wise(table["dt"], table["hr"], " ")
    assert pc.all(pc.equal(hour, where)).as_py(), "rows in the wrong dt=/hr= partition"
    for name in ("event_id", "user_id", "ad_id", "campaign_id", "advertiser_id", "scene_id"):
        col = table[name]
        assert col.null_count == 0, name
        assert pc.min(pc.utf8_length(col)).as_py() > 0, name
    assert table["click"].null_count == 0
    if unique_ids:
        assert pc.count_distinct(table["event_id"]).as_py() == table.num_rows
    return table


@pytest.fixture(scope="session")
def ml_dir(shared_data: Path) -> Path:
    return shared_data / "movielens-100k" / "original"


@pytest.fixture(scope="session")
def ctr_dir(shared_data: Path) -> Path:
    return shared_data / "ctr-samples"
