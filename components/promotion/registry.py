"""The serving pointer of a model: which version is champion, promotion, rollback and history.

Standard library only. Per model, beside its versions (``trainer/exported/artifact.py``)::

    <models root>/<name>/
      v1/ v2/ v3/             immutable exports
      CHAMPION                {"version": "v3", "stack": ["v1", "v3"], "seq": 4, "last": {...}}
      HISTORY.jsonl           one record per promotion / rollback, append-only
      .lock                   flock: one promotion or rollback at a time

``CHAMPION`` is the source of truth and changes in ONE step: the new pointer is written to a
temporary file, fsynced, and ``os.replace``-d over the old one, so a reader sees the old pointer
or the new one, never a missing or partial file. It carries the *stack* of champions (a promotion
pushes, a rollback pops back to the previous champion) and the sequence number and record of
the last change. ``HISTORY.jsonl`` is appended after the swap; if a crash falls between the two,
the next promotion or rollback (and every reader, :func:`read_history`) restores the missing
record from the pointer, so the history always ends with the pointer's last change. If the append
fails (a full disk, a read-only file), the change stands, since the pointer holds its record: the
returned pointer says so in ``history_error`` and the next change writes the record.

A promotion can be decided under the lock: ``promote(..., gate=...)`` calls ``gate`` with the
champion pointer it holds locked, and swaps only if the gate says so, so the challenger is always
compared with the champion it replaces, never with one a concurrent promotion has replaced since.
Every change can also be guarded (compare-and-swap, under the lock): ``expect`` is the champion the
caller decided against (a version, or None for "no champion yet"); when the champion is another
one by then, the change is refused with :class:`ChampionChanged`. ``key`` names the change (an
Airflow run id, an interval and challenger); it is kept in the history record, and a change whose
key is recorded already is not made again: the call returns the pointer with ``replayed`` set to
that record. So a retried task never promotes or rolls back twice, even after a crash between
the swap and its reply.

Example: promote v1, promote v3, rollback -> champion v1 (stack [v1]); another rollback is refused
(no previous champion); ``rollback(expect="v3")`` at that point is refused (the champion is v1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer.durable import create_temp, fsync_dir
from trainer.exported.artifact import CHECKSUMS_FILE, VERSION_RE, check_name, locked

CHAMPION = "CHAMPION"
HISTORY = "HISTORY.jsonl"
POINTER_FORMAT = "metarec.champion"
ANY = "<any champion>"
"""``expect`` default: no compare-and-swap (version names are ``v<N>``, so this never matches)."""
Fault = Callable[[str], None]
"""Called at named points of a change (tests inject crashes there): ``pointer_written``,
``pointer_swapped``, ``history_appended``."""


@dataclass
class Pointer:
    """The content of ``CHAMPION``."""

    version: str
    stack: list[str]
    seq: int
    last: dict[str, Any]
    updated_at: str = ""
    format: str = POINTER_FORMAT
    previous: str | None = field(default=None)
    replayed: dict[str, Any] | None = field(default=None)
    """Set when the call changed nothing because its ``key`` was applied before: that record."""
    history_error: str | None = field(default=None)
    """Set when this call changed the pointer but could not append its record to the history
    (why); the record is kept in the pointer and written by the next change."""

    def to_json(self) -> str:
        d = {
            k: getattr(self, k) for k in ("format", "version", "stack", "seq", "last", "updated_at")
        }
        return json.dumps(d, indent=2, sort_keys=True) + "\n"


Gate = Callable[[Pointer | None], tuple[str, dict[str, Any]] | None]
"""Called under the lock with the champion pointer (None: no champion): the reason and details
to record for promoting, or None to keep the champion."""


class ChampionChanged(ValueError):
    """The champion is not the one the change expected (someone changed it in between)."""

    def __init__(self, name: str, expected: str | None, actual: str | None, action: str):
        self.expected, self.actual = expected, actual
        super().__init__(
            f"{action} of {name!r} refused: the champion is {actual or 'none'}, expected "
            f"{expected or 'none'} (it changed since it was read); check `metarec promote "
            f"--status` and retry with --expect {actual or 'none'} if the change still holds"
        )


class PointerNotWritten(ValueError):
    """The new pointer could not be written (full disk, permissions): the champion is unchanged.
    A ``ValueError`` so the command line reports it as one line (exit 2)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def model_dir(root: str | Path, name: str) -> Path:
    return Path(root) / check_name(name)


