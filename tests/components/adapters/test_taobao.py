"""Taobao display-ad adapters: FuxiCTR joined CSV, the original Tianchi layout, PaddleRec DMR."""

from __future__ import annotations

import calendar
import csv
import json
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pytest

from components.adapters import AdapterConfig, adapt
from tests.components.adapters.conftest import assert_raw_output, report, tree_bytes

pytestmark = pytest.mark.data

PROFILE = (
    "userid",
    "cms_segid",
    "cms_group_id",
    "final_gender_code",
    "age_level",
    "pvalue_level",
    "shopping_level",
    "occupation",
    "new_user_class_level",
)
AD = ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price")


@pytest.fixture(scope="module")
def fuxi_rows(ctr_dir: Path) -> list[dict[str, str]]:
    with open(ctr_dir / "fuxictr-taobao-ad" / "train_sample.csv", newline="") as f:
        return list(csv.DictReader(f))


def _unix(china_time: str) -> int:
    t = datetime.strptime(china_time, "%Y-%m-%d %H:%M:%S") - timedelta(hours=8)
    return calendar.timegm(t.timetuple())


def test_fuxictr_sample(ctr_dir, fuxi_rows, tmp_path):
    out = tmp_path / "out"
    src = ctr_dir / "fuxictr-taobao-ad"
    summary = adapt("taobao-fuxictr", AdapterConfig(src=str(src), out=str(out)))
    acc = summary.report["accounting"]
    assert acc["rows_in"] == acc["rows_written"] == len(fuxi_rows) == 100
    # One pair of rows shares (user, adgroup, second, pid): same event id, the ETL keeps one.
    table = assert_raw_output(out, unique_ids=False)
    assert pc.count_distinct(table["event_id"]).as_py() == 99
    assert pc.sum(table["click"]).as_py() == sum(r["clk"] == "1" for r in fuxi_rows) == 4
    assert table["conversion"].null_count == table.num_rows  # unknown in this dataset
    by_id = {}
    for r in table.to_pylist():
        by_id.setdefault(r["event_id"], []).append(r)
    for src_row in fuxi_rows:
        ts = _unix(src_row["time_stamp"])
        key = f"tb-{src_row['userid']}-{src_row['adgroup_id']}-{ts}-{src_row['pid']}"
        candidates = by_id[key]
        row = next(r for r in candidates if r["campaign_id"] == src_row["campaign_id"])
        assert row["event_time"].timestamp() == ts
        assert row["advertiser_id"] == src_row["customer"] and row["scene_id"] == src_row["pid"]
        assert row["ad_category"] == src_row["cate_id"]
        assert row["ad_brand"] == (src_row["brand"] or None)
        assert row["item_price"] == float(src_row["price"])
        assert row["user_gender"] == {"1": "m", "2": "f", "": None}[src_row["final_gender_code"]]
        assert row["user_segment"] == (src_row["cms_segid"] or None)
        seq = src_row["click_sequence"]
        assert row["user_interests"] == (seq.split("^") if seq else None)
    # The log starts at 2017-05-06 00:00 China time = 16:00 UTC the day before.
    assert report(out)["output"]["time_range"]["start_hour"] == "2017-05-05T16"
    assert sorted(p.name for p in out.glob("dt=*/hr=*")) == ["hr=16"]


def _write_tianchi(rows: list[dict[str, str]], dst: Path) -> Path:
    """The three Tianchi files, built from FuxiCTR rows (the first row of an ad/user wins)."""
    dst.mkdir()
    ads, users = {}, {}
    with open(dst / "raw_sample.csv", "w") as f:
        f.write("user,time_stamp,adgroup_id,pid,nonclk,clk\n")
        for r in rows:
            clk = int(r["clk"])
            f.write(
                f"{r['userid']},{_unix(r['time_stamp'])},{r['adgroup_id']},{r['pid']},"
                f"{1 - clk},{clk}\n"
            )
            ads.setdefault(r["adgroup_id"], [r[k] or ("NULL" if k == "brand" else "") for k in AD])
            users.setdefault(r["userid"], [r[k] for k in PROFILE])
    (dst / "ad_feature.csv").write_text(
        ",".join(AD) + "\n" + "".join(",".join(v) + "\n" for v in ads.values())
    )
    (dst / "user_profile.csv").write_text(  # the real header ends with a space
        ",".join(PROFILE) + " \n" + "".join(",".join(v) + "\n" for v in users.values())
    )
    return dst


