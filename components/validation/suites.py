"""The expectation suites, as code (GX Core 1.x): raw logs, episode profile, episode summary.

Every expectation carries ``meta["check"]``, a stable name the report, the tests and the manifest
use (``id_range:user_id:max``, ``support_older_than_query``, ``row_count_vs_previous`` ...), and a
``description`` saying what is expected in words. Bounds that change per run (the interval, the
CTR band, the row-count band from the previous interval) are expectation parameters
(``{"$PARAMETER": name}``) filled in at ``ValidationDefinition.run``; bounds fixed by the data
contract (K, Q, buckets, list widths) are built from the manifest.

The raw suite looks for SYSTEMIC problems: raw logs carry a little corruption that the ETL
quarantines row by row, so its row-level checks have a ``mostly`` tolerance
(``Thresholds.max_bad_fraction``); the episode suites have none — the ETL output must be exact.

great_expectations is imported inside the functions (it takes seconds to import).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from components.raw_schema import fields_of
from trainer.data.contract import ALL_SPLITS, Manifest

from .profile import LIST_COLUMNS, NOT_NULL_COLUMNS, SUMMARY_METRICS, list_widths


@dataclass(frozen=True)
class Thresholds:
    """Tolerances and bands of the suites (CLI flags of ``metarec validate``)."""

    max_bad_fraction: float = 0.02
    """Raw logs: share of rows allowed to fail a row-level check (nulls, types, ranges,
    duplicates, malformed lines) before the check fails: ``mostly = 1 - max_bad_fraction``."""
    ctr_min: float = 0.001
    """Lowest plausible click rate (valid click labels, whole interval)."""
    ctr_max: float = 0.5
    """Highest plausible click rate. Ad logs sit at 0.5-10 %. A dataset whose label rule is not an
    ad click (MovieLens: rating >= 4, 55 % of the ratings) brings its own band: see
    :data:`SOURCE_THRESHOLDS`."""
    row_count_ratio: float = 3.0
    """Rows (raw) or episodes must lie within [previous / ratio, previous * ratio] of the previous
    interval's; the check is skipped, and the report says so, when there is no previous interval."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction < 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1), got {self.max_bad_fraction}")
        if not 0.0 <= self.ctr_min <= self.ctr_max <= 1.0:
            raise ValueError(
                f"need 0 <= ctr_min <= ctr_max <= 1, got ctr_min={self.ctr_min} ctr_max={self.ctr_max}"
            )
        if not self.row_count_ratio >= 1.0:
            raise ValueError(f"row_count_ratio must be >= 1, got {self.row_count_ratio}")

    @property
    def mostly(self) -> float:
        return 1.0 - self.max_bad_fraction

    def row_count_band(self, previous: int) -> tuple[int, int]:
        """``[ceil(previous / ratio), floor(previous * ratio)]``."""
        return math.ceil(previous / self.row_count_ratio), math.floor(
            previous * self.row_count_ratio
        )

    def flags(self) -> list[str]:
        """The ``metarec validate`` options that give these bounds: each one that differs from
        the default (an ad log's), e.g. ``["--ctr-min", "0.1", "--ctr-max", "0.9"]``."""
        default, out = Thresholds(), []
        for name in ("row_count_ratio", "max_bad_fraction", "ctr_min", "ctr_max"):
            if getattr(self, name) != getattr(default, name):
                out += [f"--{name.replace('_', '-')}", f"{getattr(self, name):g}"]
        return out


