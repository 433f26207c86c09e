"""``EtlConfig``: every knob of the Meta-IO offline stage, validated on construction.

Standard library only (plus the torch-free contract), so ``metarec etl --help`` stays instant and
Airflow/KFP components can build a config without Spark installed.

The feature spec says how raw columns become model inputs; it is written into the manifest, so
the trainer and the serving side read the same thing. Default (slot order = this order)::

    name             source          kind         buckets    slots
    user_id          user_id         categorical  1_000_003  1
    ad_id            ad_id           categorical    200_003  1
    ...
    hour_of_day      event_time      categorical         29  1     UTC hour as "0".."23"
    user_interests   user_interests  multi           10_007  5     first 5 values, 0-padded
    ad_tags          ad_tags         multi            5_003  3

    dense: bid_price log1p, item_price log1p, user_hist_ctr identity

Its tables suit ad logs at scale; ``--feature-preset small`` picks one sized to MovieLens-size
data (``FEATURE_PRESETS``). Or override it with a TOML or JSON file (``--features spec.toml``)::

    [[features]]                       # repeated, in slot order
    name = "user_id"                   # hashed as feature name + "\\x1f" + value
    buckets = 1000003                  # table rows, row 0 = null/padding
    # source = "user_id"  kind = "categorical"  slots = 1     (defaults)
    [[dense]]
    name = "bid_price"
    transform = "log1p"                # or "identity"
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from components.raw_schema import FIELDS_BY_NAME, PARTITION_FORMATS, TASK_KEYS, validate_task_key
from trainer.config_loader import build, option, read_file
from trainer.data.contract import DenseSpec, FeatureSpec

INPUT_FORMATS = ("auto", *PARTITION_FORMATS)
DENSE_TRANSFORMS = ("identity", "log1p")
DERIVED_SOURCES = {"event_time": "hour_of_day"}
"""Raw columns that are not categorical but from which a categorical feature is derived."""
MAX_BUCKETS = (1 << 31) - 1


@dataclass(frozen=True)
class FeatureConfig:
    """One sparse feature of the spec (its slot offset follows from the order of the spec)."""

    name: str
    """Feature name: part of the hash input, so equal values of two features hash apart."""
    buckets: int
    """Rows of the feature's embedding table, row 0 (null/padding) included; ids are in [0, buckets)."""
    source: str = ""
    """Raw column it reads; defaults to ``name``. ``event_time`` derives the UTC hour "0".."23"."""
    kind: str = "categorical"
    """``categorical`` (one slot) or ``multi`` (a list column: its first ``slots`` values)."""
    slots: int = 1
    """Ids per sample: 1 for categorical; for multi, values beyond ``slots`` are dropped, missing
    ones are 0."""

    def __post_init__(self) -> None:
        if not self.source:
            object.__setattr__(self, "source", self.name)
        where = f"feature {self.name!r}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"{where}: the name must be an identifier (letters, digits, _)")
        raw = FIELDS_BY_NAME.get(self.source)
        if raw is None:
            raise ValueError(
                f"{where}: source {self.source!r} is not a raw column; choose one of "
                f"{', '.join(FIELDS_BY_NAME)}"
            )
        if self.kind not in ("categorical", "multi"):
            raise ValueError(f"{where}: kind must be 'categorical' or 'multi', got {self.kind!r}")
        if self.source in DERIVED_SOURCES and self.name != DERIVED_SOURCES[self.source]:
            raise ValueError(
                f"{where}: source {self.source!r} only feeds the derived feature "
                f"{DERIVED_SOURCES[self.source]!r}"
            )
        wanted = "multi" if raw.kind == "multi" else "categorical"
        if raw.kind in ("dense", "label") or wanted != self.kind:
            raise ValueError(
                f"{where}: raw column {self.source!r} is {raw.kind}; a sparse feature over it must "
                f"have kind {wanted!r}"
                + (" (dense columns go in [[dense]])" if raw.kind == "dense" else "")
            )
        if not 2 <= self.buckets <= MAX_BUCKETS:
            raise ValueError(f"{where}: buckets must be in [2, 2^31 - 1], got {self.buckets}")
        if self.kind == "categorical" and self.slots != 1:
            raise ValueError(f"{where}: a categorical feature has exactly 1 slot, got {self.slots}")
        if not 1 <= self.slots <= 1024:
            raise ValueError(f"{where}: slots must be in [1, 1024], got {self.slots}")