def test_tianchi_layout_gives_the_same_records_as_the_joined_csv(ctr_dir, fuxi_rows, tmp_path):
    src = _write_tianchi(fuxi_rows, tmp_path / "tianchi")
    adapt("taobao", AdapterConfig(src=str(src), out=str(tmp_path / "t")))
    adapt(
        "taobao-fuxictr",
        AdapterConfig(
            src=str(ctr_dir / "fuxictr-taobao-ad" / "train_sample.csv"), out=str(tmp_path / "f")
        ),
    )
    tianchi = assert_raw_output(tmp_path / "t", unique_ids=False).to_pylist()
    fuxi = assert_raw_output(tmp_path / "f", unique_ids=False).to_pylist()
    assert len(tianchi) == len(fuxi) == 100
    # The FuxiCTR sample is not a faithful join: a few adgroup ids carry different ad features
    # on different rows. ad_feature.csv holds the first, so those rows differ in ad columns.
    first_ad = {}
    for r in fuxi_rows:
        first_ad.setdefault(r["adgroup_id"], r)
    ad_columns = {"campaign_id", "advertiser_id", "ad_category", "ad_brand", "item_price"}
    same = 0
    for t, f, src_row in zip(tianchi, fuxi, fuxi_rows, strict=True):
        assert t["user_interests"] is None  # behavior_log is not read in this layout
        t.pop("user_interests"), f.pop("user_interests")
        if first_ad[src_row["adgroup_id"]]["campaign_id"] == src_row["campaign_id"]:
            assert t == f
            same += 1
        else:
            assert {k: v for k, v in t.items() if k not in ad_columns} == {
                k: v for k, v in f.items() if k not in ad_columns
            }
            assert t["campaign_id"] == first_ad[src_row["adgroup_id"]]["campaign_id"]
    assert same == 95