SOURCE_THRESHOLDS: dict[str, Thresholds] = {
    "ad_log": Thresholds(),
    "movielens": Thresholds(ctr_min=0.1, ctr_max=0.9, row_count_ratio=1000.0),
    "talkingdata": Thresholds(ctr_min=0.0002, ctr_max=0.05),
}
"""The bounds of each kind of source, selected by the adapter that wrote it (``metarec adapt``
prints them in its next steps as ``metarec validate`` options; ``Thresholds.flags``):

``ad_log``
    Impression logs (the generator, Taobao, Ali-CCP): the defaults of :class:`Thresholds`.
``movielens``
    MovieLens ratings (100K and 1M; click = rating >= 4). Click rate 55 % (100K) and 57.5 % (1M)
    overall, 17 to 81 % over single days of MovieLens-100K with >= 200 ratings (a few users
    dominate each day, each with their own taste), so the band [0.1, 0.9] only catches a broken
    label rule (all 0 or all 1), as the ad-log band does. Volume follows a few users' sessions,
    not traffic: MovieLens-100K's days hold 1 to 3,550 ratings and consecutive days differ by
    2.2x (median) to 727x (most), so the row-count ratio is 1000 (only an empty or absurd
    interval fails), against 3 for an ad log's steady traffic.
``talkingdata``
    TalkingData AdTracking (every row a click; click = is_attributed, the app download): 0.25 %
    of the clicks of the full train.csv, 0.23 % of train_sample.csv; the band [0.0002, 0.05]
    (the ad-log floor 0.001 is too close to the mean for single hours). Row volume is steady
    ad traffic: the ad-log ratio stays.
"""


