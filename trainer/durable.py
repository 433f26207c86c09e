"""Durable file writes and content checksums: the ONE way metarec writes a file that must never be
seen half-written (checkpoints, exports, manifests, records, reports, JSON outputs).

Standard library only: the export and promotion code that DAG files reach imports this without
pulling in torch.

``write_atomic(path, data)`` is the only atomic write: a temporary file in the same directory, its
bytes flushed and fsynced, renamed over ``path`` (``os.replace``: readers see the old file or the new
one, never a mix), then the directory fsynced so that the rename itself survives a power loss.
``write_json_atomic`` is the same for strict JSON (NaN/inf become ``null``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk (no rename: for files inside a directory
    that is itself published atomically, such as a checkpoint's or an export's temp directory)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path | str) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
"""How ``write_atomic`` opens its temp file: a new file only, never an existing one nor a link."""


def create_temp(path: Path, prefix: str = ".") -> tuple[Path, BinaryIO]:
    """A new temp file ``<prefix><name>.tmp-<pid>-<random>`` beside ``path``, open for binary
    writing (``TEMP_FLAGS``: never an existing file nor a link), for a writer that streams into it
    before renaming it over ``path``."""
    tmp = path.with_name(f"{prefix}{path.name}.tmp-{os.getpid()}-{secrets.token_hex(8)}")
    return tmp, os.fdopen(os.open(tmp, TEMP_FLAGS, 0o644), "wb")


def write_atomic(path: Path | str, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (``str`` is written as UTF-8) atomically and durably; creates
    the parent directory. A crash leaves the old file or the new one, and at most a hidden
    ``.<name>.tmp-<pid>-<random>`` beside it, never a partial ``path``.

    Nothing is written through a planted symlink: the temp file has an unpredictable name and is
    created new (``O_EXCL | O_NOFOLLOW``: an existing file or link there fails the open), and the
    rename replaces a link at ``path`` itself, not the file it points to."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, f = create_temp(path)
    try:
        with f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def json_text(data: Any) -> str:
    """``data`` as indented, key-sorted strict JSON text with a final newline (NaN/inf -> null;
    other values JSON cannot hold, such as paths or datetimes, as their ``str``)."""
    return json.dumps(jsonable(data), indent=2, sort_keys=True, allow_nan=False, default=str) + "\n"


def write_json_atomic(path: Path | str, data: Any) -> None:
    """``write_atomic`` of ``json_text(data)``."""
    write_atomic(path, json_text(data))
