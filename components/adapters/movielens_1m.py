"""MovieLens-1M -> raw ad logs: one impression per rating, one task per user.

Files expected in --src (the unzipped ml-1m/ folder, as published by GroupLens:
https://files.grouplens.org/datasets/movielens/ml-1m.zip), fields separated by "::", latin-1:
  ratings.dat   UserID::MovieID::Rating::Timestamp         rating 1-5, unix seconds (1,000,209 rows)
  users.dat     UserID::Gender::Age::Occupation::Zip-code  gender M/F; age and occupation are
                codes (README of the dataset)                                      (6,040 rows)
  movies.dat    MovieID::Title::Genres                     "Toy Story (1995)", "Animation|
                Children's|Comedy"                                                 (3,883 rows)

Mapping (ratings.dat row -> raw record), as the MovieLens-100K adapter does:
  event_id        ml1m-<user>-<movie>-<timestamp>   (deterministic; (user, movie) is unique)
  event_time      the unix timestamp (UTC)
  user_id         UserID               (task key: run the ETL with --task-key user_id)
  ad_id           MovieID
  campaign_id     MovieID              (a movie is its own campaign)
  advertiser_id   the movie's first genre (e.g. "Animation")
  scene_id        "movielens"
  user_gender     "m" / "f"
  user_age_bucket the age code's range: 1 "<18", 18 "18-24", 25 "25-34", 35 "35-44",
                  45 "45-49", 50 "50-55", 56 "56+" (the buckets of the 100K adapter)
  user_segment    the occupation's name (0 "other", 1 "academic/educator", ..., 20 "writer")
  region          ZIP3: the first 3 characters of the zip code
  ad_category     the genres as published (e.g. "Animation|Children's|Comedy")
  ad_brand        release year: the "(YYYY)" that ends the title, null when absent
  ad_tags         the genre names, as a list
  click           rating >= 4   (57.5 % of the ratings: MovieLens' validation bounds, not an
                  ad log's; SOURCE_THRESHOLDS in components/validation/suites.py)
  conversion      rating == 5
  not mapped      device_type, creative_type, user_interests, bid_price, item_price,
                  user_hist_ctr (null)

The next steps run the ETL with --feature-preset small: embedding tables sized to MovieLens
(a checkpoint of a few MB instead of ~85 MB).

Rejected ratings.dat rows (first failing rule): wrong_field_count (not 4 "::"-separated fields),
blank_line, bad_encoding, bad_value:user_id, bad_value:item_id, bad_value:rating (not 1-5),
bad_value:timestamp, unknown_item (not in movies.dat: no genre, hence no advertiser). A user
missing from users.dat keeps the row with a null profile (notes.user_without_profile). Bad lines
of users.dat (bad_value:user_id, bad_value:age: not one of the seven codes) and movies.dat
(bad_value:item_id, missing:genres) are reported under side_tables; their entities count as
unknown.
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
    recode,
)
from components.adapters.movielens import ratings_to_raw, record_side_tables
from components.adapters.reading import SourceFile, concat_blocks, locate_files, read_separated
from components.adapters.run import AdapterConfig, Source

DOWNLOAD = "https://files.grouplens.org/datasets/movielens/ml-1m.zip (unzip; --src ml-1m)"
SEPARATOR = "::"
ENCODING = "latin1"
AGE_CODES = {
    "1": "<18",
    "18": "18-24",
    "25": "25-34",
    "35": "35-44",
    "45": "45-49",
    "50": "50-55",
    "56": "56+",
}
OCCUPATIONS = {  # code -> name, as the dataset's README lists them
    str(code): name
    for code, name in enumerate(
        (
            "other",
            "academic/educator",
            "artist",
            "clerical/admin",
            "college/grad student",
            "customer service",
            "doctor/health care",
            "executive/managerial",
            "farmer",
            "homemaker",
            "K-12 student",
            "lawyer",
            "programmer",
            "retired",
            "sales/marketing",
            "scientist",
            "self-employed",
            "technician/engineer",
            "tradesman/craftsman",
            "unemployed",
            "writer",
        )
    )
}
YEAR = r"\((?P<year>\d{4})\)\s*$"
"""The release year that ends a title: "Toy Story (1995)"."""


def locate(fs: pafs.FileSystem, root: str) -> dict[str, SourceFile]:
    return locate_files(
        fs,
        root,
        dataset="movielens-1m",
        download=DOWNLOAD,
        required={"ratings": "ratings.dat", "users": "users.dat", "items": "movies.dat"},
    )


def _users(fs: pafs.FileSystem, f: SourceFile, side: Accounting) -> dict[str, Any]:
    names = ("user_id", "gender", "age", "occupation", "zip")
    b = concat_blocks(
        read_separated(fs, f, side, names=names, separator=SEPARATOR, encoding=ENCODING), names
    )
    checks = RowChecks(b.num_rows)
    checks.require(is_int(b.columns["user_id"]), "bad_value:user_id")
    checks.require(in_set(b.columns["age"], list(AGE_CODES)), "bad_value:age")
    b = side.apply(f.label, b, checks)
    side.rows_written[f.label] += b.num_rows
    return {
        "key": KeyIndex(b.columns["user_id"]),
        "user_gender": empty_to_null(pc.utf8_lower(b.columns["gender"])),
        "user_age_bucket": recode(b.columns["age"], AGE_CODES),
        "user_segment": recode(b.columns["occupation"], OCCUPATIONS),
        "region": empty_to_null(pc.utf8_slice_codeunits(b.columns["zip"], 0, 3)),
    }


def _items(fs: pafs.FileSystem, f: SourceFile, side: Accounting) -> dict[str, Any]:
    names = ("item_id", "title", "genres")
    b = concat_blocks(
        read_separated(fs, f, side, names=names, separator=SEPARATOR, encoding=ENCODING), names
    )
    checks = RowChecks(b.num_rows)
    checks.require(is_int(b.columns["item_id"]), "bad_value:item_id")
    checks.require(is_nonempty(b.columns["genres"]), "missing:genres")
    b = side.apply(f.label, b, checks)
    side.rows_written[f.label] += b.num_rows
    tags = pc.split_pattern(b.columns["genres"], "|")
    year = pc.extract_regex(b.columns["title"], YEAR)
    return {
        "key": KeyIndex(b.columns["item_id"]),
        "advertiser_id": pc.list_element(tags, 0),
        "ad_category": b.columns["genres"],
        "ad_tags": tags,
        "ad_brand": pc.struct_field(year, [0]),
    }


def read(
    fs: pafs.FileSystem, files: dict[str, SourceFile], config: AdapterConfig, acct: Accounting
) -> Iterator[pa.Table]:
    side = Accounting(log=acct.log)
    users, items = _users(fs, files["users"], side), _items(fs, files["items"], side)
    record_side_tables(acct, side, {files["users"].label: users, files["items"].label: items})
    blocks = read_separated(
        fs,
        files["ratings"],
        acct,
        names=("user_id", "item_id", "rating", "timestamp"),
        separator=SEPARATOR,
        encoding=ENCODING,
        block_bytes=config.block_bytes,
    )
    yield from ratings_to_raw(
        blocks, files["ratings"].label, users, items, acct, event_prefix="ml1m"
    )


def describe(config: AdapterConfig) -> dict[str, Any]:
    return {
        "labels_rule": {"click": "rating >= 4", "conversion": "rating == 5"},
        "event_time": {"derived": False, "rule": "ratings.dat unix timestamp (seconds, UTC)"},
        "event_id": "ml1m-<user_id>-<movie_id>-<timestamp>",
        "mapping": {
            "user_id": "ratings.dat UserID",
            "ad_id": "ratings.dat MovieID",
            "campaign_id": "ratings.dat MovieID",
            "advertiser_id": "first genre of the movie",
            "scene_id": "'movielens'",
            "user_gender": "users.dat Gender, lower case",
            "user_age_bucket": "users.dat Age code: <18,18-24,25-34,35-44,45-49,50-55,56+",
            "user_segment": "users.dat Occupation code, as its name",
            "region": "users.dat Zip-code, first 3 characters",
            "ad_category": "movies.dat Genres",
            "ad_brand": "release year from the title",
            "ad_tags": "movies.dat Genres, as a list",
        },
    }


MOVIELENS_1M = Source(
    name="movielens-1m",
    summary="MovieLens-1M ratings (ratings.dat, users.dat, movies.dat); task = user",
    help=__doc__,
    task_key="user_id",
    locate=locate,
    read=read,
    describe=describe,
    bounds="movielens",
    feature_preset="small",
)