@dataclass(frozen=True)
class DenseConfig:
    """One dense feature: a numeric raw column, transformed; null becomes 0.0; stored as float32."""

    name: str
    """Feature name in the manifest."""
    transform: str = "identity"
    """``identity`` or ``log1p`` (for heavy-tailed non-negative values such as prices)."""
    source: str = ""
    """Raw dense column; defaults to ``name``."""

    def __post_init__(self) -> None:
        if not self.source:
            object.__setattr__(self, "source", self.name)
        raw = FIELDS_BY_NAME.get(self.source)
        if raw is None or raw.kind != "dense":
            dense = [f for f, r in FIELDS_BY_NAME.items() if r.kind == "dense"]
            raise ValueError(
                f"dense feature {self.name!r}: source {self.source!r} is not a dense raw column "
                f"({', '.join(dense)})"
            )
        if self.transform not in DENSE_TRANSFORMS:
            raise ValueError(
                f"dense feature {self.name!r}: transform must be one of {DENSE_TRANSFORMS}, "
                f"got {self.transform!r}"
            )


DEFAULT_FEATURES: tuple[FeatureConfig, ...] = (
    FeatureConfig("user_id", 1_000_003),
    FeatureConfig("ad_id", 200_003),
    FeatureConfig("campaign_id", 50_021),
    FeatureConfig("advertiser_id", 10_007),
    FeatureConfig("scene_id", 101),
    FeatureConfig("user_gender", 7),
    FeatureConfig("user_age_bucket", 17),
    FeatureConfig("user_segment", 1_009),
    FeatureConfig("device_type", 31),
    FeatureConfig("region", 1_009),
    FeatureConfig("ad_category", 2_003),
    FeatureConfig("ad_brand", 20_011),
    FeatureConfig("creative_type", 17),
    FeatureConfig("hour_of_day", 29, source="event_time"),
    FeatureConfig("user_interests", 10_007, kind="multi", slots=5),
    FeatureConfig("ad_tags", 5_003, kind="multi", slots=3),
)
DEFAULT_DENSE: tuple[DenseConfig, ...] = (
    DenseConfig("bid_price", "log1p"),
    DenseConfig("item_price", "log1p"),
    DenseConfig("user_hist_ctr", "identity"),
)
SMALL_FEATURES: tuple[FeatureConfig, ...] = (
    FeatureConfig("user_id", 20_011),
    FeatureConfig("ad_id", 10_007),
    FeatureConfig("campaign_id", 10_007),
    FeatureConfig("advertiser_id", 101),
    FeatureConfig("scene_id", 11),
    FeatureConfig("user_gender", 7),
    FeatureConfig("user_age_bucket", 17),
    FeatureConfig("user_segment", 101),
    FeatureConfig("device_type", 31),
    FeatureConfig("region", 1_009),
    FeatureConfig("ad_category", 1_009),
    FeatureConfig("ad_brand", 211),
    FeatureConfig("creative_type", 17),
    FeatureConfig("hour_of_day", 29, source="event_time"),
    FeatureConfig("user_interests", 1_009, kind="multi", slots=5),
    FeatureConfig("ad_tags", 211, kind="multi", slots=3),
)
FEATURE_PRESETS: dict[str, tuple[tuple[FeatureConfig, ...], tuple[DenseConfig, ...]]] = {
    "default": (DEFAULT_FEATURES, DEFAULT_DENSE),
    "small": (SMALL_FEATURES, DEFAULT_DENSE),
}
"""Feature specs sized to the data (``--feature-preset``): the same features and slots, tables
sized to the ids there are. The embedding tables are most of a checkpoint (rows x dim x 4 bytes,
and as much again of optimizer state).

``default``
    Ad logs at scale (a million users, 200 k ads): 1.3 M rows, ~85 MB checkpoints at dim 16.
``small``
    MovieLens-size data (MovieLens-1M: 6,040 users, 3,706 rated movies; 100K: 943 and 1,682):
    44 k rows, a few MB. Ids beyond ~20 k users or ~10 k ads collide often: use ``default``.
"""


