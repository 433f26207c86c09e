"""Shared helpers for the generator tests: small populations, file listing, independent readers."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime
from pathlib import Path

from components.generate import GenerationSummary, GeneratorConfig, generate

# A small population keeps every test fast; the traffic laws are the same as the defaults'.
SMALL = {"num_users": 5_000, "num_campaigns": 300, "num_advertisers": 40, "hours": 6}
PART_RE = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})/hr=(\d{2})/part-(\d{5})\.(jsonl|jsonl\.gz|parquet)$")
HOUR_MS = 3_600_000


def make(root: Path | str, **overrides) -> tuple[GenerationSummary, Path]:
    """Generate into ``root`` with the small population unless ``overrides`` say otherwise."""
    config = GeneratorConfig(out=str(root), **{"rows": 3_000, **SMALL, **overrides})
    return generate(config), root


def data_files(root: Path) -> list[Path]:
    """Data files under ``root`` in partition order (readers skip ``_``/``.`` names)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(("_", ".")) for part in p.relative_to(root).parts)
    )


def all_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (data and metadata), keyed by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def generation(root: Path) -> dict:
    return json.loads((root / "_generation.json").read_text())


def hour_start_ms(root: Path, path: Path) -> int:
    """Start of the UTC hour a data file's partition stands for."""
    match = PART_RE.match(str(path.relative_to(root)))
    assert match, path
    day, hour = match.group(1), int(match.group(2))
    start = datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)
    return int(start.timestamp()) * 1000


def read_lines(path: Path) -> tuple[list[str], bool]:
    """The lines of a JSONL(.gz) file without newlines, and whether the last one lacked its newline."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = raw.decode("utf-8")
    if not text:
        return [], False
    lines = text.split("\n")
    truncated = lines[-1] != ""
    return (lines if truncated else lines[:-1]), truncated


def parse_iso_ms(text: str) -> int | None:
    """Epoch ms of ``YYYY-MM-DDTHH:MM:SS.mmmZ``, else None."""
    if not isinstance(text, str) or not re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", text
    ):
        return None
    try:
        value = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return round(value.timestamp() * 1000)
