"""Realistic corruption, injected row by row and counted exactly (the ETL's ground truth).

A **row** is one record as a reader sees it: one line of a JSONL file (every line ends with
``\\n`` except a truncated last line, which still counts as one row; no blank lines are ever
written), or one row of a Parquet file. ``--rows`` counts rows, corrupted ones included.

Each chunk corrupts ``floor(fraction * n + U)`` rows (``U`` uniform, so the expectation is exact),
each with exactly one kind, drawn by weight from the kinds the format can carry. Every kind maps to
the ONE reason code the ETL must give the row (its first failing rule) or to "kept":

======================  =========================================================  ======================
kind                    what the row looks like                                     ETL reason
======================  =========================================================  ======================
malformed_garbage       not JSON at all (an HTML error page, a log line, ...)       malformed_record
malformed_truncated     a proper prefix of a JSON record (writer cut mid-line)      malformed_record
truncated_last_line     the last line of a file cut short, no final newline         malformed_record
missing_required        a required key absent                                       missing:<field>
null_required           a required field null (the only missing kind in Parquet)    missing:<field>
extra_fields            unknown keys added (``sdk_version``, ``experiment``...)     kept (keys ignored)
wrong_type              click "yes", bid_price "abc", event_time "yesterday"...      bad_type:<field>
nonfinite_number        NaN / Infinity / -Infinity in a dense field                 bad_value:<field>
negative_number         a negative bid_price / item_price / user_hist_ctr           bad_value:<field>
label_out_of_range      click 2, 3 or -1; conversion 2                              bad_value:<field>
time_out_of_range       1970-01-01, 2100-01-01, or 7-30 days before / 1-30 days     event_time_out_of_range
                        after its partition hour (beyond any reasonable lateness)
duplicate_exact         a byte-identical replay of an earlier row of the same hour  duplicate_event_id
duplicate_conflicting   an earlier row's event_id with other content (time, click,  duplicate_event_id
                        bid), possibly in another hour
======================  =========================================================  ======================

Parquet carries the kinds its typed schema can hold (nulls, NaN/negative numbers, bad labels,
times, duplicates); when ``null_required`` is among them every column is declared nullable (a
required Parquet column cannot hold a null), otherwise files carry exactly ``arrow_schema()``.
JSON non-finite numbers are written as bare ``NaN``/``Infinity``/``-Infinity`` tokens, as
Python's ``json`` does (Spark's reader accepts them). Duplicates copy only clean rows, and a row
that is copied is never corrupted itself, so each duplicate adds exactly one ``duplicate_event_id``
row whichever copy the ETL keeps. Truncated last lines hit each file with probability
``min(0.5, 10 * fraction)``. Counts assume the ETL reads the whole generated range.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from components.generate.config import CORRUPTION_KINDS, GeneratorConfig
from components.generate.population import Population
from components.generate.traffic import Events
from components.raw_schema import RAW_FIELDS, fields_of

CLEAN = -1
CODE = {kind: i for i, kind in enumerate(CORRUPTION_KINDS)}
DUPLICATES = (CODE["duplicate_exact"], CODE["duplicate_conflicting"])
WEIGHT = {"null_required": 0.5, "extra_fields": 1.0, "wrong_type": 1.5}  # default 1.0
REASON = {
    "malformed_garbage": "malformed_record",
    "malformed_truncated": "malformed_record",
    "truncated_last_line": "malformed_record",
    "extra_fields": None,
    "time_out_of_range": "event_time_out_of_range",
    "duplicate_exact": "duplicate_event_id",
    "duplicate_conflicting": "duplicate_event_id",
}  # the others name their field: missing:<f>, bad_type:<f>, bad_value:<f>
REQUIRED = tuple(f.name for f in RAW_FIELDS if f.required)
DENSE = tuple(f.name for f in fields_of("dense"))
GARBAGE = (
    "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
    "ERROR {n} log-shipper: buffer overflow, dropping batch",
    "event_id=e-{n:x};user=u-{n};click=1",
    "{{{{{{",
    "\ufffd\ufffd\ufffd\ufffd binary junk {n}",
    "null,null,null,{n}",
)
WRONG_TYPES = (
    ("click", "yes"),
    ("click", "clicked"),
    ("conversion", "no"),
    ("bid_price", "abc"),
    ("bid_price", "n/a"),
    ("item_price", "12,50"),
    ("user_hist_ctr", "high"),
    ("event_time", "yesterday"),
    ("event_time", "2026-13-45T99:99:99Z"),
)
BAD_LABELS = (("click", 2), ("click", 3), ("click", -1), ("conversion", 2))
EXTRA_FIELDS = (
    ("sdk_version", "3.14.1"),
    ("_debug", "trace-7f3a"),
    ("ab_bucket", 17),
    ("experiment", {"id": "exp-4", "arm": "b"}),
)
COUNTING_RULES = (
    "each corrupted row has exactly one kind; 'reasons' counts the rows the ETL must quarantine "
    "by the reason code of their first failing rule (extra_fields rows are valid and kept); "
    "a duplicate copies a clean row that is itself never corrupted, so each adds exactly one "
    "duplicate_event_id row whichever copy is kept; counts assume the whole range is read"
)
RESERVOIR_SIZE = 256  # earlier clean rows kept for cross-hour conflicting duplicates


def iso_ms(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` of a UTC datetime."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def record_json(record: dict[str, Any]) -> str:
    """One JSON line (no newline) of a record whose event_time may be a datetime."""
    out = dict(record)
    if isinstance(out.get("event_time"), datetime):
        out["event_time"] = iso_ms(out["event_time"])
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


class Corruptor:
    """Plans and applies the corruption of each chunk and keeps the exact counts."""

    def __init__(self, config: GeneratorConfig) -> None:
        kinds = config.active_corruption_kinds()
        self.fraction = config.corrupt
        self.truncate_last = "truncated_last_line" in kinds
        mix = [k for k in kinds if k != "truncated_last_line"]
        self.codes = np.array([CODE[k] for k in mix], dtype=np.int8)
        weight = np.array([WEIGHT.get(k, 1.0) for k in mix])
        self.weights = weight / weight.sum() if len(mix) else weight
        self.kinds: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.reservoir: Events | None = None

    def plan(self, rng: np.random.Generator, files: np.ndarray, last_chunk: bool) -> np.ndarray:
        """A kind code per row (``CLEAN`` = untouched); last lines of files only in the last chunk."""
        n = len(files)
        plan = np.full(n, CLEAN, dtype=np.int8)
        m = min(n, int(np.floor(self.fraction * n + rng.random()))) if len(self.codes) else 0
        if m:
            plan[rng.choice(n, m, replace=False)] = rng.choice(self.codes, m, p=self.weights)
        if last_chunk and self.truncate_last:
            for k in np.unique(files):
                if rng.random() < min(0.5, 10 * self.fraction):
                    plan[np.flatnonzero(files == k)[-1]] = CODE["truncated_last_line"]
        return plan

    def duplicate(
        self,
        rng: np.random.Generator,
        pop: Population,
        ev: Events,
        plan: np.ndarray,
        t0: int,
        t1: int,
    ) -> tuple[Events, np.ndarray]:
        """Fill the duplicate rows of ``plan`` with copies; returns the events and used sources.

        Exact replays copy a clean row of this chunk; conflicting duplicates prefer a row of an
        earlier chunk (the reservoir) and change its time (within this slice), click and bid.
        Duplicates without a clean source left are turned back into clean rows.
        """
        exact = np.flatnonzero(plan == DUPLICATES[0])
        conflict = np.flatnonzero(plan == DUPLICATES[1])
        if not len(exact) + len(conflict):
            return ev, np.zeros(0, dtype=np.int64)
        clean = np.flatnonzero(plan == CLEAN)
        n_res = len(self.reservoir) if self.reservoir is not None else 0
        k_res = min(len(conflict), n_res)
        from_res, conflict_local = conflict[:k_res], conflict[k_res:]
        local = np.concatenate([exact, conflict_local])
        if len(local) > len(clean):  # tiny chunk: not enough clean rows to copy
            plan[local[len(clean) :]] = CLEAN
            local = local[: len(clean)]
        sources = rng.choice(clean, len(local), replace=False)
        res_pick = rng.choice(n_res, k_res, replace=False) if k_res else np.zeros(0, np.int64)
        parts = [ev] if not k_res else [ev, self.reservoir]
        index = np.arange(len(ev))
        index[local] = sources
        index[from_res] = len(ev) + res_pick
        out = Events.concat(parts).take(index) if k_res else ev.take(index)
        if k_res:
            keep = np.setdiff1d(np.arange(n_res), res_pick)
            self.reservoir = self.reservoir.take(keep)
        changed = np.flatnonzero(plan == DUPLICATES[1])
        birth = pop.camp_birth_ms[pop.ad_campaign[out.ad[changed]]]
        low = np.maximum(t0, birth)
        out.time_ms[changed] = low + np.floor(rng.random(len(changed)) * (t1 - low)).astype(
            np.int64
        )
        out.click[changed] = 1 - out.click[changed]
        out.conversion[changed] &= out.click[changed]
        bid = out.bid[changed] * rng.uniform(0.5, 1.5, len(changed))
        out.bid[changed] = np.maximum(np.round(bid, 4), 1e-4)
        for code in DUPLICATES:
            n_dup = int((plan == code).sum())
            if n_dup:
                kind = CORRUPTION_KINDS[code]
                self.kinds[kind] += n_dup
                self.reasons[REASON[kind]] += n_dup
        return out, sources

    def remember(
        self, rng: np.random.Generator, ev: Events, plan: np.ndarray, used: np.ndarray
    ) -> None:
        """Keep a few clean, unused rows of this chunk for later conflicting duplicates."""
        if CODE["duplicate_conflicting"] not in self.codes:
            return
        pool = np.setdiff1d(np.flatnonzero(plan == CLEAN), used)
        pick = rng.choice(pool, min(16, len(pool)), replace=False)
        new = ev.take(np.sort(pick))
        merged = new if self.reservoir is None else Events.concat([self.reservoir, new])
        if len(merged) > RESERVOIR_SIZE:
            merged = merged.take(np.sort(rng.choice(len(merged), RESERVOIR_SIZE, replace=False)))
        self.reservoir = merged

    def corrupt(
        self, rng: np.random.Generator, records: list[dict], codes: np.ndarray, as_json: bool
    ) -> list:
        """Apply each row's (non-duplicate) kind: JSON lines (with ``\\n``) or typed records."""
        out = []
        for record, code in zip(records, codes, strict=True):
            kind = CORRUPTION_KINDS[code]
            value, reason = _mutate(rng, dict(record), kind)
            self.kinds[kind] += 1
            if reason is not None:
                self.reasons[reason] += 1
            if as_json:
                text = value if isinstance(value, str) else record_json(value) + "\n"
                out.append(text)
            else:
                out.append(value)
        return out


