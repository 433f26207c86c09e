"""``validate_episodes``: the gate between the ETL and the trainer, for one interval's output.

Order of work: read the manifest (missing -> ``ContractError``, exit 2); list the files and read
their Parquet footers (pre-checks: layout, schema, files vs. the manifest's list; a schema problem
stops here, as the profile cannot be computed); read the files one at a time with pyarrow into
the per-episode profile (``profile.episode_profile``: no Spark, no JVM) and run the profile suite
on it (``runner.run_on_table``); judge the summary suite (counts per split vs. the manifest, the
interval's click rate) on the profile's per-split sums; write
``<root>/_validation/report.{json,md}``; record the verdict in ``<root>/_manifest.json``.

Example:
    >>> report = validate_episodes("out/episodes/interval=20261101T00-20261102T00")  # doctest: +SKIP
    >>> report.success, [c.name for c in report.failed]                              # doctest: +SKIP
    (False, ['support_older_than_query'])
"""

from __future__ import annotations

import logging
from typing import Any

from trainer.data.contract import SPLITS, Manifest

from .record import record_in_manifest
from .report import REPORT_DIR, CheckResult, ValidationReport
from .runner import skipped
from .suites import Thresholds

log = logging.getLogger(__name__)
SUITE = "episodes"
INDEX_COLUMNS = ["split", "task_key", "episode"]
"""Shown with every unexpected value of a failed row-level check, to find the episode."""


def validate_episodes(
    root: str,
    *,
    previous: str | None = None,
    find_previous: bool = True,
    thresholds: Thresholds | None = None,
    write_report: bool = True,
    record: bool = True,
) -> ValidationReport:
    """Validate one ETL output directory (an interval) against the episode contract.

    Args:
        root: the interval's directory (holds ``_manifest.json``), local path or URI.
        previous: the previous interval's output directory for the row-count band; default: the
            sibling whose manifest interval ends where this one starts (if ``find_previous``).
        find_previous: look for that sibling when ``previous`` is not given.
        thresholds: CTR band and row-count ratio (``Thresholds()`` by default).
        write_report: write ``<root>/_validation/report.json`` and ``report.md``.
        record: rewrite ``<root>/_manifest.json`` atomically with the ``validation`` entry.

    Returns:
        The report; ``report.exit_code`` is 0 when every evaluated check held, else 1.

    Raises:
        ContractError: no/unsupported manifest. DataUnavailableError: no or unreadable files.
    """
    import pyarrow as pa

    from . import profile as P
    from . import sources as S
    from . import suites
    from .runner import gx_version, run_on_table, run_on_values

    thresholds = thresholds or Thresholds()
    manifest, manifest_dict = S.load_episode_manifest(root)
    files = S.list_episode_files(root)
    report = ValidationReport(SUITE, SUITE, root, _prechecks(files, manifest))
    report.gx_version = gx_version()
    if files.schema_problems or files.layout_problems:
        report.notes.append("layout/schema pre-checks failed: the GX suites were not run")
        return _finish(report, root, manifest_dict, write_report, record)

    if previous is None and find_previous:
        previous = S.find_previous_episodes(root)
    params = _parameters(report, manifest, thresholds, previous)
    metrics = [
        m
        for m in P.SUMMARY_METRICS
        if manifest.splits and all(m in c for c in manifest.splits.values())
    ]
    for m in sorted(set(P.SUMMARY_METRICS) - set(metrics)):
        report.checks.append(
            skipped(
                f"count_matches_manifest:{m}",
                f"{SUITE}.summary",
                f"{m} per split equal to the manifest's",
                f"the manifest has no {m} counts",
            )
        )
    splits = sorted(set(SPLITS) | set(manifest.splits))
    expected = {(s, m): int(manifest.splits.get(s, {}).get(m, 0)) for s in splits for m in metrics}

    try:  # one pass over the episode files (pyarrow, no Spark): the profile, then both suites
        profile = P.episode_profile(S.read_episode_files(files), manifest)
    except (OSError, pa.ArrowException) as e:  # e.g. a value the profile's int64 cannot hold
        raise S.DataUnavailableError(f"{root}: cannot profile the episode data: {e}") from e
    expectations = suites.episode_expectations(
        manifest,
        with_interval="interval_start_ms" in params,
        with_previous="row_count_min" in params,
    )
    report.checks += run_on_table(SUITE, expectations, profile, params, INDEX_COLUMNS)
    summary = P.split_summary(profile, splits)
    report.checks += run_on_values(
        f"{SUITE}.summary", suites.summary_expectations(expected, thresholds), summary, params
    )
    return _finish(report, root, manifest_dict, write_report, record)


