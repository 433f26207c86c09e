"""The raw-row rules: ONE definition of which raw record is valid, and of the reason a bad one gets.

:mod:`components.raw_schema` says what a record holds (fields, kinds, bounds); this module says
which line is a record, which values are of their field's type, and which reason code a bad row
gets. It is data (reason codes, their precedence, regular expressions, limits) plus a pure-Python
reader of one line, and is compiled twice:

- to Spark Column expressions for the ETL (:mod:`components.etl.rows`: native expressions, no
  Python UDF on the row path);
- to Python for the scorer (:func:`read_line` here, used by :mod:`components.score.events`, and
  :mod:`components.score.encode` for the value rules).

``tests/components/test_raw_rules_parity.py`` runs hostile lines through both and asserts the same
verdict, the same reason and the same hashed ids. It lives beside ``raw_schema.py`` because the ETL
and the scorer both read it and neither owns it; it imports neither Spark nor torch.

**Lines.** A line ends at LF, CR or CRLF (the rule of Hadoop's text reader, which the ETL uses, and
of Python's universal newlines, which the scorer uses). A line made only of JSON whitespace is
blank: not a row (``raw_schema.JSON_WHITESPACE``). Every other line is one row.

**Reason codes**, in precedence order (the first rule that fails wins; within a rule, fields in
raw-schema order):

1. ``line_too_long``     more than :data:`MAX_LINE_CHARS` characters;
2. ``malformed_record``  the line is not exactly ONE JSON object (RFC 8259, plus the number tokens
   ``NaN``, ``Infinity`` and ``-Infinity``), with nothing but whitespace around it: two objects
   (``{A}{B}``), trailing text or NUL, single quotes, ``+Infinity``/``INF``, a string holding a lone
   UTF-16 surrogate escape (``"\\ud800"``), nesting deeper than :data:`MAX_DEPTH`, a number with a
   run of more than :data:`MAX_DIGITS` digits are all malformed (:data:`LINE_STEPS` is the test);
3. ``missing:<field>``   a required field is absent, null, or (not a list) the empty string;
4. ``bad_type:<field>``  present but not of its type (:func:`id_text`, :func:`number_value`,
   :data:`ISO_8601`; a list field must be a JSON array whose items are id texts or null);
5. ``bad_value:<field>`` a number outside its domain (:data:`VALUE_RULES`);
6. ``event_time_out_of_range``  (ETL only, an interval rule) outside the partition hour's window;

then the interval-level ``duplicate_event_id`` (first kept). Unknown keys are ignored; of a
repeated key the last value counts.

**The text an id hashes from** (:func:`id_text`; the ETL reads the same text with ``from_json``):
a JSON string's characters, ``true``/``false``, an integer's decimal digits (``-0`` is ``0``).
Any other value (a number with a fraction or an exponent, ``NaN``, an object, an array) is a
``bad_type``: ``1.50`` and ``1.5`` would otherwise be two ids, or one, depending on the parser.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from components.raw_schema import RAW_FIELDS, RawField, fields_of

LINE_TOO_LONG = "line_too_long"
MALFORMED = "malformed_record"
OUT_OF_RANGE = "event_time_out_of_range"
DUPLICATE = "duplicate_event_id"


def missing(field: str) -> str:
    """Reason code: a required field is absent, null or empty."""
    return f"missing:{field}"


def bad_type(field: str) -> str:
    """Reason code: a field is present but not of its type."""
    return f"bad_type:{field}"


def bad_value(field: str) -> str:
    """Reason code: a number outside its field's domain."""
    return f"bad_value:{field}"


PRECEDENCE = (LINE_TOO_LONG, MALFORMED, "missing", "bad_type", "bad_value", OUT_OF_RANGE)
"""Row-level rules in the order they are applied (the module docstring)."""

MAX_LINE_CHARS = 1_000_000
"""Longest line (in characters) that is parsed; a record is ~700."""
MAX_DEPTH = 16
"""Deepest nesting of objects and arrays in a line (the record itself is depth 1, a list 2)."""
MAX_DIGITS = 100
"""Longest run of digits in a number token (Jackson refuses 1000, Python reads any)."""

