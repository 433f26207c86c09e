"""Run a list of GX expectations on a Spark DataFrame, or an Arrow table, in ONE pass over it.

The expectations are GX Core 1.x objects (``suites.py``); ``metrics.py`` turns each into the
aggregates its verdict needs, all of them are computed in one ``DataFrame.agg`` (one Spark job),
and each verdict is judged on the collected metrics with GX's semantics (``mostly``, strict bounds,
nulls not considered, parameters). Only the row-level checks that failed cost one more small query
each, for their examples. A table already in memory (the episode profile) is judged the same way
without Spark (:func:`run_on_table`, ``table_metrics.py``). Nothing is persisted: the report is
ours (``report.py``).

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
    """Validate the Spark DataFrame ``df`` against ``expectations`` in one Spark job; one
    :class:`CheckResult` each, in input order.

    Args:
        suite_name: reported as the checks' suite.
        expectations: GX expectation objects (``suites.*_expectations``), each with a unique
            ``meta["check"]`` name; not modified.
        df: a Spark DataFrame (the batch).
        parameters: values of the ``{"$PARAMETER": name}`` bounds.
        index_columns: columns that identify a row (``event_id``), shown with the unexpected
            values of a failed row-level check.
    """
    from pyspark.sql import functions as F

    from . import metrics as M

    _check_names(suite_name, expectations)
    if not expectations:
        return []
    params = parameters or {}
    log.info("validating %s: %d expectations in one pass", suite_name, len(expectations))
    plans = [M.plan(e, params, i) for i, e in enumerate(expectations)]
    aggregates: dict[str, Any] = {}
    for p in plans:
        aggregates.update(p.aggregates)
    row: dict[str, Any] = {}
    if aggregates:  # a suite of schema checks reads no data
        df = M.prepare(df, expectations)
        aggregates["__rows"] = F.count(F.lit(1))
        row = df.agg(*(c.alias(n) for n, c in aggregates.items())).collect()[0].asDict()
    results = [M.judge(p, row, row.get("__rows", 0), df.columns, params) for p in plans]
    for p, r in zip(plans, results, strict=True):
        if p.unexpected is not None and not r["success"]:
            r["result"].update(M.examples(df, p, list(index_columns or [])))
    return [from_gx_result(r, suite_name) for r in results]


def run_on_table(
    suite_name: str,
    expectations: list,
    table,
    parameters: dict[str, Any] | None = None,
    index_columns: list[str] | None = None,
) -> list[CheckResult]:
    """:func:`run_expectations` on a pyarrow Table held in memory (``table_metrics``: pyarrow
    compute and numpy, no Spark job), with the same semantics and results."""
    from . import metrics as M
    from . import table_metrics as TM

    _check_names(suite_name, expectations)
    params = parameters or {}
    log.info("validating %s: %d expectations on a table", suite_name, len(expectations))
    plans = [TM.plan(e, table, params, i) for i, e in enumerate(expectations)]
    results = [M.judge(p, p.aggregates, table.num_rows, table.column_names, params) for p in plans]
    for p, r in zip(plans, results, strict=True):
        if p.unexpected is not None and not r["success"]:
            r["result"].update(TM.examples(table, p, list(index_columns or [])))
    return [from_gx_result(r, suite_name) for r in results]


def _check_names(suite_name: str, expectations: list) -> None:
    names = [e.meta["check"] for e in expectations]
    assert len(set(names)) == len(names), f"duplicate check names in {suite_name}: {names}"


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
