"""One pass = GX: the verdicts computed from one aggregation equal GX's own ValidationDefinition's.

The oracle is great-expectations itself, run here on the same Spark frame with the same
expectations (every type the suites use; nulls, NaN, ``mostly``, strict bounds, parameters,
passing and failing), for both evaluators: the Spark aggregation (``run_expectations``, the raw
suite's) and the in-memory one on the same rows as an Arrow table (``run_on_table``, the episode
suite's). An expectation the one-pass evaluator does not know, or a parameter without a
value, fails the check (fail closed).
"""

from __future__ import annotations

import datetime as dt

import pytest

from components.validation.gx_reference import gx_results
from components.validation.runner import run_expectations
from components.validation.suites import _exp, _param

pytestmark = pytest.mark.spark

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _frame(spark):
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("k", T.StringType()),
            T.StructField("e", T.IntegerType()),
            T.StructField("x", T.DoubleType()),
            T.StructField("flag", T.BooleanType()),
            T.StructField("a", T.LongType()),
            T.StructField("b", T.LongType()),
            T.StructField("t", T.TimestampType()),
        ]
    )
    rows = []
    for i in range(40):
        x = float(i % 7) if i not in (5, 6) else (float("nan") if i == 5 else None)
        rows.append(
            (
                f"k{i % 13}" if i != 9 else None,
                i % 3 if i != 12 else 1,
                x,
                i % 10 != 0,
                i,
                i - 1 if i % 8 else (i + 2 if i != 16 else None),
                T0 + dt.timedelta(minutes=17 * i),
            )
        )
    return spark.createDataFrame(rows, schema)


def _expectations() -> list:
    mostly = {"mostly": 0.9}
    return [
        _exp("ExpectTableRowCountToBeBetween", "rows", "d", min_value=1, max_value=40),
        _exp("ExpectTableRowCountToBeBetween", "rows_fail", "d", min_value=41),
        _exp("ExpectColumnValuesToNotBeNull", "nn_k", "d", column="k"),
        _exp("ExpectColumnValuesToNotBeNull", "nn_k_mostly", "d", column="k", **mostly),
        _exp("ExpectColumnValuesToBeInSet", "in_e", "d", column="e", value_set=[0, 1]),
        _exp("ExpectColumnValuesToBeInSet", "in_flag", "d", column="flag", value_set=[True]),
        _exp(
            "ExpectColumnValuesToBeInSet",
            "in_flag_m",
            "d",
            column="flag",
            value_set=[True],
            **mostly,
        ),
        _exp("ExpectColumnValuesToBeBetween", "x_range", "d", column="x", min_value=0, max_value=6),
        _exp(
            "ExpectColumnValuesToBeBetween",
            "x_strict",
            "d",
            column="x",
            min_value=0,
            max_value=6,
            strict_max=True,
        ),
        _exp(
            "ExpectColumnValuesToBeBetween",
            "t_param",
            "d",
            column="t",
            min_value=_param("start"),
            max_value=_param("end"),
            strict_max=True,
            mostly=0.5,
        ),
        _exp(
            "ExpectColumnProportionOfUniqueValuesToBeBetween",
            "uniq",
            "d",
            column="k",
            min_value=0.5,
        ),
        _exp("ExpectColumnMeanToBeBetween", "mean", "d", column="a", min_value=_param("lo")),
        _exp("ExpectColumnMinToBeBetween", "min", "d", column="a", min_value=1),
        _exp("ExpectColumnMaxToBeBetween", "max", "d", column="b", max_value=41),
        _exp(
            "ExpectColumnPairValuesAToBeGreaterThanB",
            "a_gt_b",
            "d",
            column_A="a",
            column_B="b",
            or_equal=False,
            ignore_row_if="either_value_is_missing",
        ),
        _exp("ExpectColumnPairValuesToBeEqual", "a_eq_a", "d", column_A="a", column_B="a"),
        _exp("ExpectCompoundColumnsToBeUnique", "uniq_ke", "d", column_list=["k", "e"]),
        _exp("ExpectCompoundColumnsToBeUnique", "uniq_ka", "d", column_list=["k", "a"]),
        _exp("ExpectTableColumnsToMatchSet", "cols", "d", column_set=["k", "e"], exact_match=False),
        _exp(
            "ExpectTableColumnsToMatchSet",
            "cols_fail",
            "d",
            column_set=["k", "zz"],
            exact_match=False,
        ),
    ]


