"""Run a list of GX expectations on a Spark DataFrame in ONE pass over it.

The expectations are GX Core 1.x objects (``suites.py``); ``metrics.py`` turns each into the
aggregates its verdict needs, all of them are computed in one ``DataFrame.agg`` (one Spark job),
and each verdict is judged on the collected metrics with GX's semantics (``mostly``, strict bounds,
nulls not considered, parameters). Only the row-level checks that failed cost one more small query
each, for their examples. Nothing is persisted: the report is ours (``report.py``).

Until issue 14, GX's ``ValidationDefinition.run`` computed the metrics itself, in one or more Spark
jobs per expectation (~30 s on the demo interval).
"""

from __future__ import annotations

import logging
from typing import Any

from .report import CheckResult, from_gx_result

log = logging.getLogger(__name__)


def default_spark(spark=None):
    """``spark`` itself, else the project's session (``components.etl.session.build_spark``)."""
    if spark is not None:
        return spark
    from components.etl.session import build_spark

    return build_spark("metarec-validate")


def skipped(name: str, suite: str, expected: str, why: str) -> CheckResult:
    """A check that could not be evaluated (not a failure); the report shows ``why``."""
    return CheckResult(name, suite, expected, success=True, skipped=True, note=why)


def gx_version() -> str:
    import great_expectations as gx

    return gx.__version__


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
            ``meta["check"]`` name; not modified.
        df: a Spark DataFrame (the batch).
        parameters: values of the ``{"$PARAMETER": name}`` bounds.
        index_columns: columns that identify a row (``task_key``, ``episode``), shown with the
            unexpected values of a failed row-level check.
    """
    return run_with_aggregates(suite_name, expectations, df, parameters, index_columns)[0]


def run_with_aggregates(
    suite_name: str,
    expectations: list,
    df,
    parameters: dict[str, Any] | None = None,
    index_columns: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[list[CheckResult], dict[str, Any]]:
    """:func:`run_expectations`, with ``extra`` aggregate Columns (by name) computed in the same
    pass; returns the checks and the extra aggregates' values (for :func:`run_on_values`)."""
    from pyspark.sql import functions as F

    from . import metrics as M

    names = [e.meta["check"] for e in expectations]
    assert len(set(names)) == len(names), f"duplicate check names in {suite_name}: {names}"
    if not expectations and not extra:
        return [], {}
    params = parameters or {}
    log.info("validating %s: %d expectations in one pass", suite_name, len(expectations))
    df = M.prepare(df, expectations)
    plans = [M.plan(e, params, i) for i, e in enumerate(expectations)]
    aggregates = {"__rows": F.count(F.lit(1))}
    for p in plans:
        aggregates.update(p.aggregates)
    extra = extra or {}
    assert not set(extra) & set(aggregates), f"extra aggregate names clash: {sorted(extra)}"
    aggregates.update(extra)
    row = df.agg(*(c.alias(n) for n, c in aggregates.items())).collect()[0].asDict()
    results = [M.judge(p, row, row["__rows"], df.columns, params) for p in plans]
    for p, r in zip(plans, results, strict=True):
        if p.unexpected is not None and not r["success"]:
            r["result"].update(M.examples(df, p, list(index_columns or [])))
    checks = [from_gx_result(r, suite_name) for r in results]
    return checks, {n: row[n] for n in extra}


def run_on_values(
    suite_name: str, expectations: list, values: dict[str, Any], parameters: dict | None = None
) -> list[CheckResult]:
    """Judge expectations meant for a ONE-row frame whose columns are ``values`` (already
    aggregated, e.g. by :func:`run_with_aggregates`): a column's min, max and mean are its value.
    Any other expectation type fails closed (its note says so)."""
    from . import metrics as M

    params = parameters or {}
    log.info("validating %s: %d expectations on aggregated values", suite_name, len(expectations))
    results = []
    for i, e in enumerate(expectations):
        p = M.plan_on_values(e, params, i)
        metrics = (
            {}
            if p.error
            else {n: values.get(e.configuration.kwargs["column"]) for n in p.aggregates}
        )
        results.append(M.judge(p, metrics, 1, list(values), params))
    return [from_gx_result(r, suite_name) for r in results]
