"""Run a list of expectations on a Spark DataFrame with an ephemeral GX context.

GX Core 1.x wiring: ``gx.get_context(mode="ephemeral")`` -> ``data_sources.add_spark`` -> a
dataframe asset -> a whole-dataframe batch definition -> ``ExpectationSuite`` ->
``ValidationDefinition``; ``vd.run(batch_parameters={"dataframe": df},
expectation_parameters=...)``. Nothing is persisted by GX: the report is ours (``report.py``).

GX computes its metrics in several Spark jobs over the frame, so callers pass a persisted,
already-derived (profile) frame: the cache holds scalars per row, not the raw lists.
"""

from __future__ import annotations

import copy
import logging
import uuid
from typing import Any

from .report import CheckResult, from_gx_result

log = logging.getLogger(__name__)

# Pass 1 asks only for the verdict of row-level (map) checks: 1 Spark job per ~5 checks instead of
# ~2 jobs each. Pass 2 reruns the failed ones with SUMMARY (counts and up to 5 unexpected values).
# Aggregate checks (row count, mean, column set) always report their observed value (BASIC).
VERDICT_ONLY = {"result_format": "BOOLEAN_ONLY"}
AGGREGATE = {"result_format": "BASIC"}
DETAILED = {"result_format": "SUMMARY", "partial_unexpected_count": 5}


def default_spark(spark=None):
    """``spark`` itself, else the project's session (``components.etl.session.build_spark``)."""
    if spark is not None:
        return spark
    from components.etl.session import build_spark

    return build_spark("metarec-validate")


def persist(df):
    """Cache a profile frame for the GX runs, which read it in several Spark jobs."""
    from pyspark import StorageLevel

    return df.persist(StorageLevel.MEMORY_AND_DISK)


def skipped(name: str, suite: str, expected: str, why: str) -> CheckResult:
    """A check that could not be evaluated (not a failure); the report shows ``why``."""
    return CheckResult(name, suite, expected, success=True, skipped=True, note=why)


def gx_version() -> str:
    import great_expectations as gx

    return gx.__version__


def _quiet_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _is_row_level(expectation) -> bool:
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )

    return isinstance(
        expectation, ColumnMapExpectation | ColumnPairMapExpectation | MulticolumnMapExpectation
    )


def _run(context, name: str, expectations: list, df, parameters: dict, result_format: dict) -> list:
    """One ValidationDefinition run; fresh copies of the expectations (a suite owns what it holds)."""
    import great_expectations as gx

    if not expectations:
        return []
    tag = uuid.uuid4().hex[:8]
    # persist=False: the caller caches (and uncaches) the frame; GX would cache it for good.
    source = context.data_sources.add_spark(name=f"spark-{tag}", persist=False)
    batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}-{tag}"))
    for e in expectations:
        e = copy.deepcopy(e)
        e.id = None
        suite.add_expectation(e)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}-{tag}", data=batch, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": df},
        expectation_parameters=parameters,
        result_format=result_format,
    )
    return result.to_json_dict()["results"]


def run_expectations(
    suite_name: str,
    expectations: list,
    df,
    parameters: dict[str, Any] | None = None,
    index_columns: list[str] | None = None,
) -> list[CheckResult]:
    """Validate ``df`` against ``expectations``; one :class:`CheckResult` each, in input order.

    Args:
        suite_name: reported as the checks' suite.
        expectations: GX expectation objects (``suites.*_expectations``), each with a unique
            ``meta["check"]`` name; they are copied, not modified.
        df: a Spark DataFrame (the batch).
        parameters: values of the ``{"$PARAMETER": name}`` bounds.
        index_columns: columns that identify a row (``task_key``, ``episode``), shown with the
            unexpected values of a failed row-level check.
    """
    names = [e.meta["check"] for e in expectations]
    assert len(set(names)) == len(names), f"duplicate check names in {suite_name}: {names}"
    if not expectations:
        return []
    params = parameters or {}
    context = _quiet_context()
    rows = [e for e in expectations if _is_row_level(e)]
    aggregates = [e for e in expectations if not _is_row_level(e)]
    log.info("validating %s: %d expectations", suite_name, len(expectations))
    results = _run(context, suite_name, aggregates, df, params, AGGREGATE)
    results += _run(context, suite_name, rows, df, params, VERDICT_ONLY)
    by_name = {r["expectation_config"]["meta"]["check"]: r for r in results}
    failed = [e for e in rows if not by_name[e.meta["check"]]["success"]]
    detailed = {**DETAILED, "unexpected_index_column_names": list(index_columns or [])}
    for r in _run(context, suite_name, failed, df, params, detailed):
        by_name[r["expectation_config"]["meta"]["check"]] = r
    checks = [from_gx_result(by_name[n], suite_name) for n in names]
    for c in checks:
        if c.success and not c.observed:
            c.observed, c.unexpected_count = "no unexpected values", 0
    return checks
