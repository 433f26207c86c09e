"""Ali-CCP (Alibaba Click and Conversion Prediction, Taobao recommender traffic) -> raw ad logs
with click AND conversion labels; task = shop (campaign_id = advertiser_id = field 207).

Files: the CSVs of torch-rechub (datawhalechina/torch-rechub, examples/ranking/data/ali-ccp: the
full ali_ccp_{train,val,test}.csv via the download link in its README, or the 100/50/50-row
ali_ccp_{train,val,test}_sample.csv), a header line and one impression per row:
  click,purchase,101,121,122,124,125,126,127,128,129,205,206,207,210,216,508,509,702,853,301,
  109_14,110_14,127_14,150_14,D109_14,D110_14,D127_14,D150_14,D508,D509,D702,D853
Ids are re-indexed integers. --src is the directory; the train, val and test files present are
read in that order (the full files take precedence over the _sample ones).

Field meanings (Ma et al., SIGIR 2018, the Ali-CCP feature table): 101 user id, 121 user profile
category id, 122 user profile group id, 124 gender, 125 age, 126/127 consumption levels,
128 occupation, 129 geography, 205 item id, 206 item category, 207 shop id, 210 intention node,
216 brand, 301 scenario/position, 109_14/110_14/127_14/150_14 the user's category/shop/brand/
intention-node history, 508/509/702/853 crosses, D* dense values of those features.

The rows carry NO timestamp. event_time is derived from row order:
  event_time = base_time + row_index * time_step_ms
where row_index counts every data row of the files in train, val, test order, rejected rows
included. Default base 2018-01-01T00:00:00Z (arbitrary: the dataset publishes no dates), step
1000 ms; --base-time / --time-step-ms change them.

Mapping: event_id aliccp-<split>-<0-based row index in its file>; user_id 101; ad_id 205;
campaign_id and advertiser_id 207 (the shop: Ali-CCP has no campaign); scene_id 301;
user_gender 124; user_age_bucket 125; user_segment 121; region 129; ad_category 206;
ad_brand 216; user_interests [109_14]; ad_tags [210]; click = click; conversion = purchase.
Not mapped: 122, 126-128, 110_14, 127_14, 150_14, the crosses and every D* column (the raw schema
has no slot for them).

Rejected rows (first failing rule): wrong_field_count, blank_line, bad_value:click,
bad_value:purchase, purchase_without_click (purchase 1 with click 0: conversion follows a click),
missing:101, missing:205, missing:207, missing:301.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from components.adapters.accounting import Accounting, RowChecks
from components.adapters.canonical import (
    empty_to_null,
    in_set,
    is_nonempty,
    parse_base_time,
    raw_table,
    timestamps_ms,
)
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
    "torch-rechub examples/ranking/data/ali-ccp (README: full ali_ccp_{train,val,test}.csv);"
    " original data: https://tianchi.aliyun.com/dataset/408"
)
DEFAULT_BASE_TIME = "2018-01-01T00:00:00Z"
SPLITS = ("train", "val", "test")
REQUIRED = ("click", "purchase", "101", "205", "207", "301")
OPTIONAL = ("121", "124", "125", "129", "206", "210", "216", "109_14")


def locate(fs: pafs.FileSystem, root: str) -> dict[str, SourceFile]:
    candidates = {
        f"{s}{suffix}": f"ali_ccp_{s}{suffix}.csv" for s in SPLITS for suffix in ("", "_sample")
    }
    found = locate_files(fs, root, dataset="aliccp", download=DOWNLOAD, any_of=candidates)
    return prefer_full_files(found, SPLITS)


def _list_of_one(values: pa.Array) -> pa.Array:
    """``"7"`` -> ``["7"]``; empty -> null."""
    values = empty_to_null(values)
    offsets = pa.array(range(len(values) + 1), pa.int32())
    return pa.ListArray.from_arrays(offsets, pc.fill_null(values, ""), mask=pc.is_null(values))


def _opt(columns: dict[str, pa.Array], name: str) -> pa.Array | None:
    """An optional column: empty -> null; absent from the file -> all null."""
    return empty_to_null(columns[name]) if name in columns else None


def read(
    fs: pafs.FileSystem, files: dict[str, SourceFile], config: AdapterConfig, acct: Accounting
) -> Iterator[pa.Table]:
    base_ms = parse_base_time(config.base_time or DEFAULT_BASE_TIME)
    offset = 0
    for split, f in files.items():
        header = read_header(fs, f, ",", "utf8")
        require_columns(f, header, REQUIRED)
        include = [*REQUIRED, *(c for c in OPTIONAL if c in header)]
        for block in read_delimited(
            fs,
            f,
            acct,
            names=header,
            include=include,
            delimiter=",",
            has_header=True,
            block_bytes=config.block_bytes,
        ):
            c = block.columns
            checks = RowChecks(block.num_rows)
            checks.require(in_set(c["click"], ["0", "1"]), "bad_value:click")
            checks.require(in_set(c["purchase"], ["0", "1"]), "bad_value:purchase")
            checks.require(
                pc.or_(pc.equal(c["purchase"], "0"), pc.equal(c["click"], "1")),
                "purchase_without_click",
            )
            for name in ("101", "205", "207", "301"):
                checks.require(is_nonempty(c[name]), f"missing:{name}")
            block = acct.apply(f.label, block, checks)
            if block.num_rows == 0:
                continue
            c, n = block.columns, block.num_rows
            index_in_file = block.lines - 2  # line 1 is the header
            ms = base_ms + (offset + index_in_file) * config.time_step_ms

            acct.rows_written[f.label] += n
            yield raw_table(
                n,
                {
                    "event_id": pc.binary_join_element_wise(
                        "aliccp", split, pc.cast(pa.array(index_in_file), pa.string()), "-"
                    ),
                    "event_time": timestamps_ms(ms),
                    "user_id": c["101"],
                    "ad_id": c["205"],
                    "campaign_id": c["207"],
                    "advertiser_id": c["207"],
                    "scene_id": c["301"],
                    "user_gender": _opt(c, "124"),
                    "user_age_bucket": _opt(c, "125"),
                    "user_segment": _opt(c, "121"),
                    "region": _opt(c, "129"),
                    "ad_category": _opt(c, "206"),
                    "ad_brand": _opt(c, "216"),
                    "user_interests": _list_of_one(c["109_14"]) if "109_14" in c else None,
                    "ad_tags": _list_of_one(c["210"]) if "210" in c else None,
                    "click": pc.cast(c["click"], pa.int8()),
                    "conversion": pc.cast(c["purchase"], pa.int8()),
                },
            )
        offset += acct.rows_in[f.label]


def describe(config: AdapterConfig) -> dict[str, Any]:
    base = config.base_time or DEFAULT_BASE_TIME
    return {
        "labels_rule": {"click": "click", "conversion": "purchase (only after a click)"},
        "event_time": {
            "derived": True,
            "rule": f"{base} + row_index * {config.time_step_ms} ms (row_index over all data rows "
            "of train, val, test in order, rejected rows included)",
            "base_time": base,
            "time_step_ms": config.time_step_ms,
            "why": "Ali-CCP publishes no timestamps",
        },
        "event_id": "aliccp-<split>-<row index in file>",
        "mapping": {
            "user_id": "101",
            "ad_id": "205",
            "campaign_id": "207 (shop)",
            "advertiser_id": "207 (shop)",
            "scene_id": "301",
            "user_gender": "124",
            "user_age_bucket": "125",
            "user_segment": "121",
            "region": "129",
            "ad_category": "206",
            "ad_brand": "216",
            "user_interests": "[109_14]",
            "ad_tags": "[210]",
        },
    }


ALICCP = Source(
    name="aliccp",
    summary="Ali-CCP click + purchase, torch-rechub CSVs (no timestamps: row order)",
    help=__doc__,
    task_key="campaign_id",
    locate=locate,
    read=read,
    describe=describe,
    derived_time=True,
)
