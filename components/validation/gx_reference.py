"""GX's own ``ValidationDefinition`` run: the oracle of the one-pass evaluator and its baseline.

``runner.run_expectations`` computes every metric in one aggregation (``metrics.py``), and
``runner.run_on_table`` on an Arrow table in memory (``table_metrics.py``); this runs the same
expectations through great-expectations itself (its metrics, several Spark jobs per
expectation, SUMMARY results), so a test can check that both give the same verdicts, counts and
observed values, and ``bench/validation.py`` can time both on the same data. Not used by the
suites.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from .report import CheckResult, from_gx_result


def gx_results(df, expectations: list, parameters: dict[str, Any] | None = None) -> list[dict]:
    """GX's result dicts (``to_json_dict()["results"]``, SUMMARY format), in GX's order."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    tag = uuid.uuid4().hex[:8]
    source = context.data_sources.add_spark(name=f"spark-{tag}", persist=False)
    batch = source.add_dataframe_asset(name="frame").add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name=f"suite-{tag}"))
    for e in expectations:
        e = copy.deepcopy(e)
        e.id = None
        suite.add_expectation(e)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"run-{tag}", data=batch, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": df},
        expectation_parameters=parameters or {},
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
    )
    return result.to_json_dict()["results"]


def run_expectations_gx(
    suite_name: str,
    expectations: list,
    df,
    parameters: dict[str, Any] | None = None,
    index_columns: list[str] | None = None,
) -> list[CheckResult]:
    """``runner.run_expectations``'s signature and output, computed by GX (``index_columns``
    unused: GX's examples here are values)."""
    by_name = {
        r["expectation_config"]["meta"]["check"]: r
        for r in gx_results(df, expectations, parameters)
    }
    return [from_gx_result(by_name[e.meta["check"]], suite_name) for e in expectations]


def run_on_table_gx(
    suite_name: str,
    expectations: list,
    table,
    parameters: dict[str, Any] | None = None,
    index_columns: list[str] | None = None,
) -> list[CheckResult]:
    """``runner.run_on_table`` by GX: the Arrow table as a Spark frame (cached), GX's run on it."""
    from pyspark import StorageLevel
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    df = spark.createDataFrame(table).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return run_expectations_gx(suite_name, expectations, df, parameters, index_columns)
    finally:
        df.unpersist()


def run_on_values_gx(
    suite_name: str, expectations: list, values: dict[str, Any], parameters: dict | None = None
) -> list[CheckResult]:
    """``runner.run_on_values`` by GX: the values as a one-row Spark frame."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    frame = spark.createDataFrame([tuple(values.values())], schema=list(values))
    return run_expectations_gx(suite_name, expectations, frame, parameters)
