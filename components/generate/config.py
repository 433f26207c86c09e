"""``GeneratorConfig``: every knob of the synthetic ad-log generator, validated on construction.

Standard library only, so ``metarec generate --help`` stays instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from components.raw_schema import PARTITION_FORMATS

HOUR_MS = 3_600_000
MAX_ROWS = 1_000_000_000

# Corruption kinds, in the order they are documented and counted. ``JSON_ONLY`` kinds need a text
# encoding (a typed Parquet column cannot hold "yes" in an int8 label or half a record).
CORRUPTION_KINDS: tuple[str, ...] = (
    "malformed_garbage",
    "malformed_truncated",
    "truncated_last_line",
    "missing_required",
    "null_required",
    "extra_fields",
    "wrong_type",
    "nonfinite_number",
    "negative_number",
    "label_out_of_range",
    "time_out_of_range",
    "duplicate_exact",
    "duplicate_conflicting",
)
JSON_ONLY_KINDS = frozenset(
    {
        "malformed_garbage",
        "malformed_truncated",
        "truncated_last_line",
        "missing_required",
        "extra_fields",
        "wrong_type",
    }
)
ZIPF_KEYS = ("users", "campaigns", "ads", "advertisers")


def parse_start(text: str) -> datetime:
    """Parse an hour-aligned UTC start (``2026-11-01T00``, ``2026-11-01T00:00:00Z``, ``2026-11-01``)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--start {text!r} is not an ISO-8601 time: use e.g. 2026-11-01T00 (UTC hour)"
        ) from None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if (value.minute, value.second, value.microsecond) != (0, 0, 0):
        raise ValueError(
            f"--start {text!r} must be aligned to a whole UTC hour, e.g. 2026-11-01T05"
        )
    return value


