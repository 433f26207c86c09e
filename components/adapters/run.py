"""The adapter driver: locate the source files, stream them through the source's mapping, write
hourly partitions, account for every row, then write ``_adapter.json`` last (its presence marks a
complete output, as ``_manifest.json`` does for the ETL).

    from components.adapters import AdapterConfig, adapt
    summary = adapt("movielens", AdapterConfig(src="ml-100k", out="data/raw-ml"))
    print(summary.render())
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from components.adapters.accounting import Accounting, RejectLog
from components.adapters.canonical import format_ms, hour_label, parse_base_time
from components.adapters.reading import SourceFile, resolve
from components.adapters.writer import FORMATS, PartitionWriter
from components.raw_schema import SCHEMA_VERSION

log = logging.getLogger(__name__)

ADAPTER_VERSION = 1
ADAPTER_JSON = "_adapter.json"
REJECTED_JSONL = "_rejected.jsonl"
OUT_PLACEHOLDER = "<this directory>"
PROGRESS_EVERY = 1_000_000  # rows between progress log lines


@dataclass(frozen=True)
class AdapterConfig:
    """Options shared by every source (``metarec adapt <source> --help`` shows them)."""

    src: str
    """The downloaded dataset: a directory (or, for single-file sources, a file); local or URI."""
    out: str
    """Output root of the raw partitions (local path or ``pyarrow.fs`` URI)."""
    format: str = "parquet"
    """``parquet`` (zstd) or ``jsonl``."""
    overwrite: bool = False
    """Replace a previous output in ``out``; without it a non-empty ``out`` is an error."""
    fill_empty_hours: bool = True
    """Write an empty part file for hours between the first and last event that have none."""
    base_time: str | None = None
    """Sources without timestamps: event time of row 0 (ISO-8601 UTC); None = source default."""
    time_step_ms: int = 1000
    """Sources without timestamps: milliseconds between consecutive rows."""
    task: str | None = None
    """Sources with a choice of task (``Source.tasks``, e.g. TalkingData's ``app`` or
    ``channel``): which one the next steps key the ETL by; None = the source's default."""
    block_bytes: int = 16 << 20
    """Bytes of source text parsed per block (bounds memory together with ``flush_rows``)."""
    flush_rows: int = 500_000
    """Rows buffered across hours before the largest hour buffers are written."""
    max_open_files: int = 256
    rows_per_file: int = 2_000_000

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if self.time_step_ms < 0:
            raise ValueError(f"time step must be >= 0 ms, got {self.time_step_ms}")
        if self.base_time is not None:
            parse_base_time(self.base_time)
        for name in ("block_bytes", "flush_rows", "max_open_files", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class Source:
    """One public dataset layout: how to find its files and how to map their rows."""

    name: str
    summary: str
    help: str
    """Long help: files expected, where to download them, what maps to what."""
    task_key: str
    """The raw column to use as the ETL's task key for this source."""
    locate: Callable[[pafs.FileSystem, str], dict[str, SourceFile]]
    """Find the input files under ``src`` or raise FileNotFoundError saying what is expected."""
    read: Callable[
        [pafs.FileSystem, dict[str, SourceFile], AdapterConfig, Accounting], Iterator[pa.Table]
    ]
    """Yield tables of the raw schema; count rows_in/written/rejected in the Accounting."""
    describe: Callable[[AdapterConfig], dict[str, Any]]
    """The mapping, label rules and event-time origin, for ``_adapter.json``."""
    derived_time: bool = False
    """True when the source has no timestamps and event_time comes from row order."""
    bounds: str = "ad_log"
    """The validation bounds of this kind of source (a key of
    ``components.validation.suites.SOURCE_THRESHOLDS``: click-rate band, row-count ratio),
    passed to ``metarec validate`` by the next steps; ``ad_log`` (the defaults) for real ad logs."""
    feature_preset: str = "default"
    """The ETL's feature spec sized to this source (``components.etl.config.FEATURE_PRESETS``),
    passed by the next steps as ``--feature-preset``."""
    tasks: tuple[tuple[str, str], ...] = ()
    """Sources with a choice of task: ``(option value, raw task column)`` pairs for ``--task``,
    the first the default (``task_key`` is then the first's column)."""

    def task_key_for(self, config: AdapterConfig) -> str:
        """The ETL task key of ``config.task`` (a value of :attr:`tasks`), else :attr:`task_key`."""
        if config.task is None:
            return self.task_key
        choices = dict(self.tasks)
        if config.task not in choices:
            raise ValueError(
                f"{self.name}: unknown --task {config.task!r}: choose one of "
                f"{', '.join(choices) or '(none: this source has one task key)'}"
            )
        return choices[config.task]

    def thresholds(self):  # -> components.validation.suites.Thresholds
        from components.validation.suites import SOURCE_THRESHOLDS

        return SOURCE_THRESHOLDS[self.bounds]


@dataclass
class AdapterSummary:
    source: str
    out: str
    format: str
    report: dict[str, Any] = field(default_factory=dict)
    """The content of ``_adapter.json``."""
    seconds: float = 0.0

    def render(self) -> str:
        """A few human lines: accounting, output, and the commands to run next."""
        r, acc, o = self.report, self.report["accounting"], self.report["output"]
        reasons = ", ".join(f"{k}={v}" for k, v in acc["rejected_by_reason"].items()) or "none"
        lines = [
            f"adapted {self.source}: {acc['rows_in']:,} rows in = {acc['rows_written']:,} written"
            f" + {acc['rows_rejected']:,} rejected ({reasons})"
            f" in {self.seconds:.1f}s ({acc['rows_in'] / max(self.seconds, 1e-9):,.0f} rows/s)",
            f"  labels: {r['labels']['clicks']:,} clicks, "
            + (
                f"{r['labels']['conversions']:,} conversions"
                if r["labels"]["conversions"] is not None
                else "conversions unknown (null) in this source"
            ),
            f"  output: {self.out} ({o['files']} {self.format} files, {o['hours_with_rows']} hours"
            f" with rows, {o['empty_hours_filled']} empty hours filled),"
            f" events {o['time_range']['min_event_time']} .. {o['time_range']['max_event_time']}",
        ]
        if acc["values_nulled"]:
            lines.append(f"  invalid optional values set to null: {acc['values_nulled']}")
        if acc["rows_rejected"]:
            lines.append(f"  rejected rows with their reason: {self.out}/{REJECTED_JSONL}")
        if r["event_time"].get("derived"):
            lines.append(f"  event_time derived from row order: {r['event_time']['rule']}")
        out = shlex.quote(self.out.rstrip("/"))
        lines.append("  next, in order:")
        lines += [f"    {step.replace(OUT_PLACEHOLDER, out)}" for step in r["next_steps"]]
        return "\n".join(lines)


def prepare_output(fs: pafs.FileSystem, root: str, overwrite: bool) -> None:
    """Create ``root``; refuse a non-empty one unless ``overwrite`` (then remove the previous
    adapter output: ``dt=*`` partitions, ``_adapter.json``, ``_rejected.jsonl``; nothing else)."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise ValueError(f"output {root} is a file: give a directory")
    if info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(root))
        if entries and not overwrite:
            raise ValueError(
                f"output directory {root} is not empty: pass --overwrite to replace a previous "
                "output, or choose another --out"
            )
        for e in entries:
            if e.base_name.startswith("dt=") and e.type == pafs.FileType.Directory:
                fs.delete_dir(e.path)
            elif e.base_name in (ADAPTER_JSON, REJECTED_JSONL):
                fs.delete_file(e.path)
    fs.create_dir(root, recursive=True)


def adapt(source: Source, config: AdapterConfig) -> AdapterSummary:
    """Run one adapter end to end; see the module docstring."""
    started = time.perf_counter()
    task_key = source.task_key_for(config)
    src_fs, src_root = resolve(config.src)
    files = source.locate(src_fs, src_root)
    out_fs, out_root = resolve(config.out)
    prepare_output(out_fs, out_root, config.overwrite)
    reject_log = RejectLog(out_fs, f"{out_root}/{REJECTED_JSONL}")
    acct = Accounting(log=reject_log)
    writer = PartitionWriter(
        out_fs,
        out_root,
        config.format,
        flush_rows=config.flush_rows,
        max_open_files=config.max_open_files,
        rows_per_file=config.rows_per_file,
    )
    clicks = conversions = conversions_known = 0
    next_log = PROGRESS_EVERY
    try:
        for table in source.read(src_fs, files, config, acct):
            writer.write(table)
            clicks += int(pc.sum(table["click"]).as_py() or 0)
            conv = table["conversion"]
            conversions += int(pc.sum(conv).as_py() or 0)
            conversions_known += len(conv) - conv.null_count
            if acct.total_in() >= next_log:
                elapsed = time.perf_counter() - started
                log.info(
                    "%s: %d rows read (%.0f rows/s)",
                    source.name,
                    acct.total_in(),
                    acct.total_in() / elapsed,
                )
                next_log += PROGRESS_EVERY
        stats = writer.close(config.fill_empty_hours)
    finally:
        reject_log.close()
    acct.check_balanced()
    assert stats.rows == acct.total_written(), (stats.rows, acct.total_written())
    if stats.rows == 0:
        raise ValueError(
            f"{source.name}: no rows written from {config.src}: {acct.total_in()} rows read, "
            f"all rejected ({acct.by_reason() or 'the files hold no data rows'}); "
            f"see {out_root}/{REJECTED_JSONL}"
        )
    report = {
        "source": source.name,
        "adapter_version": ADAPTER_VERSION,
        "raw_schema_version": SCHEMA_VERSION,
        "inputs": {role: {"path": f.path, "bytes": f.size} for role, f in files.items()},
        "options": {  # what shapes the output (not where it goes, nor --overwrite)
            k: v for k, v in asdict(config).items() if k not in ("src", "out", "overwrite")
        },
        "accounting": acct.as_dict(),
        "labels": {
            "expected_click_rate": [source.thresholds().ctr_min, source.thresholds().ctr_max],
            "clicks": clicks,
            "conversions": conversions if conversions_known else None,
            "rows_with_conversion_label": conversions_known,
        },
        "output": {
            "format": config.format,
            "layout": f"dt=YYYY-MM-DD/hr=HH/part-NNNNN.{config.format}",
            "files": stats.files,
            "hours_with_rows": stats.hours_with_rows,
            "empty_hours_filled": stats.empty_hours_filled,
            "max_rows_per_hour": stats.rows_per_hour_max,
            "time_range": {
                "min_event_time": format_ms(stats.min_ms),
                "max_event_time": format_ms(stats.max_ms),
                "start_hour": hour_label(stats.first_hour),
                "end_hour_exclusive": hour_label(stats.last_hour + 1),
            },
        },
        "task_key": task_key,
        "validation_bounds": source.bounds,
        **source.describe(config),
    }
    report["next_steps"] = next_steps(
        source, config, hour_label(stats.first_hour), hour_label(stats.last_hour + 1)
    )
    with out_fs.open_output_stream(f"{out_root}/{ADAPTER_JSON}") as f:
        f.write((json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    return AdapterSummary(
        source.name, config.out, config.format, report, time.perf_counter() - started
    )


def next_steps(source: Source, config: AdapterConfig, start: str, end: str) -> list[str]:
    """The commands that take the output to validated episodes, runnable as printed once
    ``OUT_PLACEHOLDER`` is replaced by the output path (``_adapter.json`` keeps the placeholder:
    the directory stays relocatable and reruns identical). The episodes go next to the output,
    in ``<out>-episodes``; the source's validation bounds go to both validations."""
    from components.etl.config import EtlConfig

    raw, episodes = OUT_PLACEHOLDER, f"{OUT_PLACEHOLDER}-episodes"
    interval = EtlConfig(input=raw, output=episodes, start=start, end=end).interval_id
    band = "".join(f" {flag}" for flag in source.thresholds().flags())
    etl = (
        f"metarec etl --input {raw} --output {episodes} --start {start} --end {end} "
        f"--task-key {source.task_key_for(config)}"
    )
    if source.feature_preset != "default":
        etl += f" --feature-preset {source.feature_preset}"
    validate_episodes = f"metarec validate episodes {episodes}/{interval}{band}"
    if not config.fill_empty_hours:  # hours without events are missing: raw validation fails them
        return [f"{etl} --allow-missing", validate_episodes]
    validate_raw = f"metarec validate raw --input {raw} --start {start} --end {end}{band}"
    return [validate_raw, etl, validate_episodes]
