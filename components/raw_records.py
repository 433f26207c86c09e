"""THE raw-record parser: JSONL bytes -> canonical rows, each with no reason or ONE reason code.

The ETL (inside Spark, through ``mapInArrow``: :mod:`components.etl.rows`) and the scorer
(:mod:`components.score.events`) both call this module, so their lines, verdicts and values are
the same by construction: there is no second definition to keep in parity.

Lines (:func:`iter_lines`): a file is split on ``\\n``, ``\\r\\n`` and a lone ``\\r`` (Spark's text
rule; no Unicode separator such as NEL ``\\x85`` or U+2028 splits a line), counted from 1. A line of
only spaces and tabs (JSON whitespace) is blank: not a row. A line longer than
:data:`MAX_LINE_BYTES` is never held whole: its first :data:`RAW_PREVIEW_BYTES` are kept for the
quarantine and the rest is skipped while reading.

Reason codes, in the order the rules apply (the first that fails wins; within a rule, fields in
raw-schema order):

1. the line (one code each): ``line_too_long``; ``invalid_utf8``; ``too_deep`` (objects/arrays
   nested deeper than :data:`MAX_DEPTH`); ``number_too_long`` (a number literal longer than
   :data:`MAX_NUMBER_CHARS`); ``malformed_record`` (not one JSON object: garbage, truncated, a
   bare array, single-quoted pseudo-JSON); ``multiple_objects`` (an object followed by more JSON
   values: ``{A}{B}``); ``trailing_data`` (an object followed by anything else, a NUL included);
   ``lone_surrogate`` (a ``\\ud800``-style escape that is not half of a pair);
2. ``missing:<field>``: a required field absent, null or an empty string (labels too, unless
   ``require_labels`` is False: events to score have no label yet);
3. ``bad_type:<field>`` or ``field_too_long:<field>``: a value that is not of its kind (below), or
   whose text is longer than :data:`MAX_FIELD_CHARS` (a list: an element, or more than
   :data:`MAX_LIST_ITEMS` elements);
4. ``bad_value:<field>``: a number outside its domain: NaN or an infinity anywhere (ids too),
   dense values outside the raw schema's [min, max], labels other than 0/1.

Canonical values (one text for every id type): ids and categoricals take any JSON scalar as its
text: strings as they are, ``true``/``false``, integers in decimal, other numbers as the shortest
text that reads back as the same binary64 (``1.50`` -> ``"1.5"``, ``1e2`` -> ``"100.0"``), objects
and arrays as compact JSON; list fields are JSON arrays whose elements follow the same rule;
dense values and labels accept JSON numbers and numeric strings (``"0.25"``, ``" 1e3 "``,
``"NaN"``, ``"inf"``) as float64; ``event_time`` is ISO-8601 text (a date, a time to the minute
at least, an optional fraction truncated to milliseconds and an optional zone ``Z``/``+HH``/
``+HHMM``/``+HH:MM``; none means UTC) read as epoch milliseconds. Unknown keys are ignored; of a
repeated key the last value counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from components.raw_schema import RAW_FIELDS

MAX_LINE_BYTES = 1 << 20
"""A longer line is quarantined as ``line_too_long`` (records are ~1 KB)."""
MAX_FIELD_CHARS = 4096
"""A longer id, categorical or list element is ``field_too_long:<field>``."""
MAX_LIST_ITEMS = 1024
MAX_DEPTH = 32
"""Deepest nesting of objects and arrays (a record is 2 deep)."""
MAX_NUMBER_CHARS = 64
"""Longest number literal (a 20-digit id is fine; a 1000-digit one is not)."""
RAW_PREVIEW_BYTES = 4096
"""How much of a too-long line the quarantine keeps."""
BLANK = b" \t"
"""A line of only these bytes is blank (JSON whitespace; CR and LF end lines)."""

MALFORMED = "malformed_record"
LINE_TOO_LONG = "line_too_long"
INVALID_UTF8 = "invalid_utf8"
TOO_DEEP = "too_deep"
NUMBER_TOO_LONG = "number_too_long"
MULTIPLE_OBJECTS = "multiple_objects"
TRAILING_DATA = "trailing_data"
LONE_SURROGATE = "lone_surrogate"
DAMAGED_FILE = "damaged_file"
"""Not a line rule: a reader that keeps going after an unreadable file (the scorer) gives the
rest of that file this reason (see :class:`DamagedFileError`)."""
LINE_REASONS = (LINE_TOO_LONG, INVALID_UTF8, TOO_DEEP, NUMBER_TOO_LONG, MALFORMED,
                MULTIPLE_OBJECTS, TRAILING_DATA, LONE_SURROGATE)  # fmt: skip
FIELD_RULES = ("missing", "bad_type", "field_too_long", "bad_value")
"""Field-level codes are ``<rule>:<field>``."""

ISO_8601 = (
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2})"
    r"(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?(Z|[+-][0-9]{2}(?::?[0-9]{2})?)?"
)
"""Accepted event_time text (the whole string): date, time to the minute at least, optional
fraction and zone (none = UTC)."""
_TIME = re.compile(ISO_8601, re.ASCII)
_NUMBER = re.compile(
    r"[ \t\n\r]*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|nan|inf|infinity)[ \t\n\r]*",
    re.ASCII | re.IGNORECASE,
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_DECODER = json.JSONDecoder()
_CHUNK = 1 << 20
_INF = float("inf")


class _NumberTooLong(Exception):
    pass


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberTooLong
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberTooLong
    return float(text)


_PARSER = json.JSONDecoder(parse_int=_int, parse_float=_float)


# ----------------------------------------------------------------------------------- lines
@dataclass(frozen=True, slots=True)
class Line:
    """One line of a file, without its terminator."""

    number: int
    """1-based, blank lines counted."""
    data: bytes
    """The line; only its first :data:`RAW_PREVIEW_BYTES` when ``too_long``."""
    too_long: bool = False

    @property
    def blank(self) -> bool:
        return not self.too_long and not self.data.strip(BLANK)

    def text(self) -> str:
        """The line as text for the quarantine (bad UTF-8 as ``\\xNN`` escapes)."""
        text = self.data.decode("utf-8", errors="backslashreplace")
        return text + " ...[line truncated]" if self.too_long else text


class DamagedFileError(Exception):
    """A file could not be read to its end (a truncated gzip stream, a failing disk)."""

    def __init__(self, line: int, cause: BaseException) -> None:
        super().__init__(f"unreadable from line {line} on ({type(cause).__name__}: {cause})")
        self.line = line


def iter_lines(stream: IO[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """The lines of a binary stream (module docstring), read in chunks: memory stays bounded by
    the chunk and ``max_line_bytes`` whatever the line lengths.

    Raises:
        DamagedFileError: the stream failed (``OSError``/``EOFError``, e.g. truncated gzip); the
            lines before it were yielded.
    """
    number, parts, size, too_long, skip_lf = 0, [], 0, False, False
    while True:
        try:
            chunk = stream.read(_CHUNK)
        except (OSError, EOFError, ValueError) as e:  # pyarrow raises OSError/ArrowInvalid
            raise DamagedFileError(number + 1, e) from None
        if not chunk:
            break
        if skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        skip_lf = chunk[-1:] == b"\r"
        for piece in chunk.splitlines(keepends=True):
            end = piece[-1:]
            ended = end == b"\n" or end == b"\r"
            body = piece.rstrip(b"\r\n") if ended else piece
            if not too_long:
                size += len(body)
                if size > max_line_bytes:
                    too_long = True
                    parts = [b"".join([*parts, body])[:RAW_PREVIEW_BYTES]]
                else:
                    parts.append(body)
            if ended:
                number += 1
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                yield Line(number, data, too_long)
                parts, size, too_long = [], 0, False
    if parts or too_long:
        yield Line(number + 1, b"".join(parts), too_long)


# ---------------------------------------------------------------------------------- values
def _too_deep(text: str) -> bool:
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    for b in _BRACKETS.findall(_STRING.sub("", text)):
        depth += 1 if b in "[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def _has_lone_surrogate(v: Any) -> bool:
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(v, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_has_lone_surrogate(x) for x in v)
    return False


def _decode(line: Line) -> tuple[dict | None, str | None]:
    """``(object, None)`` or ``(None, line reason)``."""
    if line.too_long:
        return None, LINE_TOO_LONG
    try:
        text = line.data.decode("utf-8")
    except UnicodeDecodeError:
        return None, INVALID_UTF8
    if _too_deep(text):
        return None, TOO_DEEP
    text = text.strip(" \t")
    try:
        obj, end = _PARSER.raw_decode(text)
    except _NumberTooLong:
        return None, NUMBER_TOO_LONG
    except (ValueError, RecursionError):
        return None, MALFORMED
    if not isinstance(obj, dict):
        return None, MALFORMED
    if end != len(text):
        rest = text[end:].lstrip(" \t")
        try:
            _PARSER.raw_decode(rest)
            return None, MULTIPLE_OBJECTS
        except (_NumberTooLong, ValueError, RecursionError):
            return None, TRAILING_DATA
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(obj):
        return None, LONE_SURROGATE
    return obj, None


class _Bad(Exception):
    """A field's value breaks a rule: ``rule`` is ``bad_type``, ``field_too_long`` or ``bad_value``."""

    def __init__(self, rule: str) -> None:
        self.rule = rule