ISO_8601 = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
"""Accepted event_time text: date, time to the minute at least, optional fraction and zone (none =
UTC). Checked before the engine's timestamp parser, which then decides validity (month 13...)."""

NUMBER_TEXT = (
    r"^[ \t]*([+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(?i:inf|infinity)|(?i:nan))"
    r'[ \t]*$|^"(NaN|Infinity|-Infinity)"$'
)
"""Text that a dense value or a label may hold: a decimal number (optionally signed, with spaces
or tabs around), ``inf``/``infinity``/``nan`` in any case, or a non-finite JSON number token as
Spark's ``from_json`` renders it into a string (``"NaN"`` with its quotes)."""

# The line rule, as steps that every engine runs in this order on the raw line (Java regex in
# Spark, ``re`` in Python, RE2 in pyarrow; the patterns mean the same in all). ``("remove", p)``
# deletes every match of ``p``; ``("refuse", p)`` makes the line malformed if ``p`` matches
# anywhere; ``("shape", p)`` makes it malformed unless ``p`` matches the whole remaining text.
_WS = " \\t\\r\\n"
LINE_STEPS: tuple[tuple[str, str], ...] = (
    ("remove", r"\\\\"),  # escaped backslashes, so that "\\ud800" is text, not an escape
    ("remove", r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"),  # pairs
    ("refuse", r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}"),  # a lone surrogate escape
    ("remove", r"(?s)\\."),  # every other escape
    ("remove", r'"[^"]*"'),  # strings (keys and values)
    ("refuse", f"[0-9]{{{MAX_DIGITS + 1}}}"),  # a number too long
    ("remove", r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|null|NaN|-?Infinity"),
    ("shape", rf"[{_WS}]*\{{[{{}}\[\],:{_WS}]*\}}[{_WS}]*"),  # one object, punctuation left
    ("remove", r"[^{}\[\]]"),  # the bracket skeleton, e.g. "{[][]}"
)
"""After these steps the text is the line's bracket skeleton; the line holds exactly one object iff
it is "{" + a balanced sequence of depth < :data:`MAX_DEPTH` + "}" (:data:`EMPTY_PAIR` removed
``MAX_DEPTH - 1`` times leaves nothing between the outer braces), and the JSON parser accepts it."""
EMPTY_PAIR = r"\{\}|\[\]"

RENDERED_NOT_TEXT = r'^(-?[0-9]+\.[0-9]+(E-?[0-9]+)?$|"(NaN|-?Infinity)"$|[\[{])'
"""What Spark's ``from_json`` makes of a value that is not an id text, read into a string: a
number with a fraction or exponent (Java's ``Double.toString``), a quoted non-finite number, JSON
of an object or array. A string can look the same, so the ETL asks a typed parse (a variant) only
for the rows whose id text matches this."""


@dataclass(frozen=True)
class ValueRule:
    """``bad_value:<field>`` when a present value breaks it."""

    field: str
    finite: bool
    min_value: float | None = None
    max_value: float | None = None
    allowed: tuple[float, ...] | None = None

    def ok(self, x: float) -> bool:
        """Whether the value ``x`` passes (the Spark and numpy compilers test the same)."""
        if self.allowed is not None:
            return x in self.allowed
        if self.finite and not math.isfinite(x):
            return False
        return not (
            (self.min_value is not None and x < self.min_value)
            or (self.max_value is not None and x > self.max_value)
        )


VALUE_RULES: tuple[ValueRule, ...] = tuple(
    ValueRule(f.name, True, f.min_value, f.max_value)
    if f.kind == "dense"
    else ValueRule(f.name, False, allowed=(0.0, 1.0))
    for f in fields_of("dense", "label")
)
"""Dense values: finite and within the raw schema's [min, max]; labels: 0 or 1."""

TEXT_KINDS = ("id", "categorical")
NUMBER_KINDS = ("dense", "label")

# ------------------------------------------------------------------------- compiled to Python

_LINE_STEPS = tuple((op, re.compile(p)) for op, p in LINE_STEPS)
_EMPTY_PAIR = re.compile(EMPTY_PAIR)
_NUMBER_TEXT = re.compile(NUMBER_TEXT)
_ISO_8601 = re.compile(ISO_8601)


class _Int(str):
    """An integer token's text (the JSON parser hands numbers over as text)."""


class _Float(str):
    """A number token with a fraction or an exponent, or ``NaN``/``Infinity``/``-Infinity``."""


def line_reason(line: str) -> str | None:
    """``line_too_long``, ``malformed_record`` or ``None`` by the shape of ``line`` alone (the
    JSON parser then checks the syntax of a line that passes)."""
    if len(line) > MAX_LINE_CHARS:
        return LINE_TOO_LONG
    text = line
    for op, pattern in _LINE_STEPS:
        if op == "remove":
            text = pattern.sub("", text)
        elif not (pattern.fullmatch(text) if op == "shape" else not pattern.search(text)):
            return MALFORMED
    inner = text[1:-1]
    for _ in range(MAX_DEPTH - 1):
        if not inner:
            break
        inner = _EMPTY_PAIR.sub("", inner)
    return MALFORMED if inner else None


def id_text(value: Any) -> tuple[str | None, bool]:
    """``(text, ok)``: the text an id or categorical value hashes from (module docstring)."""
    if value is None or (isinstance(value, str) and not isinstance(value, _Float | _Int)):
        return value, True
    if isinstance(value, bool):
        return ("true" if value else "false"), True
    if isinstance(value, _Int):
        return str(int(value)), True
    return None, False


def number_value(value: Any) -> tuple[float | None, bool]:
    """``(value, ok)`` of a dense value or label: a number token, or text of :data:`NUMBER_TEXT`."""
    if value is None:
        return None, True
    if isinstance(value, _Int | _Float):
        return float(value), True
    if isinstance(value, str) and _NUMBER_TEXT.search(value):
        return float(value.strip(' \t"')), True
    return None, False


def time_text(value: Any) -> tuple[str | None, bool]:
    """``(text, ok)`` of an event time: ISO-8601 text (the engine then parses it)."""
    if value is None or value == "":
        return value, True
    if isinstance(value, str) and not isinstance(value, _Float | _Int) and _ISO_8601.search(value):
        return value, True
    return None, False


def parse_object(line: str) -> dict | None:
    """The JSON object of a line that passed :func:`line_reason`, or ``None`` if the JSON parser
    refuses it. Numbers stay text (:class:`_Int`, :class:`_Float`)."""
    try:
        obj = json.loads(line, parse_int=_Int, parse_float=_Float, parse_constant=_Float)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def read_field(f: RawField, value: Any) -> tuple[Any, bool]:
    """``(canonical value, of its type)`` of field ``f``: id text, list of id texts, float, or
    event-time text; a value not of its type reads as ``None``."""
    if f.kind in TEXT_KINDS:
        return id_text(value)
    if f.kind in NUMBER_KINDS:
        if f.required and value == "":
            return None, True  # blank: missing, as for every required field
        return number_value(value)
    if f.kind == "time":
        return time_text(value)
    if value is None:
        return None, True
    if not isinstance(value, list):
        return None, False
    items = [id_text(v) for v in value]
    if not all(ok for _, ok in items):
        return None, False
    return [t for t, _ in items], True


def read_line(line: str) -> tuple[str | None, dict[str, Any], list[str]]:
    """``(line reason, canonical values, fields not of their type)`` of one non-blank JSONL line.

    The line reason is ``line_too_long`` or ``malformed_record`` (then no values), else ``None``.
    """
    reason = line_reason(line)
    obj = None if reason else parse_object(line)
    if obj is None:
        return reason or MALFORMED, {}, []
    values, wrong = {}, []
    for f in RAW_FIELDS:
        values[f.name], ok = read_field(f, obj.get(f.name))
        if not ok:
            wrong.append(f.name)
    return None, values, wrong
