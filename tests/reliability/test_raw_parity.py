"""The ETL and the scorer read raw JSONL alike (issue 18 items 3-6): same lines, same verdicts,
same reasons, same canonical values, on every hostile case found so far and on arbitrary bytes.

Both sides run :mod:`components.raw_records`; what these tests check is everything around it:
the ETL's file reading inside Spark (``rows.read_jsonl``: ``mapInArrow``, Arrow -> Spark types)
against the scorer's (``score.events.read_events``), line splitting included (``\\r``, NEL), and
that every hostile line gets its own reason rather than being dropped, kept, or crashing a run.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components import raw_records as rr
from components.etl.rows import DATA_COLUMNS
from tests.components.etl.rawdata import record, ts
from tests.reliability.fuzz import CASES, examples, report
from trainer.data.hashing import feature_id

HOUR = 5
REL = f"dt=2026-11-01/hr={HOUR:02d}"


def good(i: int, **over) -> dict:
    return {**record(i, hour=HOUR, second=i), **over}


def line(i: int, **over) -> bytes:
    return json.dumps(good(i, **over)).encode()


def _deep(n: int) -> bytes:
    return line(0)[:-1] + b', "x": ' + b"[" * n + b"]" * n + b"}"


HOSTILE: list[tuple[str, bytes, str | None]] = [
    ("ok", line(1), None),
    ("two objects", line(2) + line(3), rr.MULTIPLE_OBJECTS),
    ("two objects, a space", line(2) + b" " + line(3), rr.MULTIPLE_OBJECTS),
    ("trailing garbage", line(4) + b" garbage", rr.TRAILING_DATA),
    ("NUL after the object", line(5) + b"\x00", rr.TRAILING_DATA),
    ("single quotes", b"{'event_id': 'e-1', 'click': 1}", rr.MALFORMED),
    ("invalid UTF-8", line(6, region="r-\udcff").replace(b"\\udcff", b"\xff"), rr.INVALID_UTF8),
    ("lone surrogate id", line(7, event_id="e-\ud800"), rr.LONE_SURROGATE),
    ("surrogate pair", line(8, region="r-\U0001f600"), None),
    ("escaped backslash u", line(9, region="\\ud800"), None),
    ("10k-deep nesting", _deep(10_000), rr.TOO_DEEP),
    ("nesting at the limit", _deep(rr.MAX_DEPTH - 1), None),
    ("1000-digit number", line(10)[:-1] + b', "bid_price": ' + b"1" * 1000 + b"}", rr.NUMBER_TOO_LONG),
    ("NaN id", line(11, user_id=math.nan), "bad_value:user_id"),
    ("NaN dense", line(12, bid_price=math.nan), "bad_value:bid_price"),
    ("Infinity dense", line(13, item_price=math.inf), "bad_value:item_price"),
    ("+Infinity", line(14)[:-1] + b', "bid_price": +Infinity}', rr.MALFORMED),
    ('"+Infinity" text', line(15, bid_price="+Infinity"), "bad_value:bid_price"),
    ("float id 1.50", line(16)[:-1] + b', "user_id": 1.50}', None),
    ("float id 1.5", line(17, user_id=1.5), None),
    ("int id", line(18, user_id=12345678901234567890), None),
    ("NEL inside a value", line(19, region="r\x85x"), None),
    ("NEL alone", "\x85".encode(), rr.MALFORMED),
    ("U+2028 alone", "\u2028".encode(), rr.MALFORMED),
    ("form feed alone", b"\x0c", rr.MALFORMED),
    ("overlong field", line(20, event_id="e" * (rr.MAX_FIELD_CHARS + 1)), "field_too_long:event_id"),
    ("overlong list", line(21, ad_tags=["t"] * (rr.MAX_LIST_ITEMS + 1)), "field_too_long:ad_tags"),
    ("overlong line", line(22, region="r" * rr.MAX_LINE_BYTES), rr.LINE_TOO_LONG),
    ("empty click", line(23, click=""), "missing:click"),
    ("bad time", line(24, event_time="2026-11-01T05:00:00+2500"), "bad_type:event_time"),
    ("arabic digits", line(25, event_time=ts(HOUR).replace("0", "\u0660")), "bad_type:event_time"),
    ("order: type before value", line(26, bid_price=-1.0, click="yes"), "bad_type:click"),
]  # fmt: skip
TERMINATORS = [b"\n", b"\r\n", b"\r"]


def _file_bytes(lines: list[bytes]) -> bytes:
    """The lines with every kind of terminator, a blank line between each two."""
    out = []
    for i, text in enumerate(lines):
        out += [text, TERMINATORS[i % 3], b" \t", TERMINATORS[(i + 1) % 3]]
    return b"".join(out)


def _norm(v):
    return "NaN" if isinstance(v, float) and v != v else v


def scorer_rows(root) -> list[tuple]:
    """``(file, values..., reason, raw line if rejected)`` of every row, in order, read by the
    scorer."""
    from components.score.encode import validate
    from components.score.events import read_events

    out = []
    for batch in read_events(str(root), batch_rows=7):
        reasons = validate(batch.table, labels_required=True)
        cols = [batch.table.column(c).to_pylist() for c in DATA_COLUMNS]
        for i in range(batch.table.num_rows):
            name = batch.source.rsplit("/", 1)[-1]
            values = tuple(_norm(c[i]) for c in cols)
            out.append((name, *values, reasons[i], batch.raw[i] if reasons[i] else None))
    return out


def etl_rows(spark, root, files: list[str]) -> tuple[list[tuple], int]:
    """The same from the ETL's reader; and the blank lines it counted."""
    from components.etl import rows

    df = rows.read_jsonl(spark, str(root), files)
    got = df.select("_file", *DATA_COLUMNS, "_reason", "_raw", "_blank").collect()
    # the raw line of a rejected row (a good row's line is not carried: transform.compact)
    kept = [(r[0], *(_norm(v) for v in r[1:-3]), r[-3], r[-2] if r[-3] else None)
            for r in got if not r[-1]]  # fmt: skip
    return kept, sum(1 for r in got if r[-1])