def text_of(v: Any) -> str | None:
    """The canonical text of an id or categorical value (module docstring)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise _Bad("bad_value")
        return repr(v)
    try:
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # a NaN or an infinity inside
        raise _Bad("bad_value") from None


def _text_field(v: Any) -> str | None:
    t = text_of(v)
    if t is not None and len(t) > MAX_FIELD_CHARS:
        raise _Bad("field_too_long")
    return t


def _list_field(v: Any) -> list[str | None] | None:
    if v is None:
        return None
    if not isinstance(v, list):
        raise _Bad("bad_type")
    if len(v) > MAX_LIST_ITEMS:
        raise _Bad("field_too_long")
    if all(type(x) is str and len(x) <= MAX_FIELD_CHARS for x in v):
        return v  # the common case: strings already
    return [_text_field(x) for x in v]


def _number_field(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise _Bad("bad_type")
    if isinstance(v, str) and not _NUMBER.fullmatch(v):
        raise _Bad("bad_type")
    return float(v)


def event_ms(text: str) -> int | None:
    """Epoch milliseconds of an ISO-8601 time (module docstring), None if it is not one."""
    m = _TIME.fullmatch(text)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, zone = m.groups()
    try:
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0), tzinfo=UTC)
    except ValueError:
        return None
    ms = (t - _EPOCH) // _MS + (int(frac[:3].ljust(3, "0")) if frac else 0)
    if zone and zone != "Z":
        hh, mm = int(zone[1:3]), int(zone[-2:]) if len(zone) > 3 else 0
        if hh >= 24 or mm >= 60:
            return None
        offset = (hh * 60 + mm) * 60_000
        ms -= offset if zone[0] == "+" else -offset
    return ms


def _time_field(v: Any) -> int | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise _Bad("bad_type")
    ms = event_ms(v)
    if ms is None:
        raise _Bad("bad_type")
    return ms


_CONVERT = {"id": _text_field, "categorical": _text_field, "multi": _list_field,
            "time": _time_field, "dense": _number_field, "label": _number_field}  # fmt: skip
_FIELDS = tuple((f.name, f.kind, f.required, _CONVERT[f.kind], f.kind in ("dense", "label"),
                 f.min_value, f.max_value) for f in RAW_FIELDS)  # fmt: skip


def _out_of_domain(kind: str, v: float, lo: float | None, hi: float | None) -> bool:
    """A label other than 0 or 1; a dense value that is not finite or outside [lo, hi]."""
    if kind == "label":
        return v != 0.0 and v != 1.0
    if v != v or v == _INF or v == -_INF:
        return True
    return (lo is not None and v < lo) or (hi is not None and v > hi)


_NAMES = tuple(f.name for f in RAW_FIELDS)
_TEXT_FIELDS = tuple(i for i, f in enumerate(RAW_FIELDS) if f.kind in ("id", "categorical"))
_OTHER_FIELDS = tuple(i for i, f in enumerate(RAW_FIELDS) if i not in _TEXT_FIELDS)
NONE_ROW: tuple = (None,) * len(RAW_FIELDS)


def _check(i: int, values: list, problems: list | None) -> list | None:
    """Convert field ``i`` of ``values`` in place; add its broken rule, if any, to ``problems``
    as ``(rule rank, field index, code, a missing label)``."""
    name, kind, required, convert, numeric, lo, hi = _FIELDS[i]
    raw = values[i]
    found = []
    if required and (raw is None or raw == ""):
        found.append((0, i, f"missing:{name}", kind == "label"))
    if raw is not None:
        try:
            v = float(raw) if numeric and type(raw) in (int, float) else convert(raw)
        except _Bad as e:
            values[i] = None
            found.append((2 if e.rule == "bad_value" else 1, i, f"{e.rule}:{name}", False))
        else:
            values[i] = v
            if numeric and v is not None and _out_of_domain(kind, v, lo, hi):
                found.append((2, i, f"bad_value:{name}", False))
    return (problems or []) + found if found else problems


def parse_record(line: Line) -> tuple[tuple, str | None, str | None]:
    """``(values, reason, reason_unlabelled)`` of one non-blank line: the canonical value of every
    raw field in schema order (``event_time`` as epoch ms; None where absent or not convertible)
    and the first failing rule's code (None for a good record) with labels required, and without
    (events to score carry no label yet; module docstring)."""
    obj, reason = _decode(line)
    if obj is None:
        return NONE_ROW, reason, reason
    values = list(map(obj.get, _NAMES))
    problems = None
    for i in _TEXT_FIELDS:  # the common case first: a non-empty string of a sane length
        v = values[i]
        if type(v) is not str or not v or len(v) > MAX_FIELD_CHARS:
            problems = _check(i, values, problems)
    for i in _OTHER_FIELDS:
        problems = _check(i, values, problems)
    if not problems:
        return tuple(values), None, None
    first = min(problems)[2]
    unlabelled = [p for p in problems if not p[3]]
    return tuple(values), first, (min(unlabelled)[2] if unlabelled else None)


def parse_lines(lines: Iterable[Line]) -> tuple[list[tuple], list[str | None], list[str | None]]:
    """:func:`parse_record` of each line: ``(values, reasons, reasons_unlabelled)``."""
    values, reasons, unlabelled = [], [], []
    for line in lines:
        v, r, u = parse_record(line)
        values.append(v)
        reasons.append(r)
        unlabelled.append(u)
    return values, reasons, unlabelled


def arrow_columns(values: list[tuple]) -> dict[str, Any]:
    """The canonical Arrow columns of parsed values: ``event_time`` as ``_t`` (int64 epoch ms),
    ids and categoricals as strings, lists of strings, dense values and labels as float64."""
    import pyarrow as pa

    types = {"id": pa.string(), "categorical": pa.string(), "multi": pa.list_(pa.string()),
             "time": pa.int64(), "dense": pa.float64(), "label": pa.float64()}  # fmt: skip
    columns = list(zip(*values, strict=True)) if values else [()] * len(RAW_FIELDS)
    return {
        ("_t" if f.kind == "time" else f.name): pa.array(col, types[f.kind])
        for f, col in zip(RAW_FIELDS, columns, strict=True)
    }


@dataclass
class ParsedBatch:
    """Parsed non-blank lines of one stream (:func:`parse_stream`)."""

    columns: dict[str, Any]
    """:func:`arrow_columns`, plus ``_reason`` and ``_reason_unlabelled`` (string arrays)."""
    lines: list[int]
    """Each row's line number."""
    raw: list[str]
    """Each row's line (:meth:`Line.text`)."""
    blank_lines: list[int]
    """The blank lines read since the previous batch (not rows)."""

    def __len__(self) -> int:
        return len(self.lines)


