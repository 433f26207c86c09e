"""Turn a chunk of :class:`Events` into an Arrow table (Parquet) or JSON lines, without per-row Python.

Entity attributes are rendered once per entity (a user's id, profile and interests as Arrow
strings, and as one pre-formatted JSON fragment) and gathered per row with Arrow ``take``. Per-row
values are formatted with numpy digit arithmetic (event ids, ISO-8601 times) or Arrow casts
(numbers), and a JSON line is one ``binary_join_element_wise`` over about ten columns.

JSON lines follow the encoding rules of ``components/raw_schema.py``: compact separators, keys in
schema order within each group (ids, user profile, ad attributes, then bid and labels), event_time
``"YYYY-MM-DDTHH:MM:SS.mmmZ"``, lists as arrays of strings, labels 0/1, a missing conversion as
``null``, numbers in shortest round-trip form (``0.42``, ``19``).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.generate.population import (
    AD_TAG_WORDS,
    AGE_BUCKETS,
    BRANDS_PER_ADVERTISER,
    CREATIVE_TYPES,
    DEVICES,
    GENDERS,
    NUM_AD_TAGS,
    NUM_CATEGORIES,
    NUM_INTERESTS,
    NUM_REGIONS,
    NUM_SEGMENTS,
    SCENES,
    Population,
)
from components.generate.traffic import Events
from components.raw_schema import arrow_schema

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_DIGITS = np.uint8(ord("0"))


def strings_from_matrix(chars: np.ndarray) -> pa.StringArray:
    """An Arrow string array whose i-th value is the ASCII bytes of row i of a ``(n, w)`` uint8 matrix."""
    n, width = chars.shape
    offsets = np.arange(n + 1, dtype=np.int32) * width
    data = np.ascontiguousarray(chars)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def event_id_chars(key: np.ndarray, quoted: bool) -> np.ndarray:
    """``e-`` + 16 lowercase hex digits of ``key`` (optionally in double quotes), as a char matrix."""
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    nibbles = ((key[:, None] >> shifts) & np.uint64(15)).astype(np.intp)
    head = b'"e-' if quoted else b"e-"
    parts = [np.broadcast_to(np.frombuffer(head, np.uint8), (len(key), len(head))), _HEX[nibbles]]
    if quoted:
        parts.append(np.full((len(key), 1), ord('"'), np.uint8))
    return np.hstack(parts)


def iso_time_chars(time_ms: np.ndarray) -> np.ndarray:
    """``"YYYY-MM-DDTHH:MM:SS.mmmZ"`` (quoted, 26 chars) per epoch-ms value, years 0000-9999."""
    days, ms_of_day = np.divmod(time_ms.astype(np.int64), 86_400_000)
    # civil_from_days (H. Hinnant), vectorised.
    z = days + 719_468
    era = np.floor_divide(z, 146_097)
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    secs, millis = np.divmod(ms_of_day, 1000)
    hour, rest = np.divmod(secs, 3600)
    minute, second = np.divmod(rest, 60)
    out = np.empty((len(time_ms), 26), dtype=np.uint8)
    for col, ch in (
        (0, '"'),
        (5, "-"),
        (8, "-"),
        (11, "T"),
        (14, ":"),
        (17, ":"),
        (20, "."),
        (24, "Z"),
        (25, '"'),
    ):
        out[:, col] = ord(ch)
    for value, col, width in (
        (year, 1, 4),
        (month, 6, 2),
        (day, 9, 2),
        (hour, 12, 2),
        (minute, 15, 2),
        (second, 18, 2),
        (millis, 21, 3),
    ):
        for k in range(width):
            out[:, col + width - 1 - k] = (value // 10**k) % 10 + _DIGITS
    return out


def _vocab(names: list[str] | tuple[str, ...]) -> pa.StringArray:
    return pa.array(list(names), pa.string())


def _prefixed(prefix: str, n: int) -> pa.StringArray:
    """``prefix0, prefix1, ...`` (vectorised: no Python strings per entity)."""
    numbers = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, numbers, "")


def _lists(offsets: np.ndarray, values: np.ndarray, vocab: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), vocab.take(values))


def _quoted(strings: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise('"', strings, '"', "")


def _json_list(lists: pa.ListArray) -> pa.Array:
    quoted = pa.ListArray.from_arrays(lists.offsets, _quoted(lists.values))
    return pc.binary_join_element_wise("[", pc.binary_join(quoted, ","), "]", "")


def _json_object_body(pairs: list[tuple[str, pa.Array]]) -> pa.Array:
    """``"k1":v1,"k2":v2`` per element; values are already JSON text (nulls become ``null``)."""
    parts: list = []
    for i, (key, value) in enumerate(pairs):
        parts += [("," if i else "") + f'"{key}":', value]
    return pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="null")


class Renderer:
    """Entity string tables of one population, built on first use, and the two row renderers."""

    def __init__(self, pop: Population) -> None:
        self.pop = pop

    @cached_property
    def users(self) -> dict[str, pa.Array]:
        p = self.pop
        return {
            "user_id": _prefixed("u-", p.num_users),
            "user_gender": _vocab(GENDERS).take(p.user_gender),
            "user_age_bucket": _vocab(AGE_BUCKETS).take(p.user_age),
            "user_segment": _prefixed("s-", NUM_SEGMENTS).take(p.user_segment),
            "device_type": _vocab(DEVICES).take(p.user_device),
            "region": _prefixed("r-", NUM_REGIONS).take(p.user_region),
            "user_interests": _lists(
                p.user_interest_offsets, p.user_interest_values, _prefixed("t-", NUM_INTERESTS)
            ),
            "user_hist_ctr": pa.array(p.user_hist_ctr, pa.float64()),
        }

    @cached_property
    def ads(self) -> dict[str, pa.Array]:
        p = self.pop
        campaign = p.ad_campaign
        advertiser = p.camp_advertiser[campaign]
        tag_vocab = list(AD_TAG_WORDS) + [f"kw-{i}" for i in range(NUM_AD_TAGS - len(AD_TAG_WORDS))]
        return {
            "ad_id": _prefixed("a-", p.num_ads),
            "campaign_id": _prefixed("c-", p.num_campaigns).take(campaign),
            "advertiser_id": _prefixed("adv-", p.num_advertisers).take(advertiser),
            "ad_category": _prefixed("cat-", NUM_CATEGORIES).take(p.camp_category[campaign]),
            "ad_brand": _prefixed("b-", BRANDS_PER_ADVERTISER * p.num_advertisers).take(
                p.camp_brand[campaign]
            ),
            "creative_type": _vocab(CREATIVE_TYPES).take(p.ad_creative),
            "ad_tags": _lists(p.ad_tag_offsets, p.ad_tag_values, _vocab(tag_vocab)),
            "item_price": pa.array(p.ad_item_price, pa.float64()),
        }

    @cached_property
    def scenes(self) -> pa.Array:
        return _vocab([s.name for s in SCENES])

    @cached_property
    def _json_fragments(self) -> dict[str, pa.Array]:
        u, a = self.users, self.ads
        return {
            "user_id": _json_object_body([("user_id", _quoted(u["user_id"]))]),
            "ad_ids": _json_object_body(
                [(k, _quoted(a[k])) for k in ("ad_id", "campaign_id", "advertiser_id")]
            ),
            "scene": _json_object_body([("scene_id", _quoted(self.scenes))]),
            "user_profile": _json_object_body(
                [
                    (k, _quoted(u[k]))
                    for k in (
                        "user_gender",
                        "user_age_bucket",
                        "user_segment",
                        "device_type",
                        "region",
                    )
                ]
                + [
                    ("user_interests", _json_list(u["user_interests"])),
                    ("user_hist_ctr", pc.cast(u["user_hist_ctr"], pa.string())),
                ]
            ),
            "ad_profile": _json_object_body(
                [(k, _quoted(a[k])) for k in ("ad_category", "ad_brand", "creative_type")]
                + [
                    ("ad_tags", _json_list(a["ad_tags"])),
                    ("item_price", pc.cast(a["item_price"], pa.string())),
                ]
            ),
        }

    def table(self, ev: Events, schema: pa.Schema | None = None) -> pa.Table:
        """The typed raw table of a chunk (``raw_schema.arrow_schema()`` unless ``schema``)."""
        schema = schema or arrow_schema()
        user, ad = pa.array(ev.user), pa.array(ev.ad)
        cols = {name: arr.take(user) for name, arr in self.users.items()}
        cols |= {name: arr.take(ad) for name, arr in self.ads.items()}
        cols["event_id"] = strings_from_matrix(event_id_chars(ev.key, quoted=False))
        cols["event_time"] = pa.array(ev.time_ms, pa.timestamp("ms", tz="UTC"))
        cols["scene_id"] = self.scenes.take(pa.array(ev.scene))
        cols["bid_price"] = pa.array(ev.bid, pa.float64())
        cols["click"] = pa.array(ev.click, pa.int8())
        cols["conversion"] = pa.array(ev.conversion, pa.int8(), mask=~ev.conversion_known)
        return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)

    def json_lines(self, ev: Events) -> pa.StringArray:
        """One JSON object plus ``\\n`` per event."""
        frag = self._json_fragments
        user, ad = pa.array(ev.user), pa.array(ev.ad)
        conversion = pc.cast(
            pa.array(ev.conversion, pa.int8(), mask=~ev.conversion_known), pa.string()
        )
        lines = pc.binary_join_element_wise(
            '{"event_id":',
            strings_from_matrix(event_id_chars(ev.key, quoted=True)),
            ',"event_time":',
            strings_from_matrix(iso_time_chars(ev.time_ms)),
            ",",
            frag["user_id"].take(user),
            ",",
            frag["ad_ids"].take(ad),
            ",",
            frag["scene"].take(pa.array(ev.scene)),
            ",",
            frag["user_profile"].take(user),
            ",",
            frag["ad_profile"].take(ad),
            ',"bid_price":',
            pc.cast(pa.array(ev.bid, pa.float64()), pa.string()),
            ',"click":',
            pc.cast(pa.array(ev.click, pa.int8()), pa.string()),
            ',"conversion":',
            conversion,
            "}\n",
            "",
            null_handling="replace",
            null_replacement="null",
        )
        return lines