def parse_zipf(text: str) -> dict[str, float]:
    """``"1.2"`` (every entity) or ``"users=1.1,campaigns=1.3"`` -> ``{"zipf_users": 1.1, ...}``."""
    text = text.strip()
    try:
        if "=" not in text:
            return {f"zipf_{key}": float(text) for key in ZIPF_KEYS}
        out = {}
        for item in text.split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in ZIPF_KEYS:
                raise ValueError(
                    f"unknown Zipf entity {key!r} (choose from {', '.join(ZIPF_KEYS)})"
                )
            out[f"zipf_{key}"] = float(value)
        return out
    except ValueError as e:
        raise ValueError(
            f"--zipf {text!r}: {e}; expected a number (all entities) or e.g. users=1.1,campaigns=1.3"
        ) from None


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate and where. The same config (seed included) writes byte-identical files."""

    out: str = "out/raw"
    """Output root (local path or a ``pyarrow.fs`` URI); gets ``dt=YYYY-MM-DD/hr=HH/part-NNNNN.<fmt>``."""
    rows: int = 100_000
    """Total records written (JSONL lines or Parquet rows), corrupted and duplicated ones included."""
    start: str = "2026-11-01T00"
    """First hour (UTC, hour-aligned); normalised to ``YYYY-MM-DDTHH:00:00Z``."""
    hours: int = 24
    """Number of hourly partitions, each written even when its share of rows is zero."""
    seed: int = 0
    """Seed of every random draw: entities, traffic, labels, corruption."""
    format: str = "jsonl"
    """``jsonl``, ``jsonl.gz`` or ``parquet``."""
    corrupt: float = 0.0
    """Fraction of rows to corrupt (0 = clean); each corrupted row gets exactly one kind."""
    corrupt_kinds: tuple[str, ...] = ()
    """Restrict corruption to these kinds (default: every kind the format can carry)."""
    num_users: int = 200_000
    """Size of the user table (traffic over users is Zipf-Mandelbrot)."""
    num_campaigns: int = 5_000
    """Size of the campaign table: campaigns are the default task key."""
    num_advertisers: int = 500
    """Size of the advertiser table; advertisers own campaigns (Zipf: a few own very many)."""
    ads_per_campaign: float = 4.0
    """Mean ads per campaign (1 + Poisson(mean - 1), capped at 4x the mean)."""
    zipf_users: float = 1.1
    """Zipf exponent of user activity."""
    zipf_campaigns: float = 1.2
    """Zipf exponent of campaign traffic: sets how heavy-tailed task sizes are."""
    zipf_ads: float = 1.2
    """Zipf exponent of ad traffic within a campaign."""
    zipf_advertisers: float = 1.2
    """Zipf exponent of campaign ownership over advertisers."""
    cold_start_fraction: float = 0.2
    """Share of campaigns born inside the generated range (no events before their birth)."""
    ctr: float = 0.03
    """Target mean click-through rate (calibrated on the traffic mix)."""
    cvr: float = 0.10
    """Target mean conversion rate given a click (where the advertiser tracks conversions)."""
    preference_strength: float = 0.9
    """Std (logits) of the campaign x user-attribute preference term; 0 removes it (ablation)."""
    campaign_bias_std: float = 0.6
    """Std (logits) of the per-campaign click bias; 0 removes it (ablation)."""
    files_per_hour: int = 1
    """Files per hourly partition (like several log shippers); rows go to a random file each."""
    chunk_rows: int = 131_072
    """Largest number of rows generated in memory at once (memory is flat in ``rows``)."""
    overwrite: bool = False
    """Replace a previous generator output at ``out``; without it a non-empty ``out`` is refused."""

    def __post_init__(self) -> None:
        fix = object.__setattr__
        fix(self, "start", parse_start(self.start).strftime("%Y-%m-%dT%H:00:00Z"))
        fix(self, "corrupt_kinds", tuple(self.corrupt_kinds))

        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        check(bool(str(self.out).strip()), "--out must name an output directory")
        _int(self, "rows", 1, MAX_ROWS, "rows to write (1 ... 1e9)")
        _int(self, "hours", 1, 24 * 366, "hourly partitions (1 ... 8784)")
        _int(self, "seed", 0, 2**63 - 1, "a non-negative integer")
        check(
            self.format in PARTITION_FORMATS,
            f"--format {self.format!r}: choose one of {', '.join(PARTITION_FORMATS)}",
        )
        check(0.0 <= self.corrupt <= 0.5, f"--corrupt {self.corrupt}: a fraction in [0, 0.5]")
        for kind in self.corrupt_kinds:
            check(
                kind in CORRUPTION_KINDS,
                f"unknown corruption kind {kind!r}: choose from {', '.join(CORRUPTION_KINDS)}",
            )
            check(
                not (self.format == "parquet" and kind in JSON_ONLY_KINDS),
                f"corruption kind {kind!r} needs a text format (jsonl, jsonl.gz), not parquet",
            )
        _int(self, "num_users", 1, 10**9, "users (>= 1)")
        _int(self, "num_campaigns", 1, 10**8, "campaigns (>= 1)")
        _int(self, "num_advertisers", 1, 10**8, "advertisers (>= 1)")
        check(
            1.0 <= self.ads_per_campaign <= 1000,
            f"--ads-per-campaign {self.ads_per_campaign}: a mean in [1, 1000]",
        )
        for key in ZIPF_KEYS:
            value = getattr(self, f"zipf_{key}")
            check(0.0 < value <= 5.0, f"Zipf exponent for {key} is {value}: use (0, 5], e.g. 1.2")
        check(
            0.0 <= self.cold_start_fraction < 1.0,
            f"--cold-start-fraction {self.cold_start_fraction}: a fraction in [0, 1)",
        )
        check(0.0 < self.ctr <= 0.5, f"--ctr {self.ctr}: a rate in (0, 0.5], e.g. 0.03")
        check(0.0 < self.cvr < 1.0, f"--cvr {self.cvr}: a rate in (0, 1), e.g. 0.1")
        check(0.0 <= self.preference_strength <= 5.0, "--preference-strength: use [0, 5] logits")
        check(0.0 <= self.campaign_bias_std <= 5.0, "campaign_bias_std: use [0, 5] logits")
        _int(self, "files_per_hour", 1, 1000, "files per hour (1 ... 1000)")
        _int(self, "chunk_rows", 100, 10_000_000, "rows per in-memory chunk (100 ... 1e7)")

    @property
    def start_time(self) -> datetime:
        return parse_start(self.start)

    @property
    def start_ms(self) -> int:
        return int(self.start_time.timestamp()) * 1000

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.hours * HOUR_MS

    def active_corruption_kinds(self) -> tuple[str, ...]:
        """The kinds this run injects (empty when ``corrupt`` is 0)."""
        if self.corrupt == 0:
            return ()
        allowed = self.corrupt_kinds or CORRUPTION_KINDS
        return tuple(
            k
            for k in CORRUPTION_KINDS
            if k in allowed and not (self.format == "parquet" and k in JSON_ONLY_KINDS)
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields that shape the data (``overwrite`` does not, so it is left out)."""
        out = asdict(self)
        out["corrupt_kinds"] = list(self.corrupt_kinds)
        del out["overwrite"]
        return out


def _int(config: GeneratorConfig, name: str, low: int, high: int, what: str) -> None:
    value = getattr(config, name)
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{flag} must be an integer ({what}), got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{flag} {value}: expected {what}")


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`components.generate.generate` wrote (also in ``<out>/_generation.json``)."""

    out: str
    """The output root."""
    rows_written: int
    """Rows in all files (equals ``config.rows``)."""
    rows_per_hour: tuple[int, ...]
    """Rows of each hourly partition, in time order."""
    files: tuple[str, ...]
    """Data files written, relative to ``out``."""
    corruption: dict[str, int]
    """Rows per corruption kind."""
    expected_reasons: dict[str, int]
    """Rows the ETL must quarantine, per reason code (its ground truth)."""
    max_chunk_rows: int
    """Largest number of rows held in memory at once (bounded by ``chunk_rows``)."""
    chunks: int
    """Chunks generated."""
    clean_rows: int
    """Rows without any corruption."""
    clicks: int
    """Clicks among clean rows."""
    seconds: float
    """Wall time of the whole run."""

    @property
    def rows_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else float("inf")

    @property
    def ctr(self) -> float:
        return self.clicks / self.clean_rows if self.clean_rows else 0.0