@pytest.mark.spark
def test_hostile_lines_same_verdict_reason_and_values(spark, tmp_path) -> None:
    folder = tmp_path / REL
    folder.mkdir(parents=True)
    (folder / "part-00000.jsonl").write_bytes(_file_bytes([text for _, text, _ in HOSTILE]))
    with gzip.open(folder / "part-00001.jsonl.gz", "wb") as f:  # the .gz path reads the same
        f.write(_file_bytes([text for _, text, _ in HOSTILE]))
    scorer = scorer_rows(tmp_path)
    etl, blank = etl_rows(
        spark, tmp_path, [f"{REL}/part-00000.jsonl", f"{REL}/part-00001.jsonl.gz"]
    )
    assert blank == 2 * len(HOSTILE)
    assert len(etl) == len(scorer) == 2 * len(HOSTILE)  # one row per line, none dropped
    assert etl == scorer  # same order, values, reasons and raw lines
    for (name, _, want), row in zip(HOSTILE, scorer, strict=False):
        assert row[-2] == want, (name, row[-2])
    by_name = {name: row for (name, _, _), row in zip(HOSTILE, scorer, strict=False)}
    user = DATA_COLUMNS.index("user_id") + 1
    assert by_name["float id 1.50"][user] == by_name["float id 1.5"][user] == "1.5"
    assert by_name["int id"][user] == "12345678901234567890"
    assert feature_id("user_id", "1.5", 1000) == feature_id(
        "user_id", by_name["float id 1.50"][user], 1000
    )
    overlong = by_name["overlong line"][-1]
    assert len(overlong) < rr.RAW_PREVIEW_BYTES + 100 and overlong.endswith("[line truncated]")
    assert by_name["invalid UTF-8"][-1].count("\\xff") == 1  # the quarantine shows the bad byte
    CASES["parity: hostile lines"] += len(HOSTILE)


