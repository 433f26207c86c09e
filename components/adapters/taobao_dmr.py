"""Taobao display ads as preprocessed for DMR by PaddleRec -> raw ad logs; task = campaign.

Files: 267 comma-separated columns per row, no header. --src is one such file, or a directory
with train_sorted.csv / test.csv (PaddleRec's full set: https://paddlerec.bj.bcebos.com/datasets/
dmr/dataset_full.zip, folder work/) or alimama_sampled_train.txt (the 500-row sample in
PaddleRec models/rank/dmr/data/sample_data/), read in that order.

Columns (PaddleRec models/rank/dmr): 0-49 behaviour type history, 50-99 category history,
100-149 brand history, 150-199 mask of the category history, 200-249 mask of the brand history,
250 user id, 251-258 user profile (cms_segid, cms_group_id, gender, age_level, pvalue_level,
shopping_level, occupation, city level), 259 adgroup_id, 260 cate_id, 261 campaign_id,
262 customer (advertiser), 263 brand, 264 price (normalised), 265 pid (re-indexed slot), 266 clk.
Empty values and "NULL" are missing values (PaddleRec's reader reads them as 0).

The rows carry NO timestamp. event_time is derived from row order:
  event_time = base_time + row_index * time_step_ms
where row_index counts every data row of the files in the order above, rejected rows included (so a
dropped line does not shift the rows after it). Default base 2017-05-05T16:00:00Z (2017-05-06 00:00
in China, where the Taobao log starts), step 1000 ms; --base-time / --time-step-ms change them
(train_sorted.csv is in time order, so row order is the real order; the full train file covers
7 days, so a step of about 7*86400000/rows ms reproduces the real span).

Mapping: event_id dmr-<file stem>-<0-based row index in its file>; user_id 250; ad_id 259;
campaign_id 261 (task key); advertiser_id 262; scene_id 265; user_gender 253 (1 -> "m",
2 -> "f"); user_age_bucket 254; user_segment 251; region 258; ad_category 260; ad_brand 263;
item_price 264 (the normalised price, not a currency amount); user_interests = the distinct
categories of the category history where its mask is 1, most frequent first; click 266;
conversion null. Not mapped: the behaviour-type and brand histories, 252, 255-257.

Rejected rows (first failing rule): wrong_field_count, blank_line, missing:user_id(250),
missing:adgroup_id(259), missing:campaign_id(261), missing:customer(262), missing:pid(265),
bad_value:clk(266).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from components.adapters.accounting import Accounting, RowChecks
from components.adapters.canonical import (
    distinct_by_frequency,
    empty_to_null,
    in_set,
    is_nonempty,
    optional_number,
    parse_base_time,
    raw_table,
    recode,
    safe_label,
    timestamps_ms,
)
from components.adapters.reading import SourceFile, locate_files, read_delimited
from components.adapters.run import AdapterConfig, Source

DOWNLOAD = (
    "https://paddlerec.bj.bcebos.com/datasets/dmr/dataset_full.zip (work/train_sorted.csv,"
    " work/test.csv)"
)
DEFAULT_BASE_TIME = "2017-05-05T16:00:00Z"
FILES = {"train": "train_sorted.csv", "test": "test.csv", "sample": "alimama_sampled_train.txt"}
NAMES = tuple(f"c{i}" for i in range(267))
HISTORY = tuple(f"c{i}" for i in range(50, 100))
HISTORY_MASK = tuple(f"c{i}" for i in range(150, 200))
ROW = {
    "user": "c250",
    "segid": "c251",
    "gender": "c253",
    "age": "c254",
    "city": "c258",
    "adgroup": "c259",
    "cate": "c260",
    "campaign": "c261",
    "customer": "c262",
    "brand": "c263",
    "price": "c264",
    "pid": "c265",
    "clk": "c266",
}


def locate(fs: pafs.FileSystem, root: str) -> dict[str, SourceFile]:
    found = locate_files(
        fs, root, dataset="taobao-dmr", download=DOWNLOAD, any_of=FILES, single_file_role="train"
    )
    if "train" in found or "test" in found:  # the full set: never mix the sample into it
        found.pop("sample", None)
    return found


def read(
    fs: pafs.FileSystem, files: dict[str, SourceFile], config: AdapterConfig, acct: Accounting
) -> Iterator[pa.Table]:
    base_ms = parse_base_time(config.base_time or DEFAULT_BASE_TIME)
    include = (*HISTORY, *HISTORY_MASK, *ROW.values())
    offset = 0  # row index of the first data row of the current file
    for f in files.values():
        stem = safe_label(f.label.rsplit(".", 1)[0])
        for block in read_delimited(
            fs,
            f,
            acct,
            names=NAMES,
            include=include,
            delimiter=",",
            has_header=False,
            block_bytes=config.block_bytes,
        ):
            c = block.columns
            checks = RowChecks(block.num_rows)
            for key, name in (
                ("user", "user_id"),
                ("adgroup", "adgroup_id"),
                ("campaign", "campaign_id"),
                ("customer", "customer"),
                ("pid", "pid"),
            ):
                checks.require(is_nonempty(empty_to_null(c[ROW[key]], "NULL")), f"missing:{name}")
            checks.require(in_set(c[ROW["clk"]], ["0", "1"]), "bad_value:clk")
            block = acct.apply(f.label, block, checks)
            if block.num_rows == 0:
                continue
            c, n = block.columns, block.num_rows
            index_in_file = block.lines - 1
            history = pa.concat_arrays([c[name] for name in HISTORY])  # column-major
            mask = np.stack(
                [c[name].to_numpy(zero_copy_only=False) == "1" for name in HISTORY_MASK], axis=1
            )
            valid = np.stack([c[name].to_numpy(zero_copy_only=False) for name in HISTORY], axis=1)
            keep = mask & (valid != "") & (valid != "NULL")
            # to row-major: row r, position j -> r * 50 + j
            order = (np.arange(len(HISTORY))[None, :] * n + np.arange(n)[:, None]).ravel()
            interests = distinct_by_frequency(
                history.take(pa.array(order)), keep.ravel(), len(HISTORY)
            )
            ms = base_ms + (offset + index_in_file) * config.time_step_ms
            acct.rows_written[f.label] += n
            yield raw_table(
                n,
                {
                    "event_id": pc.binary_join_element_wise(
                        "dmr", stem, pc.cast(pa.array(index_in_file), pa.string()), "-"
                    ),
                    "event_time": timestamps_ms(ms),
                    "user_id": c[ROW["user"]],
                    "ad_id": c[ROW["adgroup"]],
                    "campaign_id": c[ROW["campaign"]],
                    "advertiser_id": c[ROW["customer"]],
                    "scene_id": c[ROW["pid"]],
                    "user_gender": recode(
                        empty_to_null(c[ROW["gender"]], "NULL"), {"1": "m", "2": "f"}
                    ),
                    "user_age_bucket": empty_to_null(c[ROW["age"]], "NULL"),
                    "user_segment": empty_to_null(c[ROW["segid"]], "NULL"),
                    "region": empty_to_null(c[ROW["city"]], "NULL"),
                    "ad_category": empty_to_null(c[ROW["cate"]], "NULL"),
                    "ad_brand": empty_to_null(c[ROW["brand"]], "NULL"),
                    "item_price": optional_number(c[ROW["price"]], "price", acct),
                    "user_interests": interests,
                    "click": pc.cast(c[ROW["clk"]], pa.int8()),
                },
            )
        offset += acct.rows_in[f.label]


def describe(config: AdapterConfig) -> dict[str, Any]:
    base = config.base_time or DEFAULT_BASE_TIME
    return {
        "labels_rule": {"click": "column 266", "conversion": "unknown (null)"},
        "event_time": {
            "derived": True,
            "rule": f"{base} + row_index * {config.time_step_ms} ms (row_index over all data rows "
            "of the files in order, rejected rows included)",
            "base_time": base,
            "time_step_ms": config.time_step_ms,
            "why": "the DMR rows carry no timestamp; train_sorted.csv is in time order",
        },
        "event_id": "dmr-<file stem>-<row index in file>",
        "mapping": {
            "user_id": "250",
            "ad_id": "259",
            "campaign_id": "261",
            "advertiser_id": "262",
            "scene_id": "265",
            "user_gender": "253 1=m 2=f",
            "user_age_bucket": "254",
            "user_segment": "251",
            "region": "258",
            "ad_category": "260",
            "ad_brand": "263",
            "item_price": "264 (normalised)",
            "user_interests": "distinct categories of 50-99 where 150-199 == 1, by frequency",
        },
    }


DMR = Source(
    name="taobao-dmr",
    summary="Taobao display ads, PaddleRec DMR 267-column rows (no timestamps: row order)",
    help=__doc__,
    task_key="campaign_id",
    locate=locate,
    read=read,
    describe=describe,
    derived_time=True,
)
