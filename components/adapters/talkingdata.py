"""TalkingData AdTracking -> raw ad logs: one record per ad click, label = the app was downloaded;
task = the advertised app (default) or the publisher channel (--task channel).

Files: the Kaggle competition's (https://www.kaggle.com/c/talkingdata-adtracking-fraud-detection/
data), a header line and one click per row:
  ip,app,device,os,channel,click_time,attributed_time,is_attributed
  83230,3,1,13,379,2017-11-06 14:32:21,,0
ids are integer codes; click_time and attributed_time are UTC, "YYYY-MM-DD HH:MM:SS". --src is
the directory holding train.csv (184,903,890 rows) or train_sample.csv (100,000 rows; train.csv
wins when both are there), or one of those files. test.csv has no labels and is not read.

Mapping (one row -> one raw record):
  event_id        talkingdata-<file stem>-<0-based row index in the file> (rows have no id, and
                  identical rows occur: the index keeps each one)
  event_time      click_time (UTC)
  user_id         ip               (the dataset's user proxy)
  ad_id           app
  campaign_id     app              (the advertised app: --task app, the ETL's --task-key campaign_id)
  advertiser_id   app
  scene_id        channel          (the publisher channel: --task channel, --task-key scene_id)
  device_type     device
  user_segment    os               (the OS version: the only per-user profile field)
  click           is_attributed    (every row IS a click: the label to predict is the download,
                                    0.25 % of the clicks: TalkingData's validation bounds,
                                    SOURCE_THRESHOLDS in components/validation/suites.py)
  conversion      null             (no deeper funnel event)
  not mapped      attributed_time (it only dates the download), the other raw columns (null)

--task picks the task of the printed next steps (the ETL's --task-key); the raw output is the
same for both.

Rejected rows (first failing rule): wrong_field_count, blank_line, bad_encoding,
bad_value:<ip|app|device|os|channel> (not a non-negative integer), bad_value:click_time,
bad_value:is_attributed (not 0/1). A row whose attributed_time disagrees with is_attributed (a
time without the label or the label without a time) is kept and counted under
notes.attributed_time_disagrees.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from components.adapters.accounting import Accounting, RowChecks
from components.adapters.canonical import in_set, is_int, is_nonempty, raw_table, timestamps_ms
from components.adapters.reading import (
    SourceFile,
    locate_files,
    prefer_full_files,
    read_delimited,
    read_header,
    require_columns,
)
from components.adapters.run import AdapterConfig, Source

DOWNLOAD = (
    "https://www.kaggle.com/c/talkingdata-adtracking-fraud-detection/data "
    "(train.csv or train_sample.csv)"
)
COLUMNS = ("ip", "app", "device", "os", "channel", "click_time", "attributed_time", "is_attributed")
IDS = ("ip", "app", "device", "os", "channel")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TIME_RE = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"
TASKS = (("app", "campaign_id"), ("channel", "scene_id"))


def locate(fs: pafs.FileSystem, root: str) -> dict[str, SourceFile]:
    found = locate_files(
        fs,
        root,
        dataset="talkingdata",
        download=DOWNLOAD,
        any_of={"train": "train.csv", "train_sample": "train_sample.csv"},
        single_file_role="train",
    )
    return prefer_full_files(found, ("train",))


def _click_ms(values: pa.Array) -> pa.Array:
    """Epoch milliseconds of ``YYYY-MM-DD HH:MM:SS`` (UTC); null where it does not parse or is
    no calendar time (strptime rolls 2017-11-31 over to December 1st: the round trip catches it)."""
    ok = pc.match_substring_regex(values, TIME_RE)
    text = pc.if_else(ok, values, pa.scalar(None, pa.string()))
    parsed = pc.strptime(text, format=TIME_FORMAT, unit="s", error_is_null=True)
    exact = pc.equal(pc.strftime(parsed, format=TIME_FORMAT), text)
    ms = pc.multiply(pc.cast(parsed, pa.int64()), 1000)
    return pc.if_else(exact, ms, pa.scalar(None, pa.int64()))


def read(
    fs: pafs.FileSystem, files: dict[str, SourceFile], config: AdapterConfig, acct: Accounting
) -> Iterator[pa.Table]:
    (f,) = files.values()
    header = read_header(fs, f, ",", "utf8")
    require_columns(f, header, COLUMNS)
    stem = f.label.removesuffix(".csv")
    for block in read_delimited(
        fs,
        f,
        acct,
        names=header,
        include=COLUMNS,
        delimiter=",",
        has_header=True,
        block_bytes=config.block_bytes,
    ):
        c = block.columns
        ms = _click_ms(c["click_time"])
        checks = RowChecks(block.num_rows)
        for name in IDS:
            checks.require(is_int(c[name]), f"bad_value:{name}")
        checks.require(pc.is_valid(ms), "bad_value:click_time")
        checks.require(in_set(c["is_attributed"], ["0", "1"]), "bad_value:is_attributed")
        block = acct.apply(f.label, block, checks)
        if block.num_rows == 0:
            continue
        c, n = block.columns, block.num_rows
        label = pc.cast(c["is_attributed"], pa.int8())
        disagree = pc.not_equal(is_nonempty(c["attributed_time"]), pc.equal(label, 1))
        acct.notes["attributed_time_disagrees"] += pc.sum(disagree).as_py() or 0
        acct.rows_written[f.label] += n
        yield raw_table(
            n,
            {
                "event_id": pc.binary_join_element_wise(
                    "talkingdata", stem, pc.cast(pa.array(block.lines - 2), pa.string()), "-"
                ),
                "event_time": timestamps_ms(_click_ms(c["click_time"])),
                "user_id": c["ip"],
                "ad_id": c["app"],
                "campaign_id": c["app"],
                "advertiser_id": c["app"],
                "scene_id": c["channel"],
                "device_type": c["device"],
                "user_segment": c["os"],
                "click": label,
            },
        )


def describe(config: AdapterConfig) -> dict[str, Any]:
    return {
        "labels_rule": {"click": "is_attributed (the app was downloaded)", "conversion": "null"},
        "event_time": {"derived": False, "rule": "click_time (UTC)"},
        "event_id": "talkingdata-<file stem>-<row index in file>",
        "mapping": {
            "user_id": "ip",
            "ad_id": "app",
            "campaign_id": "app",
            "advertiser_id": "app",
            "scene_id": "channel",
            "device_type": "device",
            "user_segment": "os",
        },
        "tasks": {value: column for value, column in TASKS},
    }


TALKINGDATA = Source(
    name="talkingdata",
    summary="TalkingData AdTracking clicks (train.csv); label = download; task = app or channel",
    help=__doc__,
    task_key=TASKS[0][1],
    locate=locate,
    read=read,
    describe=describe,
    bounds="talkingdata",
    tasks=TASKS,
)
