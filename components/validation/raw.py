"""``validate_raw``: systemic-problem checks on the raw hourly partitions of an interval.

Raw logs carry a little corruption that the ETL quarantines row by row, so this suite's row-level
checks tolerate ``Thresholds.max_bad_fraction`` bad rows each; it exists to stop an interval whose
producer broke (half the user ids null, every click 1, prices written as text, a column dropped,
a day with a tenth of the usual traffic) before it is turned into training data.

Files are listed by the ETL's own extract step (same rules for which files count and how the
format is detected); missing hourly partitions are a failed check, not an error.

Example:
    >>> from datetime import datetime, UTC
    >>> report = validate_raw("data/raw", datetime(2026, 11, 1, tzinfo=UTC),
    ...                       datetime(2026, 11, 2, tzinfo=UTC), report_dir="out/dq")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import logging

from components.raw_schema import RAW_COLUMNS

from .report import CheckResult, ValidationReport
from .runner import default_spark, skipped
from .suites import Thresholds

log = logging.getLogger(__name__)
SUITE = "raw"


def validate_raw(
    input_uri: str,
    start: dt.datetime,
    end: dt.datetime,
    spark=None,
    *,
    fmt: str = "auto",
    previous: str | None = None,
    find_previous: bool = True,
    thresholds: Thresholds | None = None,
    report_dir: str | None = None,
) -> ValidationReport:
    """Validate the raw partitions of ``[start, end)`` under ``input_uri`` (JSONL or Parquet).

    Args:
        input_uri: raw root with ``dt=YYYY-MM-DD/hr=HH`` partitions (local path or URI).
        start, end: the interval, UTC, whole hours.
        spark: a SparkSession; default: ``components.etl.session.build_spark()``.
        fmt: ``auto`` (from the file names), ``jsonl``, ``jsonl.gz`` or ``parquet``.
        previous: raw root holding the previous interval (the equally long one just before
            ``start``); default ``input_uri`` when ``find_previous``. Its row count sets the
            row-count band; when its partitions are incomplete the check is skipped (and said so).
        thresholds: tolerances and bands (``Thresholds()`` by default).
        report_dir: where to write ``report.json`` and ``report.md`` (not written if None).

    Raises:
        FileNotFoundError: no such root. ValueError: bad interval, mixed formats, an empty
            interval, corrupt Parquet files. DataUnavailableError: Spark cannot read the data.
    """
    from . import profile as P
    from . import sources as S
    from . import suites
    from .runner import gx_version, run_expectations

    thresholds = thresholds or Thresholds()
    listing = S.list_raw_partitions(input_uri, start, end, fmt)
    target = f"{input_uri} [{start:%Y-%m-%dT%H}, {end:%Y-%m-%dT%H})"
    report = ValidationReport(SUITE, SUITE, target, [_partitions_check(listing, start, end)])
    report.gx_version = gx_version()
    spark = default_spark(spark)
    raw, present = S.read_raw(spark, listing)
    params = {
        "ctr_min": thresholds.ctr_min,
        "ctr_max": thresholds.ctr_max,
        "interval_start": start,
        "interval_end": end,
    }
    prev_root = previous or (input_uri if find_previous else None)
    prev_rows, why = _previous_rows(spark, prev_root, start, end, listing.fmt)
    if prev_rows is not None:
        params["row_count_min"], params["row_count_max"] = thresholds.row_count_band(prev_rows)
        report.notes.append(
            f"previous interval: {prev_rows} rows -> band "
            f"[{params['row_count_min']}, {params['row_count_max']}]"
        )
    else:
        report.checks.append(
            skipped("row_count_vs_previous", SUITE, "rows within the previous interval's band", why)
        )
    report.parameters = {
        **{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in params.items()},
        "max_bad_fraction": thresholds.max_bad_fraction,
        "row_count_ratio": thresholds.row_count_ratio,
        "format": listing.fmt,
    }
    if listing.fmt == "parquet":
        schema_checks = suites.raw_schema_expectations(list(RAW_COLUMNS))
        report.checks += run_expectations(f"{SUITE}.schema", schema_checks, raw.select(*present))
    else:
        report.checks.append(
            skipped(
                "columns_present",
                SUITE,
                "every column of the raw schema present",
                "JSONL has no schema: a missing key reads as null, which the not_null checks "
                "of required fields catch",
            )
        )
    try:  # one pass over the raw files: the profile is not cached
        expectations = suites.raw_expectations(thresholds, with_previous=prev_rows is not None)
        report.checks += run_expectations(
            SUITE, expectations, P.raw_profile(raw), params, index_columns=["event_id"]
        )
    except ValueError:
        raise
    except Exception as e:  # Spark could not read or process the files
        raise S.DataUnavailableError(f"{target}: cannot read the raw data: {e}") from e
    if report_dir:
        report.write(report_dir)
    log.info("raw validation %s: %s", "passed" if report.success else "FAILED", target)
    return report


def _partitions_check(listing, start: dt.datetime, end: dt.datetime) -> CheckResult:
    hours = int((end - start) / dt.timedelta(hours=1))
    missing = listing.missing_hours
    return CheckResult(
        "partitions_present",
        SUITE,
        "every hourly partition of the interval present",
        success=not missing,
        expectation="precheck",
        observed=f"{hours - len(missing)} of {hours} present",
        unexpected_count=len(missing),
        examples=missing[:5],
    )


def _previous_rows(spark, root: str | None, start, end, fmt: str) -> tuple[int | None, str]:
    """Rows of the equally long interval before ``start`` under ``root``, or ``(None, why not)``:
    Parquet's from the footers (read by the listing), JSONL's counted by Spark."""
    from . import sources as S

    if root is None:
        return None, "no previous interval given (--no-previous)"
    p_start = start - (end - start)
    span = f"previous interval [{p_start:%Y-%m-%dT%H}, {start:%Y-%m-%dT%H}) under {root}"
    try:
        prev = S.list_raw_partitions(root, p_start, start, fmt)
    except (ValueError, FileNotFoundError) as e:
        return None, f"{span} not usable: {e}"
    if prev.missing_hours:
        return None, f"{span} incomplete ({len(prev.missing_hours)} hourly partitions missing)"
    if prev.parquet_rows is not None:  # the footers' count, as listed: no Spark job
        return prev.parquet_rows, ""
    try:  # JSONL: one line = one row, as the suite reads them
        return S.read_raw(spark, prev)[0].count(), ""
    except Exception as e:  # unreadable previous data must not hide this interval's verdict
        return None, f"{span} unreadable: {e}"
