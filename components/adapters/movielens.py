"""MovieLens-100K -> raw ad logs: one impression per rating, one task per user.

Files expected in --src (the unzipped ml-100k/ folder, as published by GroupLens:
https://files.grouplens.org/datasets/movielens/ml-100k.zip):
  u.data   tab-separated   user_id, item_id, rating (1-5), unix timestamp   (100,000 rows)
  u.user   '|'-separated   user_id|age|gender|occupation|zip                (943 rows)
  u.item   '|'-separated   movie_id|title|release_date|video_release_date|IMDb_URL|19 genre
           flags (unknown, Action, ..., Western), latin-1                   (1,682 rows)

Mapping (u.data row -> raw record):
  event_id        ml100k-<user>-<item>-<timestamp>   (deterministic; (user, item) is unique)
  event_time      the unix timestamp (UTC)
  user_id         user_id              (task key: run the ETL with --task-key user_id)
  ad_id           item_id
  campaign_id     item_id              (a movie is its own campaign)
  advertiser_id   the movie's first genre flag in u.item order (e.g. "Animation"; "unknown")
  scene_id        "movielens"
  user_gender     "m" / "f"
  user_age_bucket age bucketised as MovieLens-1M does: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
  user_segment    occupation (u.user)
  region          ZIP3: the first 3 characters of the zip code (US sectional centre)
  ad_category     all genre names joined by "|" (e.g. "Animation|Children's|Comedy")
  ad_brand        release year (from release_date), null when absent
  ad_tags         the genre names, as a list
  click           rating >= 4      (the MeLU/RecBole-MetaRec convention): 55 % of the ratings,
                  so the next steps validate with MovieLens' bounds (SOURCE_THRESHOLDS in
                  components/validation/suites.py), not an ad log's
  conversion      rating == 5      (a "strong like": the deeper funnel event)
  not mapped      device_type, creative_type, user_interests, bid_price, item_price,
                  user_hist_ctr (null)

The next steps run the ETL with --feature-preset small: embedding tables sized to MovieLens
(a checkpoint of a few MB instead of ~85 MB).

Rejected u.data rows (first failing rule): wrong_field_count, blank_line, bad_value:user_id,
bad_value:item_id, bad_value:rating (not 1-5), bad_value:timestamp, unknown_item (not in u.item:
no genre, hence no advertiser). A user missing from u.user keeps the row with a null profile
(counted under notes.user_without_profile). Bad lines of u.user/u.item are reported under
side_tables and their entities count as unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from components.adapters.accounting import Accounting, RowChecks
from components.adapters.canonical import (
    KeyIndex,
    empty_to_null,
    in_set,
    is_int,
    raw_table,
    timestamps_ms,
)
from components.adapters.reading import SourceFile, load_side_table, locate_files, read_delimited
from components.adapters.run import AdapterConfig, Source

DOWNLOAD = "https://files.grouplens.org/datasets/movielens/ml-100k.zip (unzip; --src ml-100k)"
GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
ITEM_FIELDS = (
    "item_id",
    "title",
    "release_date",
    "video_release_date",
    "imdb_url",
    *(f"genre_{i}" for i in range(len(GENRES))),
)
AGE_BUCKETS = (
    (18, "<18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (50, "45-49"),
    (56, "50-55"),
    (10_000, "56+"),
)


def locate(fs: pafs.FileSystem, root: str) -> dict[str, SourceFile]:
    return locate_files(
        fs,
        root,
        dataset="movielens",
        download=DOWNLOAD,
        required={"ratings": "u.data", "users": "u.user", "items": "u.item"},
    )


def _users(fs: pafs.FileSystem, f: SourceFile, side: Accounting) -> dict[str, Any]:
    b = load_side_table(
        fs,
        f,
        side,
        names=("user_id", "age", "gender", "occupation", "zip"),
        include=("user_id", "age", "gender", "occupation", "zip"),
        delimiter="|",
        has_header=False,
    )
    checks = RowChecks(b.num_rows)
    checks.require(is_int(b.columns["user_id"]), "bad_value:user_id")
    checks.require(is_int(b.columns["age"]), "bad_value:age")
    b = side.apply(f.label, b, checks)
    side.rows_written[f.label] += b.num_rows
    age = pc.cast(b.columns["age"], pa.int64()).to_numpy()
    bucket = np.array([label for _, label in AGE_BUCKETS], dtype=object)[
        np.searchsorted([limit for limit, _ in AGE_BUCKETS], age, side="right")
    ]
    return {
        "key": KeyIndex(b.columns["user_id"]),
        "user_gender": empty_to_null(pc.utf8_lower(b.columns["gender"])),
        "user_age_bucket": pa.array(bucket, pa.string()),
        "user_segment": empty_to_null(b.columns["occupation"]),
        "region": empty_to_null(pc.utf8_slice_codeunits(b.columns["zip"], 0, 3)),
    }


def _items(fs: pafs.FileSystem, f: SourceFile, side: Accounting) -> dict[str, Any]:
    include = ("item_id", "release_date", *ITEM_FIELDS[5:])
    b = load_side_table(
        fs,
        f,
        side,
        names=ITEM_FIELDS,
        include=include,
        delimiter="|",
        has_header=False,
        encoding="latin1",
    )
    checks = RowChecks(b.num_rows)
    checks.require(is_int(b.columns["item_id"]), "bad_value:item_id")
    for i in range(len(GENRES)):
        checks.require(in_set(b.columns[f"genre_{i}"], ["0", "1"]), f"bad_value:genre_{i}")
    b = side.apply(f.label, b, checks)
    side.rows_written[f.label] += b.num_rows
    flags = np.stack(
        [b.columns[f"genre_{i}"].to_numpy(zero_copy_only=False) == "1" for i in range(len(GENRES))],
        axis=1,
    )
    tags = [[GENRES[j] for j in np.flatnonzero(row)] or ["unknown"] for row in flags]
    year = pc.utf8_slice_codeunits(b.columns["release_date"], -4)
    return {
        "key": KeyIndex(b.columns["item_id"]),
        "advertiser_id": pa.array([t[0] for t in tags], pa.string()),
        "ad_category": pa.array(["|".join(t) for t in tags], pa.string()),
        "ad_tags": pa.array(tags, pa.list_(pa.string())),
        "ad_brand": pc.if_else(is_int(year), year, pa.scalar(None, pa.string())),
    }


def record_side_tables(
    acct: Accounting, side: Accounting, tables: dict[str, dict[str, Any]]
) -> None:
    """Check the side files' accounting, attach it to ``acct`` and note their duplicate ids.

    ``tables`` maps a side file's label to its table (``{"key": KeyIndex, column: array, ...}``);
    a duplicate id keeps its first row (notes ``<label>:duplicate_ids_first_kept``).
    """
    side.check_balanced()
    acct.side_tables = side.as_dict()["files"]
    for label, table in tables.items():
        if table["key"].duplicates:
            acct.notes[f"{label}:duplicate_ids_first_kept"] = table["key"].duplicates


def ratings_to_raw(
    blocks: Iterable[pa.Table],
    label: str,
    users: dict[str, Any],
    items: dict[str, Any],
    acct: Accounting,
    *,
    event_prefix: str,
) -> Iterator[pa.Table]:
    """Blocks of MovieLens ratings -> raw records (the mapping of the module docstring).

    ``blocks`` hold the string columns user_id, item_id, rating, timestamp of the ratings file
    ``label``; ``users``/``items`` are the side tables (``KeyIndex`` under "key", then the raw
    columns they supply). Rejected rows are accounted in ``acct`` under ``label``; the event id
    is ``<event_prefix>-<user>-<item>-<timestamp>``. Shared by MovieLens-100K and -1M.
    """
    for block in blocks:
        c = block.columns
        checks = RowChecks(block.num_rows)
        checks.require(is_int(c["user_id"]), "bad_value:user_id")
        checks.require(is_int(c["item_id"]), "bad_value:item_id")
        checks.require(in_set(c["rating"], list("12345")), "bad_value:rating")
        checks.require(is_int(c["timestamp"]), "bad_value:timestamp")
        checks.require(pc.is_valid(items["key"].find(c["item_id"])), "unknown_item")
        block = acct.apply(label, block, checks)
        if block.num_rows == 0:
            continue
        c = block.columns
        item_idx, user_idx = items["key"].find(c["item_id"]), users["key"].find(c["user_id"])
        acct.notes["user_without_profile"] += user_idx.null_count
        rating = pc.cast(c["rating"], pa.int8())
        seconds = pc.cast(c["timestamp"], pa.int64())
        mapped = {
            "event_id": pc.binary_join_element_wise(
                event_prefix, c["user_id"], c["item_id"], c["timestamp"], "-"
            ),
            "event_time": timestamps_ms(pc.multiply(seconds, 1000)),
            "user_id": c["user_id"],
            "ad_id": c["item_id"],
            "campaign_id": c["item_id"],
            "scene_id": "movielens",
            "click": pc.cast(pc.greater_equal(rating, 4), pa.int8()),
            "conversion": pc.cast(pc.equal(rating, 5), pa.int8()),
        }
        mapped |= {k: v.take(user_idx) for k, v in users.items() if k != "key"}
        mapped |= {k: v.take(item_idx) for k, v in items.items() if k != "key"}
        acct.rows_written[label] += block.num_rows
        yield raw_table(block.num_rows, mapped)


def read(
    fs: pafs.FileSystem, files: dict[str, SourceFile], config: AdapterConfig, acct: Accounting
) -> Iterator[pa.Table]:
    side = Accounting(log=acct.log)
    users, items = _users(fs, files["users"], side), _items(fs, files["items"], side)
    record_side_tables(acct, side, {files["users"].label: users, files["items"].label: items})
    fields = ("user_id", "item_id", "rating", "timestamp")
    blocks = read_delimited(
        fs,
        files["ratings"],
        acct,
        names=fields,
        include=fields,
        delimiter="\t",
        has_header=False,
        block_bytes=config.block_bytes,
    )
    yield from ratings_to_raw(
        blocks, files["ratings"].label, users, items, acct, event_prefix="ml100k"
    )


def describe(config: AdapterConfig) -> dict[str, Any]:
    return {
        "labels_rule": {"click": "rating >= 4", "conversion": "rating == 5"},
        "event_time": {"derived": False, "rule": "u.data unix timestamp (seconds, UTC)"},
        "event_id": "ml100k-<user_id>-<item_id>-<timestamp>",
        "mapping": {
            "user_id": "u.data user_id",
            "ad_id": "u.data item_id",
            "campaign_id": "u.data item_id",
            "advertiser_id": "first genre of the item",
            "scene_id": "'movielens'",
            "user_gender": "u.user gender, lower case",
            "user_age_bucket": "u.user age: <18,18-24,25-34,35-44,45-49,50-55,56+",
            "user_segment": "u.user occupation",
            "region": "u.user zip, first 3 characters",
            "ad_category": "genre names joined by '|'",
            "ad_brand": "release year",
            "ad_tags": "genre names",
        },
    }


MOVIELENS = Source(
    name="movielens",
    summary="MovieLens-100K ratings (u.data, u.user, u.item); task = user",
    help=__doc__,
    task_key="user_id",
    locate=locate,
    read=read,
    describe=describe,
    bounds="movielens",
    feature_preset="small",
)