def _batch(lines: list[Line], reasons: list | None, blank: list[int]) -> ParsedBatch:
    import pyarrow as pa

    values, labelled, unlabelled = parse_lines(lines)
    if reasons is not None:  # a damaged-file row
        labelled = unlabelled = reasons
    columns = arrow_columns(values)
    columns["_reason"] = pa.array(labelled, pa.string())
    columns["_reason_unlabelled"] = pa.array(unlabelled, pa.string())
    return ParsedBatch(columns, [x.number for x in lines], [x.text() for x in lines], blank)


def parse_stream(
    stream: IO[bytes], batch_rows: int, quarantine_damage: bool = False
) -> Iterator[ParsedBatch]:
    """Parse the lines of a binary stream in batches of up to ``batch_rows`` rows.

    A stream that fails mid-way (:class:`DamagedFileError`) ends, after the lines read before the
    failure, with one row of reason :data:`DAMAGED_FILE` (its ``raw`` says what failed and from
    which line on) when ``quarantine_damage``; otherwise the error propagates.
    """
    rows: list[Line] = []
    blank: list[int] = []
    try:
        for line in iter_lines(stream):
            if line.blank:
                blank.append(line.number)
                continue
            rows.append(line)
            if len(rows) == batch_rows:
                yield _batch(rows, None, blank)
                rows, blank = [], []
    except DamagedFileError as e:
        if rows or blank:
            yield _batch(rows, None, blank)
        if not quarantine_damage:
            raise
        damaged = Line(e.line, str(e).encode())
        yield _batch([damaged], [DAMAGED_FILE], [])
        return
    if rows or blank:
        yield _batch(rows, None, blank)
