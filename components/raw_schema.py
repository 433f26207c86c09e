"""The canonical raw ad-log schema: one impression per record. The one definition used everywhere.

The generator writes it, the adapters map public datasets onto it, the ETL parses and validates
it, the data-quality suite checks it and the scorer reads it. Each consumer derives what it needs
(a pyarrow schema, a Spark schema, expectations) from :data:`RAW_FIELDS`.

Storage layout: hourly Hive-style partitions, ``<root>/dt=YYYY-MM-DD/hr=HH/part-NNNNN.<fmt>`` with
``fmt`` one of ``jsonl``, ``jsonl.gz`` or ``parquet``. A partition holds the events whose
``event_time`` falls in that UTC hour (late events may land in a later hour; see the ETL's
``max_lateness``).

JSONL encoding: one JSON object per line (lines end at ``\n``, ``\r\n`` or ``\r``; a line of
only spaces and tabs is blank, not a record; :mod:`components.raw_records` is the one parser and
lists every rule and reason code); ``event_time`` as an ISO-8601 UTC string with
milliseconds (``"2026-11-01T05:12:33.120Z"``); ids and categoricals as strings (JSON integers are
accepted and read as their decimal text); lists as JSON arrays of strings; labels as 0/1 integers.
Unknown keys are ignored (forward compatibility), missing optional keys are null.

Example record:
    {"event_id": "e-00000000001", "event_time": "2026-11-01T05:12:33.120Z", "user_id": "u-981",
     "ad_id": "a-5521", "campaign_id": "c-73", "advertiser_id": "adv-9", "scene_id": "feed",
     "user_gender": "f", "user_age_bucket": "25-34", "user_segment": "s-3", "device_type": "ios",
     "region": "r-12", "ad_category": "cat-4", "ad_brand": "b-77", "creative_type": "video",
     "user_interests": ["t-3", "t-91"], "ad_tags": ["sale"], "bid_price": 0.42,
     "item_price": 19.9, "user_hist_ctr": 0.031, "click": 1, "conversion": 0}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["id", "time", "categorical", "multi", "dense", "label"]

SCHEMA_VERSION = 1
TASK_KEYS = ("campaign_id", "advertiser_id", "user_id", "scene_id", "ad_id")
DEFAULT_TASK_KEY = "campaign_id"
PARTITION_FORMATS = ("jsonl", "jsonl.gz", "parquet")


@dataclass(frozen=True, slots=True)
class RawField:
    """One column of the raw log."""

    name: str
    kind: Kind
    required: bool
    doc: str
    min_value: float | None = None
    """Inclusive lower bound for dense fields (values below are quarantined)."""
    max_value: float | None = None
    """Inclusive upper bound for dense fields."""


RAW_FIELDS: tuple[RawField, ...] = (
    RawField("event_id", "id", True, "Unique impression id; duplicates are dropped (first kept)."),
    RawField("event_time", "time", True, "Impression time, UTC, millisecond precision."),
    RawField("user_id", "id", True, "User (or device) id."),
    RawField("ad_id", "id", True, "Ad (creative/adgroup) id."),
    RawField("campaign_id", "id", True, "Campaign id: the default task key."),
    RawField("advertiser_id", "id", True, "Advertiser (customer/shop) id."),
    RawField("scene_id", "id", True, "Placement or scenario (feed, search, splash...)."),
    RawField("user_gender", "categorical", False, "User profile: gender code."),
    RawField("user_age_bucket", "categorical", False, "User profile: age bucket."),
    RawField("user_segment", "categorical", False, "User profile: segment/occupation."),
    RawField("device_type", "categorical", False, "Context: device or OS."),
    RawField("region", "categorical", False, "Context: coarse region."),
    RawField("ad_category", "categorical", False, "Ad: product category."),
    RawField("ad_brand", "categorical", False, "Ad: brand."),
    RawField("creative_type", "categorical", False, "Ad: creative format."),
    RawField("user_interests", "multi", False, "User interest tags (list of strings)."),
    RawField("ad_tags", "multi", False, "Ad keyword tags (list of strings)."),
    RawField("bid_price", "dense", False, "Bid in account currency; finite, >= 0.", 0.0, 1e6),
    RawField("item_price", "dense", False, "Advertised item price; finite, >= 0.", 0.0, 1e9),
    RawField("user_hist_ctr", "dense", False, "User's trailing CTR in [0, 1].", 0.0, 1.0),
    RawField("click", "label", True, "1 if the impression was clicked, else 0."),
    RawField("conversion", "label", False, "1 if it converted, 0 if not, null if unknown."),
)

FIELDS_BY_NAME: dict[str, RawField] = {f.name: f for f in RAW_FIELDS}
RAW_COLUMNS: tuple[str, ...] = tuple(f.name for f in RAW_FIELDS)


def fields_of(*kinds: Kind) -> tuple[RawField, ...]:
    """The raw fields of the given kinds, in schema order."""
    return tuple(f for f in RAW_FIELDS if f.kind in kinds)


def arrow_schema():  # -> pyarrow.Schema (imported lazily: this module stays stdlib-only)
    """The pyarrow schema of raw Parquet partitions (JSONL carries the same fields as JSON)."""
    import pyarrow as pa

    types = {
        "id": pa.string(),
        "time": pa.timestamp("ms", tz="UTC"),
        "categorical": pa.string(),
        "multi": pa.list_(pa.string()),
        "dense": pa.float64(),
        "label": pa.int8(),
    }
    return pa.schema(
        [pa.field(f.name, types[f.kind], nullable=not f.required) for f in RAW_FIELDS],
        metadata={"metarec.schema": "raw_ad_log", "metarec.schema_version": str(SCHEMA_VERSION)},
    )


def validate_task_key(task_key: str) -> str:
    """Return ``task_key`` if it can key tasks, else raise a ``ValueError`` that lists the options."""
    if task_key not in TASK_KEYS:
        raise ValueError(
            f"unknown task key {task_key!r}: choose one of {', '.join(TASK_KEYS)} "
            "(an id column of the raw schema)"
        )
    return task_key