def _nan_expectations() -> list:
    """Spark's NaN order (NaN == NaN, NaN above every number) on row-level checks."""
    return [
        _exp("ExpectColumnValuesToBeBetween", "x_low_only", "d", column="x", min_value=1),
        _exp("ExpectColumnValuesToBeBetween", "x_high_only", "d", column="x", max_value=5),
        _exp("ExpectColumnValuesToBeInSet", "x_in", "d", column="x", value_set=[0.0, 1.0, 2.0]),
        _exp(
            "ExpectColumnPairValuesAToBeGreaterThanB",
            "x_gt_e",
            "d",
            column_A="x",
            column_B="e",
            or_equal=True,
            ignore_row_if="either_value_is_missing",  # NaN >= e holds: NaN is above every number
        ),
    ]


PARAMS = {"start": T0 + dt.timedelta(hours=2), "end": T0 + dt.timedelta(hours=9), "lo": 19.0}


def _all_expectations() -> list:
    return _expectations() + _nan_expectations()


@pytest.fixture(scope="module")
def gx_oracle(spark) -> dict[str, dict]:
    """GX's own results on :func:`_frame` for every expectation here, by check name (one run)."""
    results = gx_results(_frame(spark), _all_expectations(), PARAMS)
    return {r["expectation_config"]["meta"]["check"]: r for r in results}


def _assert_equal_to_gx(ours: dict, oracle: dict[str, dict]) -> None:
    assert set(ours) == set(oracle)
    outcomes = {name: ours[name].success for name in ours}
    assert outcomes == {name: r["success"] for name, r in oracle.items()}
    assert 0 < sum(outcomes.values()) < len(outcomes)  # both verdicts are exercised
    for name, r in oracle.items():
        res = r["result"]
        if "unexpected_count" in res:
            assert ours[name].unexpected_count == res["unexpected_count"], name
            assert ours[name].unexpected_percent == pytest.approx(res["unexpected_percent"]), name
        elif name not in ("cols", "cols_fail"):
            assert float(ours[name].observed) == pytest.approx(res["observed_value"]), name
    failed_row = ours["nn_k"]
    assert not failed_row.success and failed_row.examples == [{"a": 9, "k": None}]


def test_one_pass_verdicts_equal_gx(spark, gx_oracle):
    df = _frame(spark)
    ours = {c.name: c for c in run_expectations("s", _all_expectations(), df, PARAMS, ["a"])}
    _assert_equal_to_gx(ours, gx_oracle)


def test_unknown_expectation_or_missing_parameter_fails_closed(spark):
    df = _frame(spark)
    expectations = [
        _exp("ExpectColumnMedianToBeBetween", "median", "d", column="a", min_value=0),
        _exp("ExpectColumnMeanToBeBetween", "mean", "d", column="a", min_value=_param("absent")),
        _exp("ExpectTableRowCountToBeBetween", "rows", "d", min_value=1),
    ]
    checks = {c.name: c for c in run_expectations("s", expectations, df, {})}

    assert checks["rows"].success and checks["rows"].observed == "40"
    for name, why in (("median", "not evaluated"), ("mean", "'absent'")):
        assert not checks[name].success and not checks[name].skipped, name
        assert checks[name].observed == "error" and why in checks[name].note, name


def test_table_verdicts_equal_gx(spark, gx_oracle):
    # The in-memory evaluator (the episode suite's) against GX on the same rows as a Spark frame.
    from components.validation.runner import run_on_table

    table = _frame(spark).toArrow()
    ours = {c.name: c for c in run_on_table("s", _all_expectations(), table, PARAMS, ["a"])}
    _assert_equal_to_gx(ours, gx_oracle)
    # NaN compares as Spark does: above the upper bound (4 sixes + NaN), not below the lower one
    # (6 zeros).
    assert ours["x_high_only"].unexpected_count == 5 and ours["x_low_only"].unexpected_count == 6


def test_table_unknown_expectation_missing_parameter_or_column_fails_closed(spark):
    from components.validation.runner import run_on_table

    expectations = [
        _exp("ExpectColumnMedianToBeBetween", "median", "d", column="a", min_value=0),
        _exp("ExpectColumnMeanToBeBetween", "mean", "d", column="a", min_value=_param("absent")),
        _exp("ExpectColumnValuesToNotBeNull", "gone", "d", column="no_such_column"),
        _exp("ExpectColumnValuesToBeBetween", "k_vs_int", "d", column="k", min_value=3),
        _exp("ExpectTableRowCountToBeBetween", "rows", "d", min_value=1),
    ]
    checks = {c.name: c for c in run_on_table("s", expectations, _frame(spark).toArrow(), {})}

    assert checks["rows"].success and checks["rows"].observed == "40"
    for name, why in (
        ("median", "not evaluated"),
        ("mean", "'absent'"),
        ("gone", "no_such_column"),
        ("k_vs_int", "Arrow"),
    ):
        assert not checks[name].success and not checks[name].skipped, name
        assert checks[name].observed == "error" and why in checks[name].note, name
