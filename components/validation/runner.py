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


def persist(df):
    """Cache a profile frame that more than one suite (one pass each) reads."""
    from pyspark import StorageLevel

    return df.persist(StorageLevel.MEMORY_AND_DISK)


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
    from pyspark.sql import functions as F

    from . import metrics as M

    names = [e.meta["check"] for e in expectations]
    assert len(set(names)) == len(names), f"duplicate check names in {suite_name}: {names}"
    if not expectations:
        return []
    params = parameters or {}
    log.info("validating %s: %d expectations in one pass", suite_name, len(expectations))
    df = M.prepare(df, expectations)
    plans = [M.plan(e, params, i) for i, e in enumerate(expectations)]
    aggregates = {"__rows": F.count(F.lit(1))}
    for p in plans:
        aggregates.update(p.aggregates)
    row = df.agg(*(c.alias(n) for n, c in aggregates.items())).collect()[0].asDict()
    results = [M.judge(p, row, row["__rows"], df.columns, params) for p in plans]
    for p, r in zip(plans, results, strict=True):
        if p.unexpected is not None and not r["success"]:
            r["result"].update(M.examples(df, p, list(index_columns or [])))
    return [from_gx_result(r, suite_name) for r in results]
