"""TalkingData AdTracking adapter on small files written in the published train.csv format."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from components.adapters import AdapterConfig, adapt
from tests.components.adapters.conftest import assert_raw_output, report
from tests.components.adapters.published import TD_BAD_ROWS, write_talkingdata


@pytest.fixture(scope="module")
def td(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:
    src = tmp_path_factory.mktemp("td") / "talkingdata"
    valid = write_talkingdata(src / "train.csv")
    out = src.parent / "raw"
    adapt("talkingdata", AdapterConfig(src=str(src), out=str(out)))
    return src, out, valid


def test_every_line_is_written_or_rejected_with_its_reason(td) -> None:
    src, out, valid = td
    lines = (src / "train.csv").read_text().splitlines()[1:]
    acc = report(out)["accounting"]
    assert acc["rows_in"] == len(lines) == len(valid) + len(TD_BAD_ROWS)
    assert acc["rows_written"] == len(valid)
    assert acc["rejected_by_reason"] == dict(Counter(reason for _, reason in TD_BAD_ROWS))
    assert acc["notes"] == {"attributed_time_disagrees": 2}
    for entry in map(json.loads, (out / "_rejected.jsonl").read_text().splitlines()):
        line = lines[entry["line"] - 2]  # line 1 is the header
        assert (line, entry["reason"]) in TD_BAD_ROWS


def test_fields_map_as_documented(td) -> None:
    src, out, valid = td
    table = assert_raw_output(out, unique_ids=True)
    lines = (src / "train.csv").read_text().splitlines()[1:]
    index = {line: i for i, line in enumerate(lines)}
    rows = {r["event_id"]: r for r in table.to_pylist()}
    for fields in valid:
        ip, app, device, os, channel, click_time, _, label = fields
        row = rows[f"talkingdata-train-{index[','.join(fields)]}"]
        when = datetime.strptime(click_time, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        assert row["event_time"] == when
        assert (row["user_id"], row["ad_id"], row["campaign_id"]) == (ip, app, app)
        assert (row["advertiser_id"], row["scene_id"]) == (app, channel)
        assert (row["device_type"], row["user_segment"]) == (device, os)
        assert row["click"] == int(label) and row["conversion"] is None
    assert report(out)["labels"]["clicks"] == sum(int(f[7]) for f in valid) > 0


@pytest.mark.parametrize(("task", "key"), [(None, "campaign_id"), ("app", "campaign_id"),
                                           ("channel", "scene_id")])  # fmt: skip
def test_task_option_picks_the_etl_task_key(td, tmp_path, capsys, task, key) -> None:
    from components.cli import main

    src, out, _ = td
    argv = ["adapt", "talkingdata", "--src", str(src / "train.csv"), "--out", str(tmp_path / "o")]
    assert main(argv + (["--task", task] if task else [])) == 0
    printed = capsys.readouterr().out
    assert f"--task-key {key}" in printed and "--ctr-min 0.0002 --ctr-max 0.05" in printed
    assert report(tmp_path / "o")["task_key"] == key
    # the raw output does not depend on the task
    assert report(tmp_path / "o")["accounting"] == report(out)["accounting"]


def test_full_file_wins_over_the_sample_and_a_bad_header_is_named(tmp_path) -> None:
    src = tmp_path / "td"
    full = write_talkingdata(src / "train.csv", rows=30, bad=False)
    write_talkingdata(src / "train_sample.csv", rows=50, bad=False)
    summary = adapt("talkingdata", AdapterConfig(src=str(src), out=str(tmp_path / "o")))
    assert summary.report["accounting"]["rows_in"] == len(full)
    assert list(summary.report["inputs"]) == ["train"]

    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "train.csv").write_text(
        "click_id,ip,app,device,os,channel,click_time\n0,1,2,3,4,5,2017-11-10 04:00:00\n"
    )
    with pytest.raises(ValueError, match=r"lacks column\(s\) attributed_time, is_attributed"):
        adapt("talkingdata", AdapterConfig(src=str(tmp_path / "test"), out=str(tmp_path / "o2")))
    with pytest.raises(ValueError, match=r"unknown --task 'ip'"):
        adapt("talkingdata", AdapterConfig(src=str(src), out=str(tmp_path / "o3"), task="ip"))