def test_tianchi_rejections_and_missing_profiles(fuxi_rows, tmp_path):
    src = _write_tianchi(fuxi_rows[:20], tmp_path / "tianchi")
    lines = (src / "raw_sample.csv").read_text().splitlines()
    first = lines[1].split(",")
    lines += [
        ",".join([first[0], first[1], "999999999", *first[3:]]),  # line 22: unknown_adgroup
        ",".join([*first[:4], "1", "1"]),  # line 23: nonclk == clk
        ",".join(first[:5]),  # line 24: wrong_field_count
        ",".join(["424242", *first[1:]]),  # line 25: user without profile: kept
        ",".join([first[0], "yesterday", *first[2:]]),  # line 26: bad_value:time_stamp
    ]
    (src / "raw_sample.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    acc = adapt("taobao", AdapterConfig(src=str(src), out=str(out))).report["accounting"]
    assert acc["rows_in"] == 25 and acc["rows_written"] == 21
    assert acc["rejected_by_reason"] == {
        "bad_value:nonclk": 1,
        "bad_value:time_stamp": 1,
        "unknown_adgroup": 1,
        "wrong_field_count": 1,
    }
    assert acc["notes"]["user_without_profile"] == 1
    assert acc["side_tables"]["user_profile.csv"]["rows_rejected"] == 0
    rejected = [json.loads(x) for x in (out / "_rejected.jsonl").read_text().splitlines()]
    assert sorted(r["line"] for r in rejected) == [22, 23, 24, 26]
    table = assert_raw_output(out, unique_ids=False)
    orphan = [r for r in table.to_pylist() if r["user_id"] == "424242"]
    assert orphan and orphan[0]["user_gender"] is None and orphan[0]["campaign_id"]


def test_tianchi_missing_file(fuxi_rows, tmp_path):
    src = _write_tianchi(fuxi_rows[:5], tmp_path / "tianchi")
    (src / "ad_feature.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing ad_feature\.csv.*tianchi\.aliyun\.com"):
        adapt("taobao", AdapterConfig(src=str(src), out=str(tmp_path / "o")))
    _write_tianchi(fuxi_rows[:5], tmp_path / "t2")
    (tmp_path / "t2" / "raw_sample.csv").write_text("userid,when\n1,2\n")
    with pytest.raises(ValueError, match=r"raw_sample\.csv .* lacks column.*user, time_stamp"):
        adapt("taobao", AdapterConfig(src=str(tmp_path / "t2"), out=str(tmp_path / "o2")))


# -- PaddleRec DMR ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dmr_file(ctr_dir: Path) -> Path:
    return ctr_dir / "paddlerec-taobao-ad-dmr" / "alimama_sampled_train.txt"


def test_dmr_sample_with_row_order_times(dmr_file, tmp_path):
    rows = [line.split(",") for line in dmr_file.read_text().splitlines()]
    out = tmp_path / "out"
    step = 60_000  # one row a minute: 500 rows span 9 hours
    summary = adapt(
        "taobao-dmr",
        AdapterConfig(
            src=str(dmr_file.parent),
            out=str(out),
            base_time="2017-05-06T00:00:00Z",
            time_step_ms=step,
        ),
    )
    acc = summary.report["accounting"]
    assert acc["rows_in"] == acc["rows_written"] == len(rows) == 500
    assert summary.report["event_time"]["derived"] is True
    assert summary.report["event_time"]["time_step_ms"] == step
    table = assert_raw_output(out)
    assert pc.sum(table["click"]).as_py() == sum(r[266] == "1" for r in rows) == 210
    assert sorted({p.name for p in out.glob("dt=*/hr=*")}) == [f"hr={h:02d}" for h in range(9)]
    base = calendar.timegm((2017, 5, 6, 0, 0, 0))
    by_id = {r["event_id"]: r for r in table.to_pylist()}
    for i, src_row in enumerate(rows):
        row = by_id[f"dmr-alimama_sampled_train-{i}"]
        assert row["event_time"].timestamp() == base + i * step / 1000
        assert (row["user_id"], row["ad_id"], row["campaign_id"], row["advertiser_id"]) == (
            src_row[250],
            src_row[259],
            src_row[261],
            src_row[262],
        )
        assert row["scene_id"] == src_row[265] and row["ad_category"] == src_row[260]
        assert row["click"] == int(src_row[266])
        history = [c for c, m in zip(src_row[50:100], src_row[150:200], strict=True) if m == "1"]
        counts = Counter(history)
        expected = sorted(counts, key=lambda c: (-counts[c], history.index(c)))
        assert row["user_interests"] == (expected or None)


def test_dmr_rejected_line_does_not_shift_later_times(dmr_file, tmp_path):
    lines = dmr_file.read_text().splitlines()
    broken = list(lines)
    broken[10] = ",".join(lines[10].split(",")[:200])  # wrong_field_count
    broken[20] = ",".join([*lines[20].split(",")[:266], "yes"])  # bad_value:clk
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "alimama_sampled_train.txt").write_text("\n".join(broken) + "\n")
    adapt("taobao-dmr", AdapterConfig(src=str(dmr_file), out=str(tmp_path / "good")))
    summary = adapt(
        "taobao-dmr",
        AdapterConfig(src=str(tmp_path / "src"), out=str(tmp_path / "bad"), block_bytes=4096),
    )  # many blocks
    assert summary.report["accounting"]["rejected_by_reason"] == {
        "bad_value:clk": 1,
        "wrong_field_count": 1,
    }
    good = {r["event_id"]: r for r in assert_raw_output(tmp_path / "good").to_pylist()}
    bad = {r["event_id"]: r for r in assert_raw_output(tmp_path / "bad").to_pylist()}
    assert set(good) - set(bad) == {"dmr-alimama_sampled_train-10", "dmr-alimama_sampled_train-20"}
    assert all(bad[k] == good[k] for k in bad)


def test_reruns_are_byte_identical(dmr_file, tmp_path):
    for name in ("a", "b"):
        adapt(
            "taobao-dmr",
            AdapterConfig(
                src=str(dmr_file), out=str(tmp_path / name), format="jsonl", time_step_ms=30_000
            ),
        )
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert len(list((tmp_path / "a").glob("dt=*/hr=*/part-00000.jsonl"))) == 5