def _pick(rng: np.random.Generator, options: tuple) -> Any:
    return options[int(rng.integers(len(options)))]


def _mutate(rng: np.random.Generator, rec: dict, kind: str) -> tuple[dict | str, str | None]:
    """One corrupted record (a dict, or the final line text) and its expected ETL reason."""
    if kind == "malformed_garbage":
        return _pick(rng, GARBAGE).format(n=int(rng.integers(1 << 40))) + "\n", REASON[kind]
    if kind in ("malformed_truncated", "truncated_last_line"):
        text = record_json(rec)
        cut = text[: int(rng.integers(1, len(text)))]
        return (cut + "\n" if kind == "malformed_truncated" else cut), REASON[kind]
    if kind in ("missing_required", "null_required"):
        name = _pick(rng, REQUIRED)
        if kind == "missing_required":
            del rec[name]
        else:
            rec[name] = None
        return rec, f"missing:{name}"
    if kind == "extra_fields":
        for j in rng.choice(len(EXTRA_FIELDS), int(rng.integers(1, 4)), replace=False):
            rec[EXTRA_FIELDS[j][0]] = EXTRA_FIELDS[j][1]
        return rec, None
    if kind == "wrong_type":
        name, value = _pick(rng, WRONG_TYPES)
        rec[name] = value
        return rec, f"bad_type:{name}"
    if kind in ("nonfinite_number", "negative_number"):
        name = _pick(rng, DENSE)
        if kind == "nonfinite_number":
            rec[name] = _pick(rng, (float("nan"), float("inf"), float("-inf")))
        else:
            rec[name] = -round(float(rng.uniform(0.01, 5.0)), 2)
        return rec, f"bad_value:{name}"
    if kind == "label_out_of_range":
        name, value = _pick(rng, BAD_LABELS)
        rec[name] = value
        return rec, f"bad_value:{name}"
    if kind == "time_out_of_range":
        hour = rec["event_time"].replace(minute=0, second=0, microsecond=0)
        ms = timedelta(milliseconds=int(rng.integers(3_600_000)))
        rec["event_time"] = _pick(
            rng,
            (
                datetime(1970, 1, 1, tzinfo=UTC),
                datetime(2100, 1, 1, tzinfo=UTC) + ms,
                hour - timedelta(days=int(rng.integers(7, 31))) + ms,
                hour + timedelta(days=int(rng.integers(1, 31))) + ms,
            ),
        )
        return rec, REASON[kind]
    raise AssertionError(f"kind {kind!r} is not a per-record corruption")