def load_feature_spec(
    path: str | Path,
) -> tuple[tuple[FeatureConfig, ...], tuple[DenseConfig, ...]]:
    """Read a feature spec from a ``.toml`` or ``.json`` file (layout in the module docstring).

    Raises:
        ValueError: unreadable file, unknown keys, or an invalid feature (the message names it).
    """
    try:
        data = read_file(path)
    except FileNotFoundError:
        raise ValueError(f"feature spec {path}: no such file") from None
    except ValueError as e:
        raise ValueError(f"feature spec {e}") from None
    try:
        spec = build(FeatureSet, data)
    except ValueError as e:
        raise ValueError(f"feature spec {path}: {e}") from None
    return spec.features, spec.dense


@dataclass(frozen=True, kw_only=True)
class FeatureSet:
    """The layout of a feature spec file."""

    features: tuple[FeatureConfig, ...]
    """The ``[[features]]`` tables, in slot order."""
    dense: tuple[DenseConfig, ...] = ()
    """The ``[[dense]]`` tables, in order."""


def parse_hour(text: str | datetime) -> datetime:
    """Parse a UTC hour: ``2026-11-01T00``, ``2026-11-01T00:00``, ``...Z``/``+00:00``; naive = UTC."""
    if isinstance(text, datetime):
        value = text
    else:
        raw = str(text).strip()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}", raw):
            raw += ":00"
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{text!r} is not an ISO-8601 UTC hour: use e.g. 2026-11-01T00"
            ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_DURATION = re.compile(r"(\d+)\s*([smhd]?)")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """``"90m"``, ``"2h"``, ``"1d"``, ``"3600s"`` or a number of seconds -> timedelta."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, int | float):
        return timedelta(seconds=text)
    m = _DURATION.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration: use e.g. 3600, 3600s, 90m, 2h or 1d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return timedelta(seconds=int(m.group(1)) * unit)


def format_duration(value: timedelta) -> str:
    """The shortest of ``<n>d``, ``<n>h``, ``<n>m``, ``<n>s`` that says ``value`` exactly."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_bytes(text: str | int) -> int:
    """``64MiB``, ``8M``, ``1G`` or a plain number of bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size: use e.g. 64MiB, 8M or 1048576")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def format_bytes(value: int) -> str:
    """``67108864`` -> ``64MiB`` (whole KiB/MiB/GiB), else the number."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value and value % (1 << shift) == 0:
            return f"{value >> shift}{unit}"
    return str(value)