@pytest.mark.spark
def test_a_50mb_line_is_quarantined_not_fatal(spark, tmp_path) -> None:
    """Issue 18 item 4: the ETL's reader cuts the line while reading (the JVM never holds it)."""
    folder = tmp_path / REL
    folder.mkdir(parents=True)
    with open(folder / "part-00000.jsonl", "wb") as f:
        f.write(line(1) + b"\n")
        f.write(line(2)[:-1] + b', "x": "' + b"y" * (50 << 20) + b'"}\n')
        f.write(line(3) + b"\n")
    etl, _ = etl_rows(spark, tmp_path, [f"{REL}/part-00000.jsonl"])
    assert [r[-2] for r in etl] == [None, rr.LINE_TOO_LONG, None]
    assert len(etl[1][-1]) < rr.RAW_PREVIEW_BYTES + 100
    assert [r[-2] for r in scorer_rows(tmp_path)] == [None, rr.LINE_TOO_LONG, None]


@pytest.mark.slow
@pytest.mark.spark
def test_the_etl_finishes_with_a_50mb_line_and_every_hostile_line(spark, tmp_path) -> None:
    """The whole ETL on an interval holding the hostile lines and a 50 MB line: it finishes,
    every line is kept or quarantined with its reason (rows read = kept + quarantined)."""
    import pyarrow.parquet as pq

    from components.etl import run_etl
    from tests.components.etl import rawdata
    from tests.components.etl.test_job import make_config

    rawdata.hours_of(tmp_path / "raw", range(3), rows_per_hour=40)
    with open(rawdata.part_dir(tmp_path / "raw", 1) / "part-00001.jsonl", "wb") as f:
        f.write(_file_bytes([text for _, text, _ in HOSTILE]))
        f.write(line(2)[:-1] + b', "x": "' + b"y" * (50 << 20) + b'"}\n')
    result = run_etl(make_config(tmp_path / "raw", tmp_path / "out"), spark)
    assert result.rows_read == 3 * 40 + len(HOSTILE) + 1
    assert result.rows_read == result.rows_kept + result.rows_quarantined
    for _, _, reason in HOSTILE:
        if reason is not None:
            assert result.reasons.get(reason, 0) >= 1, (reason, result.reasons)
    assert result.reasons[rr.LINE_TOO_LONG] == 2  # the 1 MiB one and the 50 MB one
    q = pq.read_table(Path(result.output) / "_quarantine").to_pylist()
    cut = [len(r["raw"]) for r in q if r["reason"] == rr.LINE_TOO_LONG]
    assert len(cut) == 2 and max(cut) < rr.RAW_PREVIEW_BYTES + 100  # the quarantine keeps a preview


