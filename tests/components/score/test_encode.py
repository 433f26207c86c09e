"""Reading, validating and encoding raw events for scoring, against independent expectations:
reason codes as the ETL assigns them, and ids computed value by value with the feature hash."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from components.score import events
from components.score.encode import check_spec, encode, validate
from tests.components.etl import rawdata
from trainer.data.contract import DenseSpec, FeatureSpec
from trainer.data.hashing import feature_id, feature_ids

FEATURES = [
    FeatureSpec("user_id", "user_id", "categorical", 101, 1, 0),
    FeatureSpec("campaign_id", "campaign_id", "categorical", 31, 1, 1),
    FeatureSpec("user_gender", "user_gender", "categorical", 7, 1, 2),
    FeatureSpec("hour_of_day", "event_time", "categorical", 29, 1, 3),
    FeatureSpec("user_interests", "user_interests", "multi", 37, 3, 4),
    FeatureSpec("ad_tags", "ad_tags", "multi", 17, 2, 7),
]
DENSE = [DenseSpec("bid_price", "bid_price", "log1p", 0), DenseSpec("item_price", "item_price", "log1p", 1),
         DenseSpec("user_hist_ctr", "user_hist_ctr", "identity", 2)]  # fmt: skip
r = rawdata.record
GOOD = [
    r(0),
    r(1, user_id=123),  # a JSON integer id hashes as its text "123"
    r(2, user_id=1.0, item_price=None, user_interests=["a", None, "b", "c", "d"]),  # "1.0"
    r(3, ad_tags=None, user_gender=None, user_interests=[]),
    r(4, item_price="19.9", click=None),  # numeric string; no label (fine for scoring)
    r(5, event_time="2026-11-01T05:12:33+02:00"),  # 03:12:33 UTC
    r(6, event_time="2026-11-01 07:00", user_gender=""),  # naive = UTC; "" is a value
]
BAD = [
    ("malformed_record", "garbage{"),
    ("malformed_record", "[1, 2]"),
    ("missing:user_id", {k: v for k, v in r(10).items() if k != "user_id"}),
    ("missing:ad_id", r(11, ad_id="")),
    ("bad_type:bid_price", r(12, bid_price="abc")),
    ("bad_type:bid_price", r(13, bid_price="abc", click="yes")),  # first field in schema order
    ("bad_type:click", r(14, click="yes")),
    ("bad_type:event_time", r(15, event_time="yesterday")),
    ("bad_type:event_time", r(16, event_time=1793491200000)),  # an epoch number is not ISO text
    ("bad_type:user_interests", r(17, user_interests="sale")),
    ("bad_value:user_hist_ctr", r(18, user_hist_ctr=2.0)),
    ("bad_value:click", r(19, click=2)),
    ("bad_value:bid_price", r(20, bid_price=float("nan"))),  # written as a bare NaN token
    ("bad_value:item_price", r(21, item_price=-1)),
]


def _ms(text: str) -> int:
    t = datetime.fromisoformat(text.replace(" ", "T"))
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _text(v):
    if isinstance(v, float) and v.is_integer():
        return repr(v)  # JSON keeps 1.0 as the text "1.0" (the hashing twin would say "1")
    return v if v is None or isinstance(v, str) else json.dumps(v)


def expected_sample(rec: dict) -> tuple[list[int], list[float]]:
    """One sample's ids and dense values, value by value (no shared code with the encoder)."""
    ids = []
    for f in FEATURES:
        if f.source == "event_time":
            ids.append(
                feature_id(f.name, str((_ms(rec["event_time"]) // 3_600_000) % 24), f.buckets)
            )
        elif f.kind == "multi":
            values = [_text(v) for v in (rec.get(f.source) or [])]
            ids += feature_ids(f.name, values, f.buckets, f.slots)
        else:
            ids.append(feature_id(f.name, _text(rec.get(f.source)), f.buckets))
    dense = []
    for d in DENSE:
        v = rec.get(d.source)
        v = None if v is None else float(v)
        dense.append(
            0.0 if v is None else float(np.float32(math.log1p(v) if d.transform == "log1p" else v))
        )
    return ids, dense


def _write(tmp_path: Path, rows: list) -> Path:
    lines = [x if isinstance(x, str) else json.dumps(x) for x in rows]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([lines[0], "", "  ", *lines[1:]]) + "\n")  # blank lines: not rows
    return path


def _read(path: Path, labels_required: bool = False, batch_rows: int = 1000):
    tables = [b.table for b in events.read_events(str(path), batch_rows)]
    table = pa.concat_tables(tables)
    return table, validate(table, labels_required)


def test_reasons_and_encoding_follow_the_etl(tmp_path):
    path = _write(tmp_path, [*GOOD, *(row for _, row in BAD)])
    table, reasons = _read(path)
    assert table.num_rows == len(GOOD) + len(BAD)  # blank lines are not rows
    assert list(reasons) == [None] * len(GOOD) + [code for code, _ in BAD]
    assert table.column("_line").to_pylist()[:2] == [1, 4]  # line numbers count blank lines
    good = table.take(pa.array(np.flatnonzero(np.equal(reasons, None))))
    e = encode(good, FEATURES, DENSE, "campaign_id")
    for i, rec in enumerate(GOOD):
        ids, dense = expected_sample(rec)
        assert e.sparse[i].tolist() == ids, i
        np.testing.assert_array_equal(e.dense[i], np.array(dense, np.float32))
        assert e.event_id[i] == rec["event_id"] and e.task[i] == rec["campaign_id"]
    assert e.t[5] == _ms("2026-11-01T03:12:33Z") and math.isnan(e.click[4])
    assert e.click[0] == 0.0 and e.conversion[0] == 0.0


def test_support_events_need_a_label(tmp_path):
    _, reasons = _read(_write(tmp_path, GOOD), labels_required=True)
    assert [i for i, x in enumerate(reasons) if x] == [4] and reasons[4] == "missing:click"


def test_batch_sizes_and_value_types_agree(tmp_path):
    """Batch sizes give the same encoded rows; so does a block holding a JSON number where a
    string is expected (ids take any scalar as its text)."""
    clean = [r(i, user_interests=[f"t-{i % 4}"] * (i % 5)) for i in range(40)]
    one = encode(_read(_write(tmp_path, clean), batch_rows=7)[0], FEATURES, DENSE, "campaign_id")
    mixed = [*clean, r(99, user_id=7)]
    table, _ = _read(_write(tmp_path, mixed))
    both = encode(table, FEATURES, DENSE, "campaign_id")
    np.testing.assert_array_equal(both.sparse[:40], one.sparse)
    np.testing.assert_array_equal(both.dense[:40], one.dense)


def test_parquet_input_encodes_like_jsonl(tmp_path):
    rows = [x for x in GOOD if isinstance(x.get("user_id"), str) and x.get("item_price") != "19.9"]
    rows = [dict(x, event_time=x["event_time"] if x["event_time"].endswith("Z") else rawdata.ts(1))
            for x in rows]  # fmt: skip
    jsonl = encode(_read(_write(tmp_path, rows))[0], FEATURES, DENSE, "campaign_id")
    pq_path = rawdata.write_parquet(tmp_path / "raw", 0, rows)
    table, reasons = _read(pq_path.parent.parent.parent)  # the dt=/hr= tree
    assert list(reasons) == [None] * len(rows)
    parquet = encode(table, FEATURES, DENSE, "campaign_id")
    for name in ("sparse", "dense", "t", "event_id", "task", "conversion"):
        np.testing.assert_array_equal(getattr(parquet, name), getattr(jsonl, name), err_msg=name)


def test_models_of_non_raw_features_are_refused():
    synthetic = [FeatureSpec("user", "user", "categorical", 11, 1, 0)]
    with pytest.raises(ValueError, match="not computed from raw ad-log columns"):
        check_spec(synthetic, [], "campaign_id")
    with pytest.raises(ValueError, match="not an id column"):
        check_spec(FEATURES, DENSE, "user_gender")
    check_spec(FEATURES, DENSE, "campaign_id")