@dataclass(frozen=True, kw_only=True)
class EtlSettings:
    """How the ETL reads and cuts an interval: every setting but the interval and the roots (the
    delivery config's ``[etl]`` section). Validated on construction."""

    input_format: str = field(
        default="auto", metadata=option(flag="--format", choices=INPUT_FORMATS)
    )
    """Raw file format: ``jsonl``, ``jsonl.gz``, ``parquet``, or ``auto`` (from the file names;
    mixing is an error)."""
    task_key: str = field(default="campaign_id", metadata=option(choices=TASK_KEYS))
    """Raw id column that defines a task."""
    k_support: int = field(default=32, metadata=option(flag="--k", metavar="K"))
    """K: support samples per episode (the older ones)."""
    q_query: int = field(default=32, metadata=option(flag="--q", metavar="Q"))
    """Q: query samples per episode (the newer ones)."""
    min_support: int = field(default=8, metadata=option(metavar="N"))
    """An episode with fewer real support samples is not emitted (its rows are quarantined as
    episode_too_small)."""
    min_query: int = field(default=8, metadata=option(metavar="N"))
    """An episode with fewer real query samples is not emitted (its rows are quarantined)."""
    num_buckets: int = field(default=16, metadata=option(flag="--buckets", metavar="B"))
    """Task buckets per split: each is one file, so ranks read disjoint files (>= ranks x 2 is
    good)."""
    cold_fraction: float = field(default=0.1, metadata=option(metavar="F"))
    """Share of tasks (by a stable hash of the task key) held out whole as ``test_cold``."""
    valid_fraction: float = field(default=0.1, metadata=option(metavar="F"))
    """Latest share of the interval: warm tasks' episodes whose first query sample falls in it go
    to ``valid``, earlier ones to ``train``."""
    cold_tasks: str = field(default="", metadata=option(metavar="FILE"))
    """A file naming cold tasks, one task key per line (local path or URI; UTF-8): they go to the
    cold splits only (``test_cold``, or ``valid_cold``), besides the ``cold_fraction`` share of
    the tasks; with ``--cold-fraction 0`` only the named tasks are cold. Empty: none named."""
    valid_cold_fraction: float = field(default=0.0, metadata=option(metavar="F"))
    """Share of the cold tasks (by a second stable hash of the task key) held out as
    ``valid_cold``: cold tasks to tune adaptation on, never trained on and never in
    ``test_cold``. 0 (the default): no ``valid_cold`` split."""
    max_lateness: timedelta = field(
        default=timedelta(hours=1),
        metadata=option(parse=parse_duration, show=format_duration, metavar="DURATION"),
    )
    """How much older than its partition hour an event may be (late arrivals, e.g. 30m, 2h);
    older events are quarantined as event_time_out_of_range."""
    feature_preset: str = field(default="default", metadata=option(choices=tuple(FEATURE_PRESETS)))
    """A feature spec sized to the data (``FEATURE_PRESETS``): ``default`` for ad logs at scale
    (~85 MB checkpoints), ``small`` for MovieLens-size data (a few MB). A ``--features`` file
    replaces the preset (give one or the other)."""
    features: tuple[FeatureConfig, ...] = field(
        default=DEFAULT_FEATURES, metadata=option(cli=False)
    )
    """Sparse features in slot order (module docstring); on the command line: ``--features``."""
    dense_features: tuple[DenseConfig, ...] = field(
        default=DEFAULT_DENSE, metadata=option(cli=False)
    )
    """Dense features in order; on the command line: ``--features``."""
    row_group_bytes: int = field(
        default=64 << 20, metadata=option(parse=parse_bytes, show=format_bytes, metavar="SIZE")
    )
    """Target Parquet row-group size (``parquet.block.size``; e.g. 64MiB): large groups read
    sequentially fast."""
    shuffle_partitions: int = field(default=32, metadata=option(metavar="N"))
    """Partitions of the narrow de-duplication aggregate (``spark.sql.shuffle.partitions``; AQE
    coalesces them)."""
    allow_missing: bool = False
    """Process the interval even if some hourly partitions are missing (they are listed in the
    manifest); by default a missing hour is an error."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, metadata=option(cli=False))
    """Free-form producer notes copied into the manifest (e.g. the DAG run id); never read."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "max_lateness", parse_duration(self.max_lateness))
        set_(self, "features", tuple(self.features))
        set_(self, "dense_features", tuple(self.dense_features))
        if self.feature_preset not in FEATURE_PRESETS:
            raise ValueError(
                f"--feature-preset must be one of {', '.join(FEATURE_PRESETS)}, "
                f"got {self.feature_preset!r}"
            )
        if self.feature_preset != "default":
            preset = FEATURE_PRESETS[self.feature_preset]
            if (self.features, self.dense_features) not in (FEATURE_PRESETS["default"], preset):
                raise ValueError(
                    f"both a feature spec (--features) and --feature-preset "
                    f"{self.feature_preset} are set: give one or the other"
                )
            set_(self, "features", preset[0])
            set_(self, "dense_features", preset[1])
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(
                f"--format must be one of {', '.join(INPUT_FORMATS)}, got {self.input_format!r}"
            )
        validate_task_key(self.task_key)
        for name in ("k_support", "q_query", "min_support", "min_query", "num_buckets"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.min_support > self.k_support:
            raise ValueError(
                f"--min-support ({self.min_support}) cannot exceed K (--k {self.k_support})"
            )
        if self.min_query > self.q_query:
            raise ValueError(f"--min-query ({self.min_query}) cannot exceed Q (--q {self.q_query})")
        if self.num_buckets > 99_999:
            raise ValueError(
                f"--buckets must be at most 99999 (5-digit folder names), got {self.num_buckets}"
            )
        for name in ("cold_fraction", "valid_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.valid_cold_fraction < 1.0:
            raise ValueError(
                f"valid_cold_fraction must be in [0, 1) (a share of the cold tasks), got "
                f"{self.valid_cold_fraction}"
            )
        if self.valid_cold_fraction > 0 and self.cold_fraction == 0 and not self.cold_tasks:
            raise ValueError(
                "valid_cold_fraction > 0 needs cold tasks: set cold_fraction > 0 or name them "
                "with --cold-tasks FILE"
            )
        if self.max_lateness < timedelta(0):
            raise ValueError(f"--max-lateness must not be negative, got {self.max_lateness}")
        if self.row_group_bytes < (1 << 20):
            raise ValueError(
                f"--row-group-bytes must be at least 1 MiB, got {self.row_group_bytes}"
            )
        if self.shuffle_partitions < 1:
            raise ValueError(
                f"--shuffle-partitions must be positive, got {self.shuffle_partitions}"
            )
        if not self.features:
            raise ValueError("the feature spec has no sparse features")
        names = [f.name for f in self.features] + [d.name for d in self.dense_features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature spec: duplicate feature names {dupes}")


@dataclass(frozen=True, kw_only=True)
class EtlConfig(EtlSettings):
    """What the ETL reads, how it cuts episodes and where it writes: one interval's run.

    Built in Python (``EtlConfig(input=..., start="2026-11-01T00", ...)``), by ``metarec etl``
    from its options (generated from these fields), or by the loader from a TOML file plus dotted
    overrides (``metarec etl --config etl.toml k_support=16 --input ...``)."""

    input: str = field(metadata=option(metavar="URI"))
    """Raw log root (local path or any pyarrow.fs/Hadoop URI) holding ``dt=YYYY-MM-DD/hr=HH/``
    partitions."""
    output: str = field(metadata=option(metavar="URI"))
    """Output root; this interval goes to ``<output>/interval=<start>-<end>/`` (others
    untouched)."""
    start: datetime = field(metadata=option(parse=parse_hour, metavar="HOUR"))
    """Interval start, UTC hour, inclusive (e.g. 2026-11-01T00)."""
    end: datetime = field(metadata=option(parse=parse_hour, metavar="HOUR"))
    """Interval end, UTC hour, exclusive (e.g. 2026-11-02T00)."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "start", parse_hour(self.start))
        set_(self, "end", parse_hour(self.end))
        if not self.input or not self.output:
            raise ValueError(
                "both an input root (--input) and an output root (--output) are needed"
            )
        for name, t in (("start", self.start), ("end", self.end)):
            if (t.minute, t.second, t.microsecond) != (0, 0, 0):
                raise ValueError(
                    f"--{name} {t:%Y-%m-%dT%H:%M:%S} must be a whole UTC hour, e.g. 2026-11-01T05"
                )
        if self.end <= self.start:
            raise ValueError(
                f"--end ({self.end:%Y-%m-%dT%H}) must be after --start ({self.start:%Y-%m-%dT%H})"
            )
        super().__post_init__()

    @classmethod
    def of(cls, settings: EtlSettings, **interval: Any) -> EtlConfig:
        """``settings`` for one interval: ``EtlConfig.of(settings, input=, output=, start=, end=)``."""
        return cls(**{f: getattr(settings, f) for f in settings.__dataclass_fields__}, **interval)

    # Derived values -------------------------------------------------------------------------------

    @property
    def interval_id(self) -> str:
        """Folder name of this interval's output, e.g. ``interval=20261101T00-20261102T00``."""
        return f"interval={self.start:%Y%m%dT%H}-{self.end:%Y%m%dT%H}"

    @property
    def hours(self) -> list[datetime]:
        """The hourly partitions of ``[start, end)``."""
        n = int((self.end - self.start) / timedelta(hours=1))
        return [self.start + timedelta(hours=i) for i in range(n)]

    @property
    def warm_cutoff(self) -> datetime:
        """Episodes of warm tasks whose first query sample is at or after this time go to ``valid``."""
        return self.start + (1.0 - self.valid_fraction) * (self.end - self.start)

    @property
    def sparse_width(self) -> int:
        return sum(f.slots for f in self.features)

    def feature_specs(self) -> list[FeatureSpec]:
        """The sparse features as the manifest records them (with slot offsets)."""
        out, offset = [], 0
        for f in self.features:
            out.append(FeatureSpec(f.name, f.source, f.kind, f.buckets, f.slots, offset))
            offset += f.slots
        return out

    def dense_specs(self) -> list[DenseSpec]:
        return [
            DenseSpec(d.name, d.source, d.transform, i) for i, d in enumerate(self.dense_features)
        ]

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for the manifest (no wall-clock time, so reruns are byte-identical)."""
        d = asdict(self)
        d["start"], d["end"] = iso(self.start), iso(self.end)
        d["max_lateness_s"] = int(d.pop("max_lateness").total_seconds())
        return d


def iso(t: datetime) -> str:
    """``2026-11-01T00:00:00Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)
