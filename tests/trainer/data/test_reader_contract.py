"""Corrupt or mismatched ETL output fails with a ContractError that names the file and the fix."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.data.contract import MANIFEST_NAME, ContractError
from trainer.data.reader import EpisodeReader


def _open(root, **kw):
    return EpisodeReader(str(root), kw.pop("split", "train"), batch_episodes=8, prefetch=0, **kw)


def _edit_manifest(root, fn) -> None:
    path = root / MANIFEST_NAME
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _first_train_file(root) -> tuple[str, object]:
    d = json.loads((root / MANIFEST_NAME).read_text())
    rel = next(f["path"] for f in d["files"] if f["split"] == "train")
    return rel, root / rel


def _rewrite(path, fn) -> None:
    table = fn(pq.read_table(path))
    pq.write_table(table, path, row_group_size=7)


def test_schema_version_mismatch(small_copy):
    _edit_manifest(small_copy, lambda d: d.update(schema_version=99))
    with pytest.raises(ContractError, match=r"schema version 99 is not supported.*rerun the ETL"):
        _open(small_copy)


def test_missing_manifest(small_copy):
    (small_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ContractError, match=r"no _manifest\.json"):
        _open(small_copy)


def test_missing_column(small_copy):
    rel, path = _first_train_file(small_copy)
    _rewrite(path, lambda t: t.drop_columns(["dense"]))
    with pytest.raises(ContractError, match=f"{rel}: missing episode column.*dense.*rerun"):
        _open(small_copy)


def test_wrong_column_type(small_copy):
    rel, path = _first_train_file(small_copy)

    def widen(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("click")
        return t.set_column(i, "click", t.column("click").cast(pa.list_(pa.int32())))

    _rewrite(path, widen)
    with pytest.raises(
        ContractError, match=f"{rel}: column 'click' has type list<.*int32>.*list<int8>"
    ):
        _open(small_copy)


def test_list_length_disagrees_with_manifest(small_copy):
    # the manifest says K + Q = 8 while the files hold 7 samples per episode: footer check
    _edit_manifest(small_copy, lambda d: d.update(k_support=d["k_support"] + 1))
    with pytest.raises(ContractError, match=r"row group 0: column 'sparse' holds .* K \+ Q = 8"):
        _open(small_copy)


def test_single_wrong_list_length_is_caught_when_read(small_copy):
    # two episodes whose list lengths are off by one sample in opposite directions: the footer
    # totals still agree, the vectorised offsets check finds it when the row group is read
    rel, path = _first_train_file(small_copy)
    table = pq.read_table(path)
    sparse = table.column("sparse").to_pylist()
    width = len(sparse[0]) // 7
    sparse[0], sparse[1] = sparse[0] + sparse[1][:width], sparse[1][width:]
    table = table.set_column(
        table.schema.get_field_index("sparse"), "sparse", pa.array(sparse, pa.list_(pa.int64()))
    )
    pq.write_table(table, path, row_group_size=7)
    r = _open(small_copy, shuffle=False, world_size=1)
    with pytest.raises(
        ContractError, match=f"{rel} row group 0: column 'sparse' has lists of length {8 * width}"
    ):
        list(r)


@pytest.mark.parametrize("where", ["negative", "past_buckets"])
def test_an_id_outside_its_features_buckets_is_caught_when_read(small_copy, where):
    # one id of one sample of the last slot: below 0, or equal to its feature's bucket count
    rel, path = _first_train_file(small_copy)
    d = json.loads((small_copy / MANIFEST_NAME).read_text())
    last = d["features"][-1]
    table = pq.read_table(path)
    sparse = table.column("sparse").to_pylist()
    width = sum(f.get("slots", 1) for f in d["features"])
    sparse[3][5 * width + width - 1] = -1 if where == "negative" else last["buckets"]
    table = table.set_column(
        table.schema.get_field_index("sparse"), "sparse", pa.array(sparse, pa.list_(pa.int64()))
    )
    pq.write_table(table, path, row_group_size=7)
    r = _open(small_copy, shuffle=False, world_size=1)
    with pytest.raises(
        ContractError, match=f"{rel} row group 0: column 'sparse' holds ids outside"
    ):
        list(r)


def test_missing_file(small_copy):
    rel, path = _first_train_file(small_copy)
    path.unlink()
    with pytest.raises(
        ContractError, match=f"{rel}: listed in the manifest but missing.*rerun `metarec etl`"
    ):
        _open(small_copy)


def test_truncated_file(small_copy):
    rel, path = _first_train_file(small_copy)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ContractError, match=f"{rel}: not a readable Parquet file"):
        _open(small_copy)


def test_row_counts_disagree_with_manifest(small_copy):
    def bump(d):
        next(f for f in d["files"] if f["split"] == "train")["rows"] += 1

    _edit_manifest(small_copy, bump)
    with pytest.raises(ContractError, match=r"the manifest says rows=.*file changed after the ETL"):
        _open(small_copy)


def test_checksums_are_verified_on_request(small_copy):
    rel, path = _first_train_file(small_copy)
    _rewrite(path, lambda t: t)  # same content, other bytes (no zstd)
    _open(small_copy)  # footers and counts still agree
    with pytest.raises(ContractError, match=f"{rel}: sha256 differs"):
        _open(small_copy, verify_checksums=True)


def test_unknown_split(small_root):
    with pytest.raises(ContractError, match="unknown split 'test'"):
        _open(small_root, split="test")


def test_empty_split_streams_nothing_or_refuses_forever(tmp_path):
    from trainer.data.synthetic import write_synthetic_episodes

    write_synthetic_episodes(tmp_path, num_tasks=5, splits=("train",), seed=1)
    r = _open(tmp_path, split="valid", epochs=1)
    assert r.steps_per_epoch == 0 and list(r) == []
    with pytest.raises(ValueError, match="no episodes"):
        _open(tmp_path, split="valid")
