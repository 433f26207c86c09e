"""Tiny raw ad logs for the ETL tests, written by hand (no generator), in the canonical layout.

``record(...)`` builds one valid raw record as a dict (JSON-ready); ``write_jsonl`` and
``write_parquet`` put records (or raw lines, for corruption) into ``dt=YYYY-MM-DD/hr=HH/`` folders.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

START = datetime(2026, 11, 1, tzinfo=UTC)


def ts(hour: int, second: float = 0.0) -> str:
    """ISO event time ``hour`` hours after START plus ``second`` seconds, millisecond precision."""
    t = START + timedelta(hours=hour, seconds=second)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def record(
    i: int, campaign: str = "c-1", hour: int = 0, second: float | None = None, **over
) -> dict[str, Any]:
    """A valid record; ``i`` makes the event id and default time unique."""
    r = {
        "event_id": f"e-{i:06d}",
        "event_time": ts(hour, i % 3600 if second is None else second),
        "user_id": f"u-{i % 7}",
        "ad_id": f"a-{i % 5}",
        "campaign_id": campaign,
        "advertiser_id": "adv-1",
        "scene_id": "feed",
        "user_gender": "f" if i % 2 else "m",
        "user_age_bucket": "25-34",
        "user_segment": "s-1",
        "device_type": "ios",
        "region": "r-1",
        "ad_category": "cat-1",
        "ad_brand": "b-1",
        "creative_type": "video",
        "user_interests": ["t-1", "t-2"],
        "ad_tags": ["sale"],
        "bid_price": 0.5,
        "item_price": 19.9,
        "user_hist_ctr": 0.03,
        "click": i % 2,
        "conversion": 0,
    }
    r.update(over)
    return r


def part_dir(root: Path, hour: int) -> Path:
    t = START + timedelta(hours=hour)
    d = Path(root) / f"dt={t:%Y-%m-%d}" / f"hr={t:%H}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_jsonl(root: Path, hour: int, rows: list, name: str = "part-00000.jsonl") -> Path:
    """Write dicts (as JSON) or strings (as they are: corrupt lines) one per line."""
    path = part_dir(root, hour) / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    if name.endswith(".gz"):
        import gzip

        with gzip.open(path, "wt") as f:
            f.write("\n".join(lines) + "\n")
    else:
        path.write_text("\n".join(lines) + "\n")
    return path


def arrow_table(rows: list[dict]):
    """Records -> a pyarrow table in the raw schema (event_time parsed, labels int8)."""
    import pyarrow as pa

    from components.raw_schema import arrow_schema

    # Nullable fields, so tests can write the nulls a real producer bug would write.
    schema = pa.schema(
        [f.with_nullable(True) for f in arrow_schema()], metadata=arrow_schema().metadata
    )
    cols = {}
    for field in schema:
        values = [r.get(field.name) for r in rows]
        if field.name == "event_time":
            values = [
                None if v is None else datetime.fromisoformat(v.replace("Z", "+00:00"))
                for v in values
            ]
        cols[field.name] = pa.array(values, type=field.type)
    return pa.table(cols, schema=schema)


def write_parquet(
    root: Path, hour: int, rows: list[dict], name: str = "part-00000.parquet"
) -> Path:
    import pyarrow.parquet as pq

    path = part_dir(root, hour) / name
    pq.write_table(arrow_table(rows), path)
    return path


def hours_of(
    root: Path, hours: range, rows_per_hour: int, campaigns: int = 3, fmt: str = "jsonl"
) -> int:
    """Clean traffic: ``rows_per_hour`` rows per hour spread over ``campaigns`` campaigns."""
    n = 0
    for h in hours:
        rows = [
            record(
                h * 10_000 + j,
                campaign=f"c-{j % campaigns}",
                hour=h,
                second=j * 3600 / rows_per_hour,
            )
            for j in range(rows_per_hour)
        ]
        (write_parquet if fmt == "parquet" else write_jsonl)(root, h, rows)
        n += len(rows)
    return n


# A small interval with every kind of corruption, and the exact reason counts the ETL must report.
CLEAN_HOURS = range(3)
CLEAN_PER_HOUR = 72  # 3 campaigns x 24 rows x 3 hours: 9 full episodes of K=4 + Q=4 each, no ties
ETL_K, ETL_Q = 4, 4


def corrupted_interval(root: Path, fmt: str = "jsonl") -> dict[str, int]:
    """Write hours 0-2 (clean traffic of 3 campaigns plus corruption); return expected reasons.

    JSONL gets every corruption kind; Parquet only those a typed file can carry (nulls, NaN,
    out-of-range values and times, duplicates). Everything else in the interval is clean and
    cuts into full episodes, so the expected counts are exact.
    """
    per_hour: dict[int, list] = {h: [] for h in CLEAN_HOURS}
    for h in CLEAN_HOURS:
        for j in range(CLEAN_PER_HOUR):
            per_hour[h].append(
                record(
                    h * 10_000 + j, campaign=f"c-{j % 3}", hour=h, second=j * 3600 / CLEAN_PER_HOUR
                )
            )
    victim = per_hour[0][5]
    expected = {"duplicate_event_id": 2, "task_too_small": 2}
    per_hour[0].append(dict(victim))  # exact replay, same file
    per_hour[2].append(dict(victim, campaign_id="c-9", event_time=ts(2, 10)))  # conflicting, later
    per_hour[1] += [
        record(90_000 + i, campaign="c-small", hour=1, second=100 + i) for i in range(2)
    ]
    # (c-small has fewer than min_support + min_query = 4 rows)
    bad = [
        ("missing:event_id", record(80_001, hour=1, event_id=None)),
        ("missing:user_id", record(80_002, hour=1, user_id=None)),
        ("bad_value:bid_price", record(80_003, hour=1, bid_price=float("nan"))),
        ("bad_value:item_price", record(80_004, hour=1, item_price=-3.0)),
        ("bad_value:click", record(80_005, hour=1, click=2)),
        ("event_time_out_of_range", record(80_006, hour=1, event_time="1970-01-01T00:00:00.000Z")),
        ("event_time_out_of_range", record(80_007, hour=1, event_time=ts(5))),
    ]
    if fmt != "parquet":
        bad += [
            ("missing:user_id", record(80_008, hour=1, user_id="")),
            ("bad_type:click", record(80_009, hour=1, click="yes")),
            ("bad_type:bid_price", record(80_010, hour=1, bid_price="abc")),
            ("bad_type:event_time", record(80_011, hour=1, event_time="yesterday")),
            ("malformed_record", "this is not json"),
            ("malformed_record", '{"event_id": "e-x", "click": 1, "ad_'),
        ]
    for reason, r in bad:
        per_hour[1].append(r)
        expected[reason] = expected.get(reason, 0) + 1
    if fmt == "parquet":
        for h, rows in per_hour.items():
            write_parquet(root, h, rows)
    else:
        for h, rows in per_hour.items():
            if h == 1:
                rows = [*rows[:10], "", "   ", *rows[10:]]  # blank lines: not rows
            write_jsonl(root, h, rows, name="part-00000." + fmt)
        # a second file whose LAST line is truncated (no newline), as a crashed writer leaves it
        complete = record(70_000, campaign="c-small", hour=2)
        text = json.dumps(complete) + "\n" + '{"event_id": "e-trunc", "ev'
        last = part_dir(root, 2) / f"part-00001.{fmt}"
        if fmt.endswith(".gz"):
            import gzip

            with gzip.open(last, "wt") as f:
                f.write(text)
        else:
            last.write_text(text)
        per_hour[2].append(complete)
        expected["malformed_record"] = expected.get("malformed_record", 0) + 1
        expected["task_too_small"] += 1
    expected["_rows_read"] = sum(len(v) for v in per_hour.values()) + (1 if fmt != "parquet" else 0)
    return expected
