"""Ali-CCP adapter (torch-rechub CSVs): click + purchase, times from row order."""

from __future__ import annotations

import calendar
import csv
import json
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pytest

from components.adapters import AdapterConfig, adapt
from tests.components.adapters.conftest import assert_raw_output, tree_bytes

pytestmark = pytest.mark.data

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def aliccp_dir(ctr_dir: Path) -> Path:
    return ctr_dir / "torch-rechub-ali-ccp"


def _rows(directory: Path, split: str) -> list[dict[str, str]]:
    with open(directory / f"ali_ccp_{split}_sample.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_click_and_purchase_with_times_continuing_across_files(aliccp_dir, tmp_path):
    out = tmp_path / "out"
    step = 120_000  # 200 rows two minutes apart: 400 minutes, hours 00..06
    summary = adapt("aliccp", AdapterConfig(src=str(aliccp_dir), out=str(out), time_step_ms=step))
    source = {s: _rows(aliccp_dir, s) for s in SPLITS}
    acc = summary.report["accounting"]
    assert acc["rows_in"] == acc["rows_written"] == sum(map(len, source.values())) == 200
    assert {k: v["rows_in"] for k, v in acc["files"].items()} == {
        "ali_ccp_train_sample.csv": 100,
        "ali_ccp_val_sample.csv": 50,
        "ali_ccp_test_sample.csv": 50,
    }
    table = assert_raw_output(out)
    all_rows = [r for s in SPLITS for r in source[s]]
    assert pc.sum(table["click"]).as_py() == sum(r["click"] == "1" for r in all_rows) == 12
    assert pc.sum(table["conversion"]).as_py() == sum(r["purchase"] == "1" for r in all_rows) == 3
    assert table["conversion"].null_count == 0
    assert summary.report["labels"]["conversions"] == 3
    assert sorted(p.name for p in out.glob("dt=2018-01-01/hr=*")) == [
        f"hr={h:02d}" for h in range(7)
    ]
    base = calendar.timegm((2018, 1, 1, 0, 0, 0))
    by_id = {r["event_id"]: r for r in table.to_pylist()}
    index = 0
    for split in SPLITS:
        for i, src in enumerate(source[split]):
            row = by_id[f"aliccp-{split}-{i}"]
            assert row["event_time"].timestamp() == base + index * step / 1000
            assert (row["user_id"], row["ad_id"], row["scene_id"]) == (
                src["101"],
                src["205"],
                src["301"],
            )
            assert row["campaign_id"] == row["advertiser_id"] == src["207"]
            assert (row["ad_category"], row["ad_brand"]) == (src["206"], src["216"])
            assert row["user_interests"] == [src["109_14"]] and row["ad_tags"] == [src["210"]]
            assert (row["click"], row["conversion"]) == (int(src["click"]), int(src["purchase"]))
            index += 1


def test_bad_labels_are_rejected_and_reruns_identical(aliccp_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    lines = (aliccp_dir / "ali_ccp_train_sample.csv").read_text().splitlines()
    fields = lines[1].split(",")
    lines += [
        ",".join(["0", "1", *fields[2:]]),  # line 102: purchase_without_click
        ",".join(["2", "0", *fields[2:]]),  # line 103: bad_value:click
        ",".join(fields[:-1]),  # line 104: wrong_field_count
        ",".join([*fields[:2], "", *fields[3:]]),  # line 105: missing:101
    ]
    (src / "ali_ccp_train_sample.csv").write_text("\n".join(lines))  # no final newline
    shutil.copy(aliccp_dir / "ali_ccp_test_sample.csv", src)
    runs = []
    for name in ("a", "b"):
        runs.append(adapt("aliccp", AdapterConfig(src=str(src), out=str(tmp_path / name))))
    acc = runs[0].report["accounting"]
    assert acc["rows_in"] == 154 and acc["rows_written"] == 150
    assert acc["rejected_by_reason"] == {
        "bad_value:click": 1,
        "missing:101": 1,
        "purchase_without_click": 1,
        "wrong_field_count": 1,
    }
    rejected = [
        json.loads(x) for x in (tmp_path / "a" / "_rejected.jsonl").read_text().splitlines()
    ]
    assert sorted(r["line"] for r in rejected) == [102, 103, 104, 105]
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    # The test file's rows come after the 104 train rows (rejected ones included).
    table = assert_raw_output(tmp_path / "a")
    first_test = next(r for r in table.to_pylist() if r["event_id"] == "aliccp-test-0")
    assert first_test["event_time"].timestamp() == calendar.timegm((2018, 1, 1, 0, 0, 0)) + 104


def test_wrong_directory(ctr_dir, tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"at least one of ali_ccp_train\.csv.*did you mean --src .*torch-rechub-ali-ccp.*Download",
    ):
        adapt("aliccp", AdapterConfig(src=str(ctr_dir), out=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="base time 'soon' is not ISO-8601"):
        AdapterConfig(src=str(ctr_dir), out=str(tmp_path / "o"), base_time="soon")


def test_full_files_win_over_samples(aliccp_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(aliccp_dir, src)
    head = (aliccp_dir / "ali_ccp_val_sample.csv").read_text().splitlines()[:4]
    (src / "ali_ccp_val.csv").write_text("\n".join(head) + "\n")  # the "full" val: 3 rows
    acc = adapt("aliccp", AdapterConfig(src=str(src), out=str(tmp_path / "o"))).report["accounting"]
    assert {k: v["rows_in"] for k, v in acc["files"].items()} == {
        "ali_ccp_train_sample.csv": 100,
        "ali_ccp_val.csv": 3,
        "ali_ccp_test_sample.csv": 50,
    }