def read_champion(root: str | Path, name: str) -> Pointer | None:
    """The current champion pointer, or None when no version was ever promoted.

    Raises:
        ValueError: the pointer file is unreadable (it is only ever replaced whole, so this means
            it was edited by hand); the message says how to repair it.
    """
    path = model_dir(root, name) / CHAMPION
    try:
        d = json.loads(path.read_text())
        if d.get("format") != POINTER_FORMAT:
            raise ValueError(f"format {d.get('format')!r}")
        p = Pointer(d["version"], list(d["stack"]), int(d["seq"]), dict(d["last"]), d["updated_at"])
        if not all(isinstance(v, str) and VERSION_RE.match(v) for v in [p.version, *p.stack]):
            raise ValueError(f"versions {[p.version, *p.stack]!r} are not all v<N> names")
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is not a valid champion pointer ({e}); restore it from {HISTORY} (its last "
            "record names the champion) or promote a version again"
        ) from None
    p.previous = p.stack[-2] if len(p.stack) > 1 else None
    return p


def _history_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Complete records of ``HISTORY.jsonl`` and the byte length they span (a line cut by a
    crash at the end is not a record)."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    records, end = [], 0
    for line in data.split(b"\n")[:-1]:  # the last element is "" or an unterminated line
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        end += len(line) + 1
    return records, end


def read_history(root: str | Path, name: str) -> list[dict[str, Any]]:
    """Every promotion and rollback, oldest first (including a last change whose record a crash
    kept out of the file: it is taken from the pointer)."""
    mdir = model_dir(root, name)
    records, _ = _history_lines(mdir / HISTORY)
    pointer = read_champion(root, name)
    if pointer is not None and (not records or records[-1]["seq"] < pointer.seq):
        records.append(pointer.last)
    return records