def _param(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


def _exp(cls_name: str, check: str, description: str, **kwargs: Any):
    import great_expectations.expectations as gxe

    return getattr(gxe, cls_name)(meta={"check": check}, description=description, **kwargs)


def row_count_expectation(what: str):
    """``row_count_vs_previous``: rows within the band around the previous interval's count."""
    return _exp(
        "ExpectTableRowCountToBeBetween",
        "row_count_vs_previous",
        f"{what} within [previous / ratio, previous * ratio] of the previous interval",
        min_value=_param("row_count_min"),
        max_value=_param("row_count_max"),
    )


# ---------------------------------------------------------------------------------------------
# Raw logs (validated on profile.raw_profile)

RAW_PARAMETERS = ("ctr_min", "ctr_max", "interval_start", "interval_end")


def raw_expectations(thresholds: Thresholds, *, with_previous: bool) -> list:
    """Expectations on ``profile.raw_profile``; parameters: ``RAW_PARAMETERS`` (+ row counts)."""
    mostly = thresholds.mostly
    tol = f"(at most {thresholds.max_bad_fraction:.1%} bad rows)"
    out = [
        _exp("ExpectTableRowCountToBeBetween", "rows_nonzero", "at least one row", min_value=1),
        _exp(
            "ExpectColumnValuesToBeInSet",
            "malformed_records",
            f"lines parse as JSON objects {tol}",
            column="malformed",
            value_set=[False],
            mostly=mostly,
        ),
    ]
    for f in (*fields_of("id"), *fields_of("time", "label")):
        if f.required:
            out.append(
                _exp(
                    "ExpectColumnValuesToNotBeNull",
                    f"not_null:{f.name}",
                    f"required field {f.name} present and well-typed {tol}",
                    column=f.name,
                    mostly=mostly,
                )
            )
    for f in fields_of("time", "dense", "label"):
        out.append(
            _exp(
                "ExpectColumnValuesToBeInSet",
                f"type:{f.name}",
                f"{f.name} values of the right type where present {tol}",
                column=f"{f.name}__parses",
                value_set=[True],
                mostly=mostly,
            )
        )
    out.append(
        _exp(  # distinct / non-null ids: an aggregate (one pass), and 1 - it = the extra copies
            "ExpectColumnProportionOfUniqueValuesToBeBetween",
            "unique:event_id",
            f"event_id unique: distinct ids / rows >= {mostly:g} (replays are quarantined by the ETL)",
            column="event_id",
            min_value=mostly,
        )
    )
    for f in fields_of("label"):
        out.append(
            _exp(
                "ExpectColumnValuesToBeInSet",
                f"label_values:{f.name}",
                f"{f.name} in {{0, 1}} {tol}",
                column=f.name,
                value_set=[0, 1],
                mostly=mostly,
            )
        )
    for f in fields_of("dense"):
        out.append(
            _exp(
                "ExpectColumnValuesToBeBetween",
                f"range:{f.name}",
                f"{f.name} finite, in [{f.min_value:g}, {f.max_value:g}] {tol}",
                column=f.name,
                min_value=f.min_value,
                max_value=f.max_value,
                mostly=mostly,
            )
        )
    out.append(
        _exp(
            "ExpectColumnMeanToBeBetween",
            "label_rate:click",
            f"click rate (mean of valid click labels) within "
            f"[{thresholds.ctr_min:g}, {thresholds.ctr_max:g}]",
            column="click_label",
            min_value=_param("ctr_min"),
            max_value=_param("ctr_max"),
        )
    )
    out.append(
        _exp(
            "ExpectColumnValuesToBeBetween",
            "event_time_in_interval",
            f"event_time within [start, end) of the interval {tol}",
            column="event_time",
            min_value=_param("interval_start"),
            max_value=_param("interval_end"),
            strict_max=True,
            mostly=mostly,
        )
    )
    if with_previous:
        out.append(row_count_expectation("raw rows"))
    return out


def raw_schema_expectations(columns: list[str]) -> list:
    """On the frame as read (Parquet): every column of the raw schema present."""
    return [
        _exp(
            "ExpectTableColumnsToMatchSet",
            "columns_present",
            "every column of the raw schema present (extra columns allowed)",
            column_set=list(columns),
            exact_match=False,
        )
    ]


# ---------------------------------------------------------------------------------------------
# Episodes (validated on profile.episode_profile and profile.split_summary)

EPISODE_PARAMETERS = ("interval_start_ms", "interval_end_ms")


def episode_expectations(manifest: Manifest, *, with_interval: bool, with_previous: bool) -> list:
    """Expectations on ``profile.episode_profile`` (one row per episode), no tolerance."""
    k, q = manifest.k_support, manifest.q_query
    widths = list_widths(manifest)
    out = [
        _exp(
            "ExpectTableRowCountToBeBetween",
            "episodes_nonzero",
            "at least one episode",
            min_value=1,
        )
    ]
    for c in NOT_NULL_COLUMNS:
        what = f"list column {c[4:]} not null" if c.startswith("len_") else f"{c} not null"
        out.append(_exp("ExpectColumnValuesToNotBeNull", f"not_null:{c}", what, column=c))
    out.append(
        _exp(
            "ExpectColumnValuesToBeBetween",
            "no_null_elements",
            "no null value inside any list column",
            column="null_elements",
            min_value=0,
            max_value=0,
        )
    )
    out.append(
        _exp(
            "ExpectColumnValuesToBeInSet",
            "split_in_set",
            f"split in {{{', '.join(ALL_SPLITS)}}}",
            column="split",
            value_set=list(ALL_SPLITS),
        )
    )
    for c in LIST_COLUMNS:
        n = (k + q) * widths[c]
        out.append(
            _exp(
                "ExpectColumnValuesToBeInSet",
                f"list_length:{c}",
                f"len({c}) = (K+Q) * {widths[c]} = {n}",
                column=f"len_{c}",
                value_set=[n],
            )
        )
    out += [
        _exp(
            "ExpectColumnValuesToBeBetween",
            "n_support_range",
            f"n_support in [min_support, K] = [{manifest.min_support}, {k}]",
            column="n_support",
            min_value=manifest.min_support,
            max_value=k,
        ),
        _exp(
            "ExpectColumnValuesToBeBetween",
            "n_query_range",
            f"n_query in [min_query, Q] = [{manifest.min_query}, {q}]",
            column="n_query",
            min_value=manifest.min_query,
            max_value=q,
        ),
    ]
    # Aggregates, so all features cost one Spark pass, and the observed min/max id is reported.
    for f in manifest.features:
        out.append(
            _exp(
                "ExpectColumnMinToBeBetween",
                f"id_range:{f.name}:min",
                f"smallest {f.name} id >= 0",
                column=f"min_id__{f.name}",
                min_value=0,
            )
        )
        out.append(
            _exp(
                "ExpectColumnMaxToBeBetween",
                f"id_range:{f.name}:max",
                f"largest {f.name} id < buckets = {f.buckets}",
                column=f"max_id__{f.name}",
                max_value=f.buckets - 1,
            )
        )
    for col, check, what in (
        ("padding_nonzero", "padding_is_zero", "padding positions hold 0 in every list column"),
        ("click_invalid", "label_values:click", "click labels of real samples in {0, 1}"),
        (
            "conversion_invalid",
            "label_values:conversion",
            "conversion labels of real samples in {-1 (unknown), 0, 1}",
        ),
        ("dense_nonfinite", "dense_finite", "dense values finite (no NaN/inf)"),
    ):
        out.append(
            _exp("ExpectColumnValuesToBeBetween", check, what, column=col, min_value=0, max_value=0)
        )
    out += [
        _exp(
            "ExpectColumnPairValuesAToBeGreaterThanB",
            "support_older_than_query",
            "every support sample strictly older than every query sample (max support time < min query time)",
            column_A="query_min_time_ms",
            column_B="support_max_time_ms",
            or_equal=False,
            ignore_row_if="either_value_is_missing",
        ),
        _exp(
            "ExpectColumnPairValuesToBeEqual",
            "task_id_matches_hash",
            'task_id = signed_hash("task", task_key) (hash contract)',
            column_A="task_id",
            column_B="expected_task_id",
        ),
        _exp(
            "ExpectCompoundColumnsToBeUnique",
            "unique_task_episode",
            "(task_key, episode) unique",
            column_list=["task_key", "episode"],
        ),
        _exp(
            "ExpectColumnValuesToBeInSet",
            "cold_tasks_not_in_training",
            "no task_key in both a cold split (test_cold, valid_cold) and train/valid",
            column="cold_and_warm",
            value_set=[False],
        ),
    ]
    if with_interval:
        out += [
            _exp(
                "ExpectColumnValuesToBeBetween",
                "event_time_in_interval:min",
                "sample times >= interval start",
                column="min_time_ms",
                min_value=_param("interval_start_ms"),
            ),
            _exp(
                "ExpectColumnValuesToBeBetween",
                "event_time_in_interval:max",
                "sample times < interval end",
                column="max_time_ms",
                max_value=_param("interval_end_ms"),
                strict_max=True,
            ),
        ]
    if with_previous:
        out.append(row_count_expectation("episodes"))
    return out


def summary_expectations(expected: dict[tuple[str, str], int], thresholds: Thresholds) -> list:
    """Expectations on the values of ``profile.split_summary`` (a one-row frame, judged by
    ``runner.run_on_values``): counts equal the manifest's, click rate in band.

    Args:
        expected: ``(split, metric) -> count`` from the manifest (0 for a split it does not list).
    """
    out = []
    for (split, m), count in sorted(expected.items()):
        assert m in SUMMARY_METRICS, m
        out.append(
            _exp(  # a one-row frame: its max is the observed count, shown in the report
                "ExpectColumnMaxToBeBetween",
                f"count_matches_manifest:{split}:{m}",
                f"{split} {m} = {count} (manifest)",
                column=f"{split}__{m}",
                min_value=count,
                max_value=count,
            )
        )
    out.append(
        _exp(
            "ExpectColumnMaxToBeBetween",
            "label_rate:click",
            f"click rate of all real samples within "
            f"[{thresholds.ctr_min:g}, {thresholds.ctr_max:g}]",
            column="click_rate",
            min_value=_param("ctr_min"),
            max_value=_param("ctr_max"),
        )
    )
    return out
