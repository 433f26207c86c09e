"""Taobao display ads (Tianchi "Ad Display/Click Data on Taobao.com", Ali_Display_Ad_Click) -> raw
ad logs: one impression per row; task = campaign (or advertiser: --task-key advertiser_id).

Two layouts of the same data:

taobao: the original Tianchi files (https://tianchi.aliyun.com/dataset/56; extract the .tar.gz
files into one directory and pass it as --src):
  raw_sample.csv    user,time_stamp,adgroup_id,pid,nonclk,clk      (26.6M impressions, 8 days)
  ad_feature.csv    adgroup_id,cate_id,campaign_id,customer,brand,price        (846k ads)
  user_profile.csv  userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,
                    shopping_level,occupation,new_user_class_level             (1.06M users)
  (behavior_log.csv is not read: user_interests stays null in this layout.)

taobao-fuxictr: the FuxiCTR joined CSV (reczoo/FuxiCTR data/tiny_csv/train_sample.csv, or any CSV
with its header): clk,time_stamp,userid,adgroup_id,pid,cate_id,campaign_id,customer,brand,price,
cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,occupation,
new_user_class_level[,click_sequence]; time_stamp is "YYYY-MM-DD HH:MM:SS" in China time (UTC+8:
the log starts at 2017-05-06 00:00 there = 1494000000). --src is the CSV file, or a directory
with train/valid/test(_sample).csv (read in that order).

Mapping (both layouts give identical records for the same impression):
  event_id        tb-<user>-<adgroup_id>-<unix seconds>-<pid>  (an exact replay gets the same id:
                  the ETL keeps one as duplicate_event_id)
  event_time      time_stamp (UTC)
  user_id         user / userid            ad_id          adgroup_id
  campaign_id     campaign_id (task key)   advertiser_id  customer
  scene_id        pid (ad slot)            ad_category    cate_id
  ad_brand        brand ("NULL" -> null)   item_price     price (not a number or < 0 -> null)
  user_gender     final_gender_code 1 -> "m", 2 -> "f"
  user_age_bucket age_level                user_segment   cms_segid (micro group)
  region          new_user_class_level (city tier)
  user_interests  click_sequence split on "^" (clicked adgroup ids), null when absent
  click           clk                      conversion     null (unknown in this dataset)
  not mapped      cms_group_id, pvalue_level, shopping_level, occupation (no raw-schema slot),
                  device_type, creative_type, ad_tags, bid_price, user_hist_ctr (null)

Rejected rows (first failing rule): wrong_field_count, blank_line, bad_value:<user|userid>,
bad_value:time_stamp, bad_value:adgroup_id, missing:pid, bad_value:clk, bad_value:nonclk (not
1 - clk), then for taobao unknown_adgroup (not in ad_feature.csv: no campaign, no advertiser), for
taobao-fuxictr missing:campaign_id, missing:customer. A user missing from user_profile.csv keeps
the row with a null profile (notes.user_without_profile).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from components.adapters.accounting import Accounting, RowChecks
from components.adapters.canonical import (
    KeyIndex,
    empty_to_null,
    in_set,
    is_int,
    is_nonempty,
    optional_number,
    raw_table,
    recode,
    timestamps_ms,
)
from components.adapters.reading import (
    SourceFile,
    load_side_table,
    locate_files,
    prefer_full_files,
    read_delimited,
    read_header,
    require_columns,
)
from components.adapters.run import AdapterConfig, Source

DOWNLOAD_TIANCHI = "https://tianchi.aliyun.com/dataset/56 (raw_sample, ad_feature, user_profile)"
DOWNLOAD_FUXICTR = (
    "https://github.com/reczoo/FuxiCTR/tree/main/data/tiny_csv "
    "(train_sample.csv), or a CSV with the same header"
)
CHINA_UTC_OFFSET_S = 8 * 3600
GENDER = {"1": "m", "2": "f"}
RAW_SAMPLE = ("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk")
AD_FEATURE = ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price")
USER_PROFILE = (
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
FUXICTR_REQUIRED = (
    "clk",
    "time_stamp",
    "userid",
    "adgroup_id",
    "pid",
    "cate_id",
    "campaign_id",
    "customer",
    "brand",
    "price",
    "cms_segid",
    "final_gender_code",
    "age_level",
    "new_user_class_level",
)


def _records(
    n: int,
    c: dict[str, pa.Array],
    seconds: pa.Array,
    acct: Accounting,
    interests: pa.Array | None = None,
) -> pa.Table:
    """The shared mapping. ``c`` holds the joined string columns under the FuxiCTR names."""
    return raw_table(
        n,
        {
            "event_id": pc.binary_join_element_wise(
                "tb", c["userid"], c["adgroup_id"], pc.cast(seconds, pa.string()), c["pid"], "-"
            ),
            "event_time": timestamps_ms(pc.multiply(seconds, 1000)),
            "user_id": c["userid"],
            "ad_id": c["adgroup_id"],
            "campaign_id": c["campaign_id"],
            "advertiser_id": c["customer"],
            "scene_id": c["pid"],
            "user_gender": recode(c["final_gender_code"], GENDER),
            "user_age_bucket": empty_to_null(c["age_level"]),
            "user_segment": empty_to_null(c["cms_segid"]),
            "region": empty_to_null(c["new_user_class_level"]),
            "ad_category": empty_to_null(c["cate_id"], "NULL"),
            "ad_brand": empty_to_null(c["brand"], "NULL"),
            "item_price": optional_number(c["price"], "price", acct),
            "user_interests": interests,
            "click": pc.cast(c["clk"], pa.int8()),
        },
    )


# -- the Tianchi layout ------------------------------------------------------------------------
def locate_tianchi(fs: pafs.FileSystem, root: str) -> dict[str, SourceFile]:
    return locate_files(
        fs,
        root,
        dataset="taobao",
        download=DOWNLOAD_TIANCHI,
        required={
            "impressions": "raw_sample.csv",
            "ads": "ad_feature.csv",
            "users": "user_profile.csv",
        },
    )


def _side(
    fs: pafs.FileSystem,
    f: SourceFile,
    side: Accounting,
    names: tuple[str, ...],
    key: str,
    required: tuple[str, ...],
) -> dict[str, pa.Array]:
    header = read_header(fs, f, ",", "utf8")
    require_columns(f, header, names)
    b = load_side_table(fs, f, side, names=header, include=names, delimiter=",", has_header=True)
    checks = RowChecks(b.num_rows)
    checks.require(is_int(b.columns[key]), f"bad_value:{key}")
    for name in required:
        checks.require(is_nonempty(b.columns[name]), f"missing:{name}")
    b = side.apply(f.label, b, checks)
    side.rows_written[f.label] += b.num_rows
    # Dictionary-encoded, a per-block take gathers small integer codes, not strings.
    return {k: v if k == key else pc.dictionary_encode(v) for k, v in b.columns.items()}


def read_tianchi(
    fs: pafs.FileSystem, files: dict[str, SourceFile], config: AdapterConfig, acct: Accounting
) -> Iterator[pa.Table]:
    side = Accounting(log=acct.log)
    ads = _side(fs, files["ads"], side, AD_FEATURE, "adgroup_id", ("campaign_id", "customer"))
    users = _side(fs, files["users"], side, USER_PROFILE, "userid", ())
    side.check_balanced()
    acct.side_tables = side.as_dict()["files"]
    ad_index, user_index = KeyIndex(ads["adgroup_id"]), KeyIndex(users["userid"])
    for role, index in (("ads", ad_index), ("users", user_index)):
        if index.duplicates:
            acct.notes[f"{files[role].label}:duplicate_ids_first_kept"] = index.duplicates
    f = files["impressions"]
    header = read_header(fs, f, ",", "utf8")
    require_columns(f, header, RAW_SAMPLE)
    for block in read_delimited(
        fs,
        f,
        acct,
        names=header,
        include=RAW_SAMPLE,
        delimiter=",",
        has_header=True,
        block_bytes=config.block_bytes,
    ):
        c = block.columns
        checks = RowChecks(block.num_rows)
        checks.require(is_int(c["user"]), "bad_value:user")
        checks.require(is_int(c["time_stamp"]), "bad_value:time_stamp")
        checks.require(is_int(c["adgroup_id"]), "bad_value:adgroup_id")
        checks.require(is_nonempty(c["pid"]), "missing:pid")
        checks.require(in_set(c["clk"], ["0", "1"]), "bad_value:clk")
        checks.require(
            pc.equal(
                pc.binary_join_element_wise(c["nonclk"], c["clk"], ""),
                pc.if_else(pc.equal(c["clk"], "1"), "01", "10"),
            ),
            "bad_value:nonclk",
        )
        checks.require(pc.is_valid(ad_index.find(c["adgroup_id"])), "unknown_adgroup")
        block = acct.apply(f.label, block, checks)
        if block.num_rows == 0:
            continue
        c = block.columns
        ad, user = ad_index.find(c["adgroup_id"]), user_index.find(c["user"])
        acct.notes["user_without_profile"] += user.null_count
        joined = {
            "userid": c["user"],
            "adgroup_id": c["adgroup_id"],
            "pid": c["pid"],
            "clk": c["clk"],
        }
        joined |= {k: ads[k].take(ad).cast(pa.string()) for k in AD_FEATURE[1:]}
        joined |= {
            k: pc.fill_null(users[k].take(user).cast(pa.string()), "") for k in USER_PROFILE[1:]
        }
        acct.rows_written[f.label] += block.num_rows
        yield _records(block.num_rows, joined, pc.cast(c["time_stamp"], pa.int64()), acct)


# -- the FuxiCTR joined CSV -------------------------------------------------------------------
FUXICTR_FILES = {
    f"{split}{suffix}": f"{split}{suffix}.csv"
    for suffix in ("", "_sample")
    for split in ("train", "valid", "test")
}


def locate_fuxictr(fs: pafs.FileSystem, root: str) -> dict[str, SourceFile]:
    found = locate_files(
        fs,
        root,
        dataset="taobao-fuxictr",
        download=DOWNLOAD_FUXICTR,
        any_of=FUXICTR_FILES,
        single_file_role="train",
    )
    return prefer_full_files(found, ("train", "valid", "test"))


def read_fuxictr(
    fs: pafs.FileSystem, files: dict[str, SourceFile], config: AdapterConfig, acct: Accounting
) -> Iterator[pa.Table]:
    for f in files.values():
        header = read_header(fs, f, ",", "utf8")
        require_columns(f, header, FUXICTR_REQUIRED)
        include = [*FUXICTR_REQUIRED, *(["click_sequence"] if "click_sequence" in header else [])]
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
            local = pc.strptime(
                c["time_stamp"], format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True
            )
            checks = RowChecks(block.num_rows)
            checks.require(is_int(c["userid"]), "bad_value:userid")
            checks.require(pc.is_valid(local), "bad_value:time_stamp")
            checks.require(is_int(c["adgroup_id"]), "bad_value:adgroup_id")
            checks.require(is_nonempty(c["pid"]), "missing:pid")
            checks.require(in_set(c["clk"], ["0", "1"]), "bad_value:clk")
            checks.require(is_nonempty(c["campaign_id"]), "missing:campaign_id")
            checks.require(is_nonempty(c["customer"]), "missing:customer")
            block = acct.apply(f.label, block, checks)
            if block.num_rows == 0:
                continue
            c = block.columns
            local = pc.strptime(c["time_stamp"], format="%Y-%m-%d %H:%M:%S", unit="s")
            seconds = pc.subtract(pc.cast(local, pa.int64()), CHINA_UTC_OFFSET_S)
            interests = None
            if "click_sequence" in c:
                seq = empty_to_null(c["click_sequence"])
                interests = pc.split_pattern(seq, "^")
            acct.rows_written[f.label] += block.num_rows
            yield _records(block.num_rows, c, seconds, acct, interests)


def describe(config: AdapterConfig) -> dict[str, Any]:
    return {
        "labels_rule": {"click": "clk", "conversion": "unknown (null)"},
        "event_time": {
            "derived": False,
            "rule": "time_stamp: unix seconds (Tianchi) or "
            "'YYYY-MM-DD HH:MM:SS' in UTC+8 (FuxiCTR)",
        },
        "event_id": "tb-<user>-<adgroup_id>-<unix seconds>-<pid>",
        "mapping": {
            "user_id": "user/userid",
            "ad_id": "adgroup_id",
            "campaign_id": "campaign_id",
            "advertiser_id": "customer",
            "scene_id": "pid",
            "ad_category": "cate_id",
            "ad_brand": "brand",
            "item_price": "price",
            "user_gender": "final_gender_code 1=m 2=f",
            "user_age_bucket": "age_level",
            "user_segment": "cms_segid",
            "region": "new_user_class_level",
            "user_interests": "click_sequence split on '^'",
        },
    }


TIANCHI = Source(
    name="taobao",
    summary="Taobao display ads, original Tianchi files (raw_sample, ad_feature, user_profile)",
    help=__doc__,
    task_key="campaign_id",
    locate=locate_tianchi,
    read=read_tianchi,
    describe=describe,
)
FUXICTR = Source(
    name="taobao-fuxictr",
    summary="Taobao display ads, FuxiCTR joined CSV with the click sequence",
    help=__doc__,
    task_key="campaign_id",
    locate=locate_fuxictr,
    read=read_fuxictr,
    describe=describe,
)