def _append(path: Path, record: dict[str, Any]) -> None:
    """Append one record, first cutting a partial last line left by a crash."""
    _, end = _history_lines(path)
    with open(path, "ab") as f:
        f.truncate(end)
        f.write((json.dumps(record, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def _reconcile(mdir: Path, pointer: Pointer | None) -> None:
    """Write the pointer's last record to the history if a crash kept it out; drop temp files."""
    for tmp in mdir.glob(f"{CHAMPION}.tmp-*"):
        tmp.unlink(missing_ok=True)
    if pointer is None:
        return
    records, _ = _history_lines(mdir / HISTORY)
    if not records or records[-1]["seq"] < pointer.seq:
        _append(mdir / HISTORY, pointer.last)


@dataclass
class _Change:
    stack: list[str]
    reason: str
    details: dict[str, Any]


def _change(root: str | Path, name: str, action: str,
            choose: Callable[[Pointer | None], _Change | None], fault: Fault | None,
            expect: str | None, key: str | None) -> Pointer | None:  # fmt: skip
    """Under the lock: replay a recorded ``key``, check ``expect``, ask ``choose`` for the new
    stack (None: nothing to change; the pointer is returned as it is), swap and record."""
    mdir = model_dir(root, name)
    fault = fault or (lambda stage: None)
    with locked(mdir):
        old = read_champion(root, name)
        _reconcile(mdir, old)
        if key is not None:
            records, _ = _history_lines(mdir / HISTORY)
            done = [r for r in records if r.get("key") == key and r.get("action") == action]
            if done:  # a retry of a change already made: never make it twice
                assert old is not None, "a recorded change implies a pointer"
                old.replayed = done[-1]
                return old
        current = old.version if old else None
        if expect != ANY and current != expect:
            raise ChampionChanged(name, expect, current, action)
        change = choose(old)
        if change is None or (old is not None and change.stack == old.stack):
            return old  # nothing to change (the gate kept the champion, an idempotent rerun)
        stack = change.stack
        seq = (old.seq if old else 0) + 1
        record = {"seq": seq, "time": _now(), "action": action, "from": current, "to": stack[-1],
                  "reason": change.reason, "details": change.details}  # fmt: skip
        if key is not None:
            record["key"] = key
        new = Pointer(stack[-1], stack, seq, record, record["time"])
        tmp = None
        try:
            tmp, f = create_temp(mdir / CHAMPION, prefix="")
            with f:
                f.write(new.to_json().encode())
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk, a read-only folder: nothing changed
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise PointerNotWritten(
                f"{action} of {name!r} failed: cannot write the champion pointer {mdir / CHAMPION} "
                f"({e.strerror or e}); the champion is unchanged ({current or 'none'})"
            ) from e
        fault("pointer_written")
        os.replace(tmp, mdir / CHAMPION)  # the one step that changes the champion
        fsync_dir(mdir)
        fault("pointer_swapped")
        try:
            _append(mdir / HISTORY, record)
        except OSError as e:  # the change stands: the pointer holds its record
            new.history_error = f"cannot append to {mdir / HISTORY}: {e.strerror or e}"
        fault("history_appended")
    new.previous = stack[-2] if len(stack) > 1 else None
    return new


def promote(root: str | Path, name: str, version: str, *, expect: str | None = ANY,
            key: str | None = None, reason: str = "", details: dict[str, Any] | None = None,
            gate: Gate | None = None, fault: Fault | None = None) -> Pointer | None:  # fmt: skip
    """Make ``version`` the champion (pushing it on the stack). Promoting the current champion
    again changes nothing and returns the pointer (idempotent reruns); so does a promotion whose
    ``key`` is recorded already (``replayed`` set).

    With ``gate``, the decision is taken under the lock: ``gate(champion pointer)`` returns the
    ``(reason, details)`` to record, or None to keep the champion (the pointer is returned
    unchanged, None when there is no champion); ``reason`` and ``details`` are then unused.

    Raises:
        FileNotFoundError: the version does not exist or is incomplete (no ``CHECKSUMS``).
        ChampionChanged: the champion is not ``expect``.
    """
    mdir = model_dir(root, name)

    def choose(old: Pointer | None) -> _Change | None:
        verdict = gate(old) if gate is not None else (reason, details or {})
        if verdict is None or (old is not None and old.version == version):
            return None
        if not (mdir / version / CHECKSUMS_FILE).is_file():
            raise FileNotFoundError(
                f"{mdir / version} is not a complete export (no {CHECKSUMS_FILE}); export it first"
            )
        return _Change([*(old.stack if old else []), version], *verdict)

    return _change(root, name, "promote", choose, fault, expect, key)


def rollback(root: str | Path, name: str, *, expect: str | None = ANY, key: str | None = None,
             reason: str = "", fault: Fault | None = None) -> Pointer:  # fmt: skip
    """Make the previous champion the champion again (pop the stack); a rollback whose ``key`` is
    recorded already changes nothing (``replayed`` set).

    Raises:
        ChampionChanged: the champion is not ``expect``.
        ValueError: nothing was promoted, or the champion has no predecessor.
    """

    def choose(old: Pointer | None) -> _Change:
        if old is None or len(old.stack) < 2:
            raise ValueError(
                f"model {name!r} has no previous champion to roll back to "
                f"(champion: {old.version if old else 'none'}); promote another version instead"
            )
        return _Change(old.stack[:-1], reason, {})

    pointer = _change(root, name, "rollback", choose, fault, expect, key)
    assert pointer is not None, "a rollback changes an existing pointer or raises"
    return pointer