def _prechecks(files, manifest: Manifest) -> list[CheckResult]:
    """Layout, schema and files-vs-manifest, from the listing and the Parquet footers."""
    listed = {f.get("path"): f for f in manifest.files if isinstance(f, dict)}
    on_disk = set(files.paths)
    file_problems = [f"{p}: on storage, not in the manifest" for p in sorted(on_disk - set(listed))]
    file_problems += [
        f"{p}: in the manifest, not on storage" for p in sorted(set(listed) - on_disk)
    ]
    for p in sorted(on_disk & set(listed)):
        if "rows" in listed[p] and int(listed[p]["rows"]) != files.rows[p]:
            file_problems.append(f"{p}: {files.rows[p]} rows, manifest says {listed[p]['rows']}")
    checks = []
    for name, expected, problems in (
        ("layout", "data files are split=<name>/.../*.parquet", files.layout_problems),
        ("schema", "every file has the contract's columns and types", files.schema_problems),
        ("files_match_manifest", "files on storage = the manifest's files list", file_problems),
    ):
        ok = f"{len(files.paths)} files ok"
        checks.append(
            CheckResult(
                name,
                SUITE,
                expected,
                success=not problems,
                observed=f"{len(problems)} problem(s)" if problems else ok,
                expectation="precheck",
                unexpected_count=len(problems),
                examples=problems[:5],
            )
        )
    return checks


def _parameters(
    report: ValidationReport, manifest: Manifest, thresholds: Thresholds, previous: str | None
) -> dict[str, Any]:
    """The run's expectation parameters; checks that cannot run are added to ``report`` as skipped."""
    from . import sources as S

    params: dict[str, Any] = {"ctr_min": thresholds.ctr_min, "ctr_max": thresholds.ctr_max}
    bounds = S.interval_bounds(manifest)
    if bounds is not None:
        params["interval_start_ms"] = int(bounds[0].timestamp() * 1000)
        params["interval_end_ms"] = int(bounds[1].timestamp() * 1000)
    else:
        report.checks.append(
            skipped(
                "event_time_in_interval",
                SUITE,
                "sample times within the interval",
                "the manifest's interval has no start/end",
            )
        )
    if previous is not None:
        prev_total = S.episode_total(S.load_manifest(previous))
        params["row_count_min"], params["row_count_max"] = thresholds.row_count_band(prev_total)
        report.notes.append(
            f"previous interval {previous}: {prev_total} episodes -> band "
            f"[{params['row_count_min']}, {params['row_count_max']}]"
        )
    else:
        report.checks.append(
            skipped(
                "row_count_vs_previous",
                SUITE,
                "episodes within the previous interval's band",
                "no previous interval (none given, no sibling output ends where this one starts)",
            )
        )
    report.parameters = {**params, "row_count_ratio": thresholds.row_count_ratio}
    return params


def _finish(
    report: ValidationReport, root: str, manifest: dict, write_report: bool, record: bool
) -> ValidationReport:
    if write_report:
        report.write(root.rstrip("/") + "/" + REPORT_DIR)
    if record:
        record_in_manifest(root, manifest, report)
    log.info("episodes validation %s: %s", "passed" if report.success else "FAILED", root)
    return report
