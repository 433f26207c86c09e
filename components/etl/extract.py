"""Extract: find the interval's hourly partitions, check them, and read them as a DataFrame.

No business logic lives here: it lists files through ``pyarrow.fs`` (so ``s3://``, ``gs://``,
``hdfs://`` work like local paths), refuses what cannot be read with a clear message, and hands
Spark an explicit file list. Parsing and validation are in :mod:`components.etl.rows`.

What it checks, before Spark reads anything:

- every hour of ``[start, end)`` has LANDED: its ``dt=YYYY-MM-DD/hr=HH`` folder holds a data file
  or an explicit ``_SUCCESS`` marker (an hour without traffic). An absent or empty folder is a
  missing hour: an error listing them, unless ``allow_missing`` (then they are recorded in the
  manifest). The sensor (``components.steps.data.check_raw``) uses this same rule;
- file formats: ``auto`` takes the format from the names (``.jsonl``, ``.jsonl.gz``, ``.parquet``)
  and refuses a mix; files whose names start with ``_`` or ``.`` (``_generation.json``, ``.crc``)
  are skipped; other unknown names are listed in the manifest as ignored;
- Parquet footers, with pyarrow: a corrupt or unreadable file (truncated, not Parquet, a column of
  the wrong type) FAILS the run with an error naming every bad file. We fail rather than quarantine
  the file because its rows cannot be counted: quarantining it would lose rows silently, while
  failing lets the operator repair or remove the file and rerun the (idempotent) interval.
- an interval with no rows at all (no data files, or only empty ones) is an error;
- every data file lies under the input root (a symbolic link out of it is refused, by name);
- a remote store (``gs://``, ``s3://``...) answers within ``$METAREC_STORE_TIMEOUT_S`` seconds
  (default 10), else the run fails with a message instead of hanging (:func:`filesystem`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from components.etl.config import EtlConfig
from components.inputs import refuse_links_out
from components.raw_schema import FIELDS_BY_NAME

if TYPE_CHECKING:
    import pyarrow.fs as pafs

log = logging.getLogger(__name__)

SUFFIXES = (("jsonl.gz", ".jsonl.gz"), ("jsonl", ".jsonl"), ("parquet", ".parquet"))
SUCCESS_MARKER = "_SUCCESS"
"""An hourly partition with this file has landed, data files or not (an hour without traffic)."""


@dataclass
class InputListing:
    """The data files of an interval, as found by :func:`list_input`."""

    uri: str
    """The input root as given."""
    fmt: str
    """``jsonl``, ``jsonl.gz`` or ``parquet``."""
    files: list[str]
    """Paths relative to the root (``dt=.../hr=.../part-00000.jsonl``), sorted."""
    missing_hours: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    total_bytes: int = 0
    parquet_rows: int | None = None
    """Rows according to the Parquet footers (None for JSONL)."""

    def spark_paths(self) -> list[str]:
        """Full URIs Spark can read (local paths become ``file://`` so a cluster default FS is not used)."""
        return [spark_uri(join(self.uri, f)) for f in self.files]


def join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def filesystem(uri: str):
    """``(pyarrow FileSystem, path)`` for a local path or any URI pyarrow understands.

    A remote store is asked about ``uri`` once before it is returned, under
    :func:`store_timeout`: without credentials, ``gs://`` retries for minutes and ``s3://``
    waits on an endpoint that never answers; here either fails in seconds, with a message.

    Raises:
        ValueError: the store cannot be opened, refuses the request, or does not answer in time.
    """
    import os

    import pyarrow.fs as pafs

    if "://" in uri and not uri.startswith("file://"):
        return _open_store(uri, store_timeout())
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


STORE_TIMEOUT_ENV = "METAREC_STORE_TIMEOUT_S"
DEFAULT_STORE_TIMEOUT_S = 10.0


def store_timeout() -> float:
    """Seconds a remote store may take to answer its first request: ``$METAREC_STORE_TIMEOUT_S``,
    default 10."""
    import os

    text = os.environ.get(STORE_TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_STORE_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"${STORE_TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


def _open_store(uri: str, timeout: float):
    """Open ``uri``'s filesystem and stat ``uri`` in a daemon thread, waiting at most ``timeout``
    (a hung request cannot be cancelled; the thread is left to the store's own timeouts)."""
    import threading

    import pyarrow.fs as pafs

    found: dict = {}

    def probe() -> None:
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
            if fs.type_name == "s3":  # the S3 client's default is to wait forever per request
                make, (options,) = fs.__reduce__()
                if options["connect_timeout"] < 0 and options["request_timeout"] < 0:
                    fs = make({**options, "connect_timeout": timeout, "request_timeout": timeout})
            fs.get_file_info(path)
            found["store"] = fs, path
        except Exception as e:  # reported below, with the URI
            found["error"] = e

    thread = threading.Thread(target=probe, name=f"metarec-probe {uri}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ValueError(
            f"{uri}: the store did not answer within {timeout:g} s (unreachable, or no "
            f"credentials: e.g. GOOGLE_APPLICATION_CREDENTIALS, AWS_* or the pod's workload "
            f"identity); raise ${STORE_TIMEOUT_ENV} if it is only slow"
        )
    if "error" in found:
        e = found["error"]
        raise ValueError(f"{uri}: cannot open the store: {type(e).__name__}: {e}") from e
    return found["store"]


def spark_uri(uri: str) -> str:
    """The URI Spark/Hadoop uses for ``uri``: absolute ``file://`` for local paths, ``s3a://`` for S3."""
    import os

    if uri.startswith("s3://"):
        return "s3a://" + uri[len("s3://") :]
    if "://" in uri:
        return uri
    return "file://" + os.path.abspath(uri)


def format_of(name: str) -> str | None:
    for fmt, suffix in SUFFIXES:
        if name.endswith(suffix):
            return fmt
    return None


def partition_dir(hour: datetime) -> str:
    return f"dt={hour:%Y-%m-%d}/hr={hour:%H}"


def check_input(config: EtlConfig) -> tuple[pafs.FileSystem, str, list[str]]:
    """The cheap checks, run before Spark starts (``metarec etl`` calls it before the JVM):
    the input root is a listable directory and every hourly partition has :func:`landed`.

    Returns:
        ``(filesystem, root path, missing partition folders)``; missing ones only with
        ``allow_missing``.

    Raises:
        FileNotFoundError: the input root does not exist or is not a directory.
        ValueError: partitions are missing or have not landed (without ``allow_missing``), or
            the URI names a filesystem pyarrow cannot open.
    """
    import pyarrow.fs as pafs

    fs, base = filesystem(config.input)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"input root {config.input} does not exist or is not a directory: give (--input) the "
            "raw log root that holds the dt=YYYY-MM-DD/hr=HH/ partitions"
        )
    rels = [partition_dir(hour) for hour in config.hours]
    infos = fs.get_file_info([join(base, rel) for rel in rels])
    absent = [rel for rel, i in zip(rels, infos, strict=True) if i.type != pafs.FileType.Directory]
    empty = [rel for rel in rels if rel not in absent and not landed(fs, join(base, rel))]
    missing = [rel for rel in rels if rel in absent or rel in empty]
    span = f"[{config.start:%Y-%m-%dT%H}, {config.end:%Y-%m-%dT%H})"
    if missing and not config.allow_missing:
        if not absent and len(empty) == len(rels):
            raise ValueError(
                f"{config.input}: the interval {span} is empty: no data files (.jsonl, .jsonl.gz, "
                ".parquet) and no _SUCCESS marker in its partitions; wait for them to land"
            )
        note = (
            f"{len(empty)} of them are empty folders (an hour has landed when its folder holds a "
            "data file or a _SUCCESS marker). "
            if empty
            else ""
        )
        raise ValueError(
            f"{config.input}: {len(missing)} of {len(config.hours)} hourly partitions of {span} "
            f"are missing: {_shorten(missing)}. {note}Wait for them to land, or pass "
            "--allow-missing to process the interval without them (they are recorded in the "
            "manifest)."
        )
    return fs, base, missing


def landed(fs: pafs.FileSystem, folder: str) -> bool:
    """Has the partition ``folder`` landed: does it hold a data file or a ``_SUCCESS`` marker?

    An empty folder is what a producer leaves between ``mkdir`` and its first file, so it is not
    an hour without traffic: that hour says so with ``_SUCCESS``.
    """
    import pyarrow.fs as pafs

    for info in fs.get_file_info(pafs.FileSelector(folder)):
        if info.type != pafs.FileType.File:
            continue
        if info.base_name == SUCCESS_MARKER or (
            not info.base_name.startswith(("_", ".")) and format_of(info.base_name)
        ):
            return True
    return False


def list_input(config: EtlConfig) -> InputListing:
    """List and check the data files of ``config``'s interval (:func:`check_input` first).

    Raises:
        FileNotFoundError: the input root does not exist.
        ValueError: missing partitions (without ``allow_missing``), mixed or unknown formats,
            no data at all, or corrupt Parquet files — each message says what to do.
    """
    import pyarrow.fs as pafs

    fs, base, missing = check_input(config)
    files: dict[str, list[tuple[str, int]]] = {}
    ignored = []
    for rel in sorted(set(map(partition_dir, config.hours)) - set(missing)):
        for info in fs.get_file_info(pafs.FileSelector(join(base, rel))):
            name = info.base_name
            if info.type != pafs.FileType.File or name.startswith(("_", ".")):
                continue
            fmt = format_of(name)
            if fmt is None:
                ignored.append(f"{rel}/{name}")
            else:
                files.setdefault(fmt, []).append((f"{rel}/{name}", info.size or 0))
    fmt = _choose_format(config, files)
    if fmt is None:
        raise ValueError(
            f"{config.input}: the interval [{config.start:%Y-%m-%dT%H}, {config.end:%Y-%m-%dT%H}) "
            "is empty: no data files (.jsonl, .jsonl.gz, .parquet) in its partitions"
            + (f"; ignored: {_shorten(ignored)}" if ignored else "")
        )
    chosen = sorted(files[fmt])
    refuse_links_out(fs, base, config.input, [rel for rel, _ in chosen])
    listing = InputListing(
        uri=config.input,
        fmt=fmt,
        files=[rel for rel, _ in chosen],
        missing_hours=missing,
        ignored_files=sorted(ignored),
        total_bytes=sum(size for _, size in chosen),
    )
    if ignored:
        log.warning("ignoring %d files with unknown names: %s", len(ignored), _shorten(ignored))
    if fmt == "parquet":
        listing.parquet_rows = check_parquet_files(fs, base, listing.files)
        empty = listing.parquet_rows == 0
    else:
        empty = listing.total_bytes == 0
    if empty:
        raise ValueError(
            f"{config.input}: the interval [{config.start:%Y-%m-%dT%H}, {config.end:%Y-%m-%dT%H}) "
            f"is empty: its {len(listing.files)} {fmt} files hold no rows"
        )
    return listing


def _choose_format(config: EtlConfig, files: dict[str, list]) -> str | None:
    if config.input_format != "auto":
        others = sorted(f for f in files if f != config.input_format)
        if others:
            raise ValueError(
                f"{config.input}: --format {config.input_format} was asked for, but the interval also "
                f"holds {', '.join(others)} files ({_shorten([r for o in others for r, _ in files[o]])}); "
                "move them away or pick the right format"
            )
        return config.input_format if files.get(config.input_format) else None
    if len(files) > 1:
        raise ValueError(
            f"{config.input}: the interval mixes raw formats {sorted(files)}; an interval must hold "
            "one format (pass --format to pick one after moving the others away)"
        )
    return next(iter(files), None)


def _expected_arrow_types():
    import pyarrow as pa

    from components.raw_schema import arrow_schema

    return {f.name: f.type for f in arrow_schema()}, pa


def check_parquet_files(fs, base: str, files: list[str]) -> int:
    """Read every footer with pyarrow; return the total row count.

    Raises:
        ValueError: naming every file that is not readable Parquet or has a raw column of the
            wrong type (extra columns are fine, missing ones read as null).
    """
    import pyarrow.parquet as pq

    expected, pa = _expected_arrow_types()
    problems, rows = [], 0
    for rel in files:
        try:
            with fs.open_input_file(join(base, rel)) as f:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for corrupt files
            problems.append(f"{rel}: not a readable Parquet file ({type(e).__name__}: {e})")
            continue
        rows += meta.num_rows
        for name in schema.names:
            if name not in FIELDS_BY_NAME:
                continue
            found, want = schema.field(name).type, expected[name]
            ok = found == want
            if pa.types.is_timestamp(want):  # any unit, but it must be a UTC instant
                ok = pa.types.is_timestamp(found) and found.tz in ("UTC", "+00:00", "Z")
            if not ok:
                problems.append(f"{rel}: column {name!r} is {found}, the raw schema says {want}")
    if problems:
        raise ValueError(
            f"{len(problems)} problem(s) in the raw Parquet files — repair or remove these files and "
            "rerun the interval:\n  " + "\n  ".join(problems)
        )
    return rows


def _shorten(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items) - n} more)" if len(items) > n else "")
