"""Where every input row goes: written, or rejected with a reason code (nothing is lost silently).

Per input file: ``rows_in = rows_written + rows_rejected``. A rejected row is counted under its
FIRST failing rule (rules run in the order each adapter documents) and logged, with its file, line
number and content, to ``<out>/_rejected.jsonl`` (the underscore makes readers of the raw layout
skip it). Reason codes:

    wrong_field_count   the line does not have the format's number of fields
    blank_line          an empty line
    bad_encoding        a line that is not valid UTF-8
    missing:<column>    a required value is empty
    bad_value:<column>  a required value does not parse or is out of range (e.g. rating 7)
    unknown_<entity>    the row references an entity its lookup table lacks (e.g. unknown_item)

An invalid OPTIONAL value (a price that is not a number, say) does not cost the row: the value
becomes null and is counted under ``values_nulled`` instead.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.adapters.block import Block

if TYPE_CHECKING:
    import pyarrow.fs as pafs


class RejectLog:
    """Appends one JSON line per rejected row to ``_rejected.jsonl`` (opened on first use)."""

    def __init__(self, fs: pafs.FileSystem | None, path: str | None) -> None:
        self._fs, self._path, self._stream = fs, path, None

    def write(self, label: str, line: int, reason: str, record: Any) -> None:
        if self._fs is None:
            return
        if self._stream is None:
            self._stream = self._fs.open_output_stream(self._path)
        entry = {"file": label, "line": int(line), "reason": reason, "record": record}
        self._stream.write((json.dumps(entry, ensure_ascii=False) + "\n").encode())

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


@dataclass
class Accounting:
    """Row counts per input file and rejection reason; see the module docstring."""

    log: RejectLog = field(default_factory=lambda: RejectLog(None, None))
    rows_in: Counter = field(default_factory=Counter)
    """label -> rows read (every line after the header)."""
    rows_written: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    """(label, reason) -> rows."""
    values_nulled: Counter = field(default_factory=Counter)
    """column -> invalid optional values replaced by null."""
    notes: Counter = field(default_factory=Counter)
    """Other counts worth reporting (e.g. rows whose user has no profile)."""
    side_tables: dict[str, Any] = field(default_factory=dict)
    """Accounting of the lookup tables (users, items, ads), as ``Accounting.as_dict()['files']``."""

    def reject_one(self, label: str, line: int, reason: str, record: Any) -> None:
        self.rejected[label, reason] += 1
        self.log.write(label, line, reason, record)

    def drop(self, label: str, block: Block, mask: np.ndarray, reason: str) -> Block:
        """Reject the rows of ``block`` where ``mask`` is true; return the others."""
        checks = RowChecks(block.num_rows)
        checks.require(~mask, reason)
        return self.apply(label, block, checks)

    def apply(self, label: str, block: Block, checks: RowChecks) -> Block:
        """Reject the rows that failed a check (under their first failing rule); keep the rest."""
        failed = checks.failed
        if not failed.any():
            return block
        idx = np.flatnonzero(failed)
        records = pa.table({k: v.take(pa.array(idx)) for k, v in block.columns.items()}).to_pylist()
        for i, record in zip(idx, records, strict=True):
            reason = checks.reason(int(i))
            self.reject_one(label, int(block.lines[i]), reason, record)
        keep = pa.array(~failed)
        return Block(
            {k: pc.filter(v, keep) for k, v in block.columns.items()},
            block.lines[~failed],
        )

    # -- totals ---------------------------------------------------------------------------
    def total_in(self) -> int:
        return sum(self.rows_in.values())

    def total_written(self) -> int:
        return sum(self.rows_written.values())

    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def by_reason(self) -> dict[str, int]:
        out: Counter = Counter()
        for (_, reason), n in self.rejected.items():
            out[reason] += n
        return dict(sorted(out.items()))

    def check_balanced(self) -> None:
        """Internal invariant: per file, rows in == written + rejected."""
        for label, n_in in self.rows_in.items():
            n_rej = sum(n for (lab, _), n in self.rejected.items() if lab == label)
            assert n_in == self.rows_written[label] + n_rej, (
                f"{label}: {n_in} rows in != {self.rows_written[label]} written + {n_rej} rejected"
            )

    def as_dict(self) -> dict[str, Any]:
        """The accounting section of ``_adapter.json``."""
        files = {}
        for label in self.rows_in:
            reasons = {r: n for (lab, r), n in sorted(self.rejected.items()) if lab == label}
            files[label] = {
                "rows_in": self.rows_in[label],
                "rows_written": self.rows_written[label],
                "rows_rejected": sum(reasons.values()),
                "rejected_by_reason": reasons,
            }
        return {
            "rows_in": self.total_in(),
            "rows_written": self.total_written(),
            "rows_rejected": self.total_rejected(),
            "rejected_by_reason": self.by_reason(),
            "values_nulled": dict(sorted(self.values_nulled.items())),
            "notes": dict(sorted(self.notes.items())),
            "files": files,
            "side_tables": self.side_tables,
        }


class RowChecks:
    """The first failing rule of each row of a block, rules applied in call order.

    Example:
        checks = RowChecks(n)
        checks.require(is_int(cols["user"]), "bad_value:user")
        checks.require(in_set(cols["rating"], "12345"), "bad_value:rating")
        block = acct.apply("u.data", block, checks)
    """

    def __init__(self, num_rows: int) -> None:
        self._first = np.full(num_rows, -1, dtype=np.int32)
        self._reasons: list[str] = []

    def require(self, ok: np.ndarray | pa.Array | pa.ChunkedArray, reason: str) -> None:
        """Rows where ``ok`` is false (or null) fail with ``reason`` unless they failed before."""
        if not isinstance(ok, np.ndarray):
            ok = np.asarray(pc.fill_null(ok, False).to_numpy(zero_copy_only=False), dtype=bool)
        self._first[(self._first < 0) & ~ok] = len(self._reasons)
        self._reasons.append(reason)

    @property
    def failed(self) -> np.ndarray:
        return self._first >= 0

    def reason(self, row: int) -> str:
        return self._reasons[self._first[row]]
