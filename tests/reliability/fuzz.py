"""Shared pieces of the fuzz tests: the example budget, a case counter, and generators of
malformed raw-log lines.

Budget: every fuzz test takes ``examples(n)``: ``n`` by default (tuned so that the whole fuzz suite
runs in well under a minute on 2 cores), ``METAREC_FUZZ_EXAMPLES`` to raise it for a long run::

    METAREC_FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/reliability -k fuzz -s

``CASES`` counts what ran (examples, and lines or files inside them); the fuzz modules print it at
the end (``-s``), and ``--hypothesis-show-statistics`` shows hypothesis's own figures.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from components.raw_schema import RAW_FIELDS
from tests.components.etl.rawdata import record, ts

CASES: Counter = Counter()
TEXT = st.characters(exclude_categories=("Cs",))
"""Any character a UTF-8 file can hold (lone surrogates cannot be written, so never read)."""
HOUR = 5  # partition hour of the generated lines (2026-11-01T05)


def examples(default: int, shrink: bool = True) -> settings:
    """Hypothesis settings with ``default`` examples (or ``METAREC_FUZZ_EXAMPLES``); ``shrink``
    False for costly examples (a Spark job each): the failing example is reported as found."""
    n = int(os.environ.get("METAREC_FUZZ_EXAMPLES", default))
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=n,
        phases=phases,
        deadline=None,  # 2 shared cores: timings vary, a deadline would be flaky
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
        database=None,  # no .hypothesis/ folder in the repository
    )


# JSON values of every kind, including the ones parsers trip on.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(TEXT, max_size=12),
    st.sampled_from(["", " ", "NaN", "nan", "Infinity", "-inf", "1e309", "0x10", "1", "0",
                     "1.0", "true", "yes", "2026-11-01T05:10:00Z", "2026-13-01T05:00:00Z",
                     "2026-11-01 05:10", "2026-11-01T05:10:00+01:00", "\u00e9\u4e2d", "\t", "\u00a0"]),
)  # fmt: skip
JSON_VALUES = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=4), inner,
                                                                max_size=2),
    max_leaves=5,
)  # fmt: skip
FIELD_NAMES = [f.name for f in RAW_FIELDS]


@st.composite
def record_lines(draw: st.DrawFn) -> str:
    """One JSONL line: a valid record with some fields replaced, dropped or added, sometimes cut
    short, or plain garbage."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "truncated", "garbage", "valid",
                                 "blank"]))  # fmt: skip
    if kind == "blank":
        return draw(st.sampled_from(["", "  ", "\t", " \t ", "\x0b", "\u00a0", "\u3000"]))
    if kind == "garbage":
        return draw(st.text(TEXT, max_size=40).map(lambda s: s.replace("\n", " ")))
    i = draw(st.integers(min_value=0, max_value=10_000))
    r = record(i, hour=HOUR, second=draw(st.integers(min_value=0, max_value=3599)))
    r["event_time"] = draw(st.sampled_from([r["event_time"], ts(HOUR - 2), ts(HOUR + 1),
                                            ts(HOUR, 10.5)]))  # fmt: skip
    if kind != "valid":
        for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=4, unique=True)):
            if draw(st.booleans()):
                r[name] = draw(JSON_VALUES)
            else:
                r.pop(name)
        if draw(st.booleans()):
            r[draw(st.text(TEXT, max_size=6))] = draw(JSON_VALUES)
    line = json.dumps(r, ensure_ascii=draw(st.booleans()))  # NaN/Infinity as JavaScript writes
    if kind == "truncated":
        line = line[: draw(st.integers(min_value=1, max_value=max(1, len(line) - 1)))]
    return line


def report(title: str) -> None:
    """Print the cases counted under keys starting with ``title``."""
    lines = [f"  {k}: {v:,}" for k, v in sorted(CASES.items()) if k.startswith(title)]
    print(f"\n[fuzz] {title}\n" + "\n".join(lines))