@pytest.mark.spark
def test_the_etl_fails_on_a_truncated_gz_naming_it(spark, tmp_path) -> None:
    """The ETL fails (as on a corrupt Parquet file: the rest of the file cannot be counted, and a
    rerun after the repair is idempotent) with a message naming the file."""
    folder = tmp_path / REL
    folder.mkdir(parents=True)
    whole = gzip.compress(b"".join(line(i) + b"\n" for i in range(20_000)), compresslevel=1)
    (folder / "part-00000.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(Exception, match=r"part-00000\.jsonl\.gz: unreadable from line \d+ on"):
        etl_rows(spark, tmp_path, [f"{REL}/part-00000.jsonl.gz"])


def test_damaged_files_are_named_and_the_scorer_goes_on(tmp_path, caplog) -> None:
    """Issue 18 item 5: a truncated .jsonl.gz and a damaged Parquet file each become one
    ``damaged_file`` row after the rows read before the damage; the next file is read."""
    from components.score.events import read_events
    from tests.components.etl import rawdata

    folder = tmp_path / REL
    folder.mkdir(parents=True)
    whole = gzip.compress(b"".join(line(i) + b"\n" for i in range(20_000)), compresslevel=1)
    (folder / "part-00000.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "part-00001.jsonl.gz").write_bytes(gzip.compress(line(9999) + b"\n"))
    rows = [(b.source, r) for b in read_events(str(tmp_path), 500)
            for r in b.table.column("_reason").to_pylist()]  # fmt: skip
    damaged = [(s, r) for s, r in rows if r == rr.DAMAGED_FILE]
    assert damaged == [(f"{REL}/part-00000.jsonl.gz", rr.DAMAGED_FILE)]
    assert rows[-2:] == [damaged[0], (f"{REL}/part-00001.jsonl.gz", None)]
    assert 0 < len(rows) - 2 < 20_000 and all(r is None for _, r in rows[:-2])
    assert "part-00000.jsonl.gz" in caplog.text

    pq_root = tmp_path / "pq"
    path = rawdata.write_parquet(pq_root, HOUR, [good(i) for i in range(50)])
    data = path.read_bytes()
    path.write_bytes(data[:4] + b"\x00" * (len(data) // 2 - 4) + data[len(data) // 2 :])
    got = [r for b in read_events(str(pq_root), 10) for r in b.table.column("_reason").to_pylist()]
    assert got[-1] == rr.DAMAGED_FILE and all(r is None for r in got[:-1])


# ------------------------------------------------------------------------- arbitrary bytes
BYTES = st.binary(max_size=64) | st.lists(
    st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b"\\u", b"d800", b":", b",", b"1",
                     b"e9", b".", b"-", b"NaN", b"\r", b"\n", b"\x85", b"\xc2", b"\x00", b" ",
                     b'"event_id"', b'"click"', b"null", b"true", line(1)]),
    max_size=12,
).map(b"".join)  # fmt: skip
ALLOWED = set(rr.LINE_REASONS) | {rr.DAMAGED_FILE}


def _check_python(data: bytes) -> None:
    import io
    import re

    lines = list(rr.iter_lines(io.BytesIO(data)))
    reference = re.split(rb"\r\n|\r|\n", data)  # Spark's text rule, written another way
    if reference[-1] == b"":
        reference.pop()  # a final terminator ends the last line, it does not start one
    assert [x.data for x in lines] == reference
    assert [x.number for x in lines] == list(range(1, len(lines) + 1))
    for x in lines:
        if not x.blank:
            values, reason, unlabelled = rr.parse_record(x)
            assert len(values) == len(DATA_COLUMNS)
            assert reason is None or reason in ALLOWED or reason.split(":")[0] in rr.FIELD_RULES
            assert (reason is None) == (unlabelled is None) or reason == "missing:click"


@examples(500)
@given(data=BYTES)
def test_python_parser_total_on_arbitrary_bytes(data: bytes) -> None:
    """Never an exception; every line one verdict from the documented codes."""
    _check_python(data)
    CASES["parity: python byte strings"] += 1


@pytest.mark.slow
@examples(10_000)
@given(data=BYTES)
def test_python_parser_total_on_arbitrary_bytes_full(data: bytes) -> None:
    _check_python(data)
    CASES["parity: python byte strings (slow)"] += 1


def _spark_parity(spark, tmp_path_factory, strings: list[bytes], per_file: int) -> None:
    """Byte strings, ``per_file`` to a file (joined by ``\n``), through both readers."""
    root = tmp_path_factory.mktemp("fuzz-bytes")
    folder = root / REL
    folder.mkdir(parents=True)
    names = []
    for i in range(0, len(strings), per_file):
        name = f"part-{i:05d}.jsonl"
        (folder / name).write_bytes(b"\n".join(strings[i : i + per_file]))
        names.append(f"{REL}/{name}")
    etl, _ = etl_rows(spark, root, names)
    assert etl == scorer_rows(root)
    CASES["parity: spark byte strings"] += len(strings)
    CASES["parity: spark rows"] += len(etl)


@pytest.mark.spark
@examples(2, shrink=False)
@given(strings=st.lists(BYTES, min_size=200, max_size=200))
def test_etl_and_scorer_agree_on_arbitrary_bytes(spark, tmp_path_factory, strings) -> None:
    _spark_parity(spark, tmp_path_factory, strings, per_file=50)


@pytest.mark.slow
@pytest.mark.spark
@examples(50, shrink=False)
@given(strings=st.lists(BYTES, min_size=200, max_size=200))  # longer lists come out mostly empty
def test_etl_and_scorer_agree_on_arbitrary_bytes_full(spark, tmp_path_factory, strings) -> None:
    _spark_parity(spark, tmp_path_factory, strings, per_file=50)


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    report("parity")
