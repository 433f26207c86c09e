"""One pass per suite: the metrics a list of GX expectations needs, as ONE Spark aggregation.

The suites (``suites.py``) stay GX expectation objects; here each one is read (its type, kwargs,
``mostly``, parameters) and turned into the few aggregate expressions its verdict needs: the row
count, and per row-level check the rows it considers and the unexpected ones among them; per
aggregate check its observed value (min, max, mean, distinct proportion). All of them go into one
``DataFrame.agg`` (one scan of the frame); each verdict is then evaluated on the collected row with
GX's semantics and written as a GX result dict, so ``report.from_gx_result`` reads it as it reads
GX's own results:

- row-level ("map") checks: nulls are not considered (except by the not-null check), ``mostly`` is
  the share of considered rows that must be expected (none considered: the check holds, as in
  GX; the suites' row-count checks catch an empty frame);
  ``unexpected_percent`` is of the considered rows;
- a comparison that Spark cannot decide (a null bound, a null pair member the check does not
  ignore) counts as unexpected: a check never passes on a value it could not compare;
- an expectation type not handled here, or a ``$PARAMETER`` without a value, is a FAILED check
  whose note says why (fail closed), never a skipped or passed one.

The failed row-level checks then get up to 5 examples each (with the index columns), one small
query each: only a failing suite pays for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXAMPLES = 5


class UnsupportedExpectation(ValueError):
    """An expectation (or a parameter of one) that this evaluator cannot compute."""


@dataclass
class Plan:
    """What one expectation needs: aggregate expressions (by name) and how to judge them."""

    config: dict[str, Any]
    """``expectation.configuration.to_json_dict()``: ``type``, ``kwargs``, ``meta``, ``description``."""
    aggregates: dict[str, Any] = field(default_factory=dict)
    unexpected: Any = None
    """Row-level checks: the Column that is true on an unexpected, considered row."""
    columns: list[str] = field(default_factory=list)
    """Columns shown with an unexpected row."""
    error: str = ""


def _resolve(value: Any, parameters: dict[str, Any]) -> Any:
    if isinstance(value, dict) and "$PARAMETER" in value:
        name = value["$PARAMETER"]
        if name not in parameters:
            raise UnsupportedExpectation(f"no value given for the parameter {name!r}")
        return parameters[name]
    return value


def _kwargs(config: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    return {k: _resolve(v, parameters) for k, v in config["kwargs"].items()}


def _between(col, low, high, strict_low: bool, strict_high: bool):
    """A Column: ``low <(=) col <(=) high``; ``None`` bounds are open."""
    from pyspark.sql import functions as F

    if low is None and high is None:
        raise UnsupportedExpectation("min_value and max_value are both None")
    cond = F.lit(True)
    if low is not None:
        cond = cond & ((col > F.lit(low)) if strict_low else (col >= F.lit(low)))
    if high is not None:
        cond = cond & ((col < F.lit(high)) if strict_high else (col <= F.lit(high)))
    return cond


def _row_level(config: dict[str, Any], kw: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    """``(considered, expected, columns)`` Columns of a row-level check, or None if not one."""
    from pyspark.sql import functions as F

    kind = config["type"]
    if kind == "expect_column_values_to_not_be_null":
        c = kw["column"]
        return F.lit(True), F.col(c).isNotNull(), [c]
    if kind == "expect_column_values_to_be_in_set":
        c = kw["column"]
        return F.col(c).isNotNull(), F.col(c).isin(list(kw["value_set"])), [c]
    if kind == "expect_column_values_to_be_between":
        c = kw["column"]
        cond = _between(
            F.col(c),
            kw.get("min_value"),
            kw.get("max_value"),
            bool(kw.get("strict_min")),
            bool(kw.get("strict_max")),
        )
        return F.col(c).isNotNull(), cond, [c]
    if kind in (
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_column_pair_values_to_be_equal",
    ):
        a, b = kw["column_A"], kw["column_B"]
        ignore = kw.get("ignore_row_if") or "both_values_are_missing"
        considered = {
            "both_values_are_missing": F.col(a).isNotNull() | F.col(b).isNotNull(),
            "either_value_is_missing": F.col(a).isNotNull() & F.col(b).isNotNull(),
            "neither": F.lit(True),
        }.get(ignore)
        if considered is None:
            raise UnsupportedExpectation(f"ignore_row_if={ignore!r}")
        if kind == "expect_column_pair_values_to_be_equal":
            cond = F.col(a) == F.col(b)
        else:
            cond = (F.col(a) >= F.col(b)) if kw.get("or_equal") else (F.col(a) > F.col(b))
        return considered, cond, [a, b]
    if kind == "expect_compound_columns_to_be_unique":
        cols = list(kw["column_list"])
        ignore = kw.get("ignore_row_if") or "all_values_are_missing"
        if ignore != "all_values_are_missing":
            raise UnsupportedExpectation(f"ignore_row_if={ignore!r}")
        considered = F.lit(False)
        for c in cols:
            considered = considered | F.col(c).isNotNull()
        return considered, ~F.col(_dup_column(cols)), cols
    return None


def _dup_column(cols: list[str]) -> str:
    return "__dup__" + "__".join(cols)


def _aggregate(config: dict[str, Any], kw: dict[str, Any]):
    """The observed-value aggregate of an aggregate check, or None if not one."""
    from pyspark.sql import functions as F

    kind = config["type"]
    if kind == "expect_table_row_count_to_be_between":
        return F.count(F.lit(1))
    ops = {
        "expect_column_min_to_be_between": F.min,
        "expect_column_max_to_be_between": F.max,
        "expect_column_mean_to_be_between": F.avg,
    }
    if kind in ops:
        return ops[kind](F.col(kw["column"]))
    if kind == "expect_column_proportion_of_unique_values_to_be_between":
        c = F.col(kw["column"])
        return F.count_distinct(c) / F.greatest(F.count(c), F.lit(1))
    return None


def plan(expectation, parameters: dict[str, Any], index: int) -> Plan:
    """The aggregates one expectation needs (``Plan.error`` says why it cannot be computed)."""
    from pyspark.sql import functions as F

    config = expectation.configuration.to_json_dict()
    p = Plan(config)
    try:
        kw = _kwargs(config, parameters)
        if config["type"] == "expect_table_columns_to_match_set":
            return p  # the frame's schema, no data
        row = _row_level(config, kw)
        if row is not None:
            considered, expected, p.columns = row
            p.unexpected = considered & ~F.coalesce(expected, F.lit(False))
            p.aggregates = {
                f"c{index}__considered": F.count(F.when(considered, 1)),
                f"c{index}__unexpected": F.count(F.when(p.unexpected, 1)),
            }
            return p
        agg = _aggregate(config, kw)
        if agg is None:
            raise UnsupportedExpectation(f"expectation type {config['type']} is not evaluated")
        p.aggregates = {f"c{index}__observed": agg}
    except (UnsupportedExpectation, KeyError) as e:
        p.error = f"{type(e).__name__}: {e}"
    return p


ONE_ROW = (
    "expect_column_min_to_be_between",
    "expect_column_max_to_be_between",
    "expect_column_mean_to_be_between",
)
"""Aggregate expectations whose observed value on a one-row frame is the row's value."""


def plan_on_values(expectation, parameters: dict[str, Any], index: int) -> Plan:
    """The plan of an expectation judged on already aggregated values (a one-row frame)."""
    config = expectation.configuration.to_json_dict()
    p = Plan(config)
    if config["type"] not in ONE_ROW:
        p.error = f"UnsupportedExpectation: {config['type']} is not judged on aggregated values"
        return p
    try:
        _kwargs(config, parameters)
    except UnsupportedExpectation as e:
        p.error = f"UnsupportedExpectation: {e}"
        return p
    p.aggregates = {f"c{index}__observed": None}
    return p


def prepare(df, expectations: list):
    """``df`` with the per-row duplicate flags the compound-uniqueness checks need (a window)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    for e in expectations:
        config = e.configuration.to_json_dict()
        if config["type"] == "expect_compound_columns_to_be_unique":
            cols = list(config["kwargs"]["column_list"])
            if _dup_column(cols) not in df.columns:
                by = Window.partitionBy(*cols)
                df = df.withColumn(_dup_column(cols), F.count(F.lit(1)).over(by) > 1)
    return df


def _in_range(value, kw: dict[str, Any]) -> bool:
    if value is None:
        return False  # nothing observed (no non-null value): fail closed
    low, high = kw.get("min_value"), kw.get("max_value")
    if low is not None and (value <= low if kw.get("strict_min") else value < low):
        return False
    return not (high is not None and (value >= high if kw.get("strict_max") else value > high))


def judge(p: Plan, metrics: dict[str, Any], rows: int, columns: list[str], params: dict) -> dict:
    """A GX-shaped result dict (``success``, ``result``, ``expectation_config``, ``exception_info``)."""
    out: dict[str, Any] = {"expectation_config": p.config, "result": {}, "exception_info": {}}
    if p.error:
        out["success"] = False
        out["exception_info"] = {"raised_exception": True, "exception_message": p.error}
        return out
    kw = _kwargs(p.config, params)
    kind = p.config["type"]
    if kind == "expect_table_columns_to_match_set":
        missing = sorted(set(kw["column_set"]) - set(columns))
        extra = sorted(set(columns) - set(kw["column_set"]))
        out["success"] = not missing and not (kw.get("exact_match", True) and extra)
        out["result"] = {"observed_value": list(columns)}
        if missing or extra:
            out["result"]["details"] = {"mismatched": {"missing": missing, "unexpected": extra}}
        return out
    if p.unexpected is not None:
        (considered, unexpected) = (metrics[k] for k in p.aggregates)
        mostly = kw.get("mostly")
        mostly = 1.0 if mostly is None else float(mostly)
        # GX: no considered row, nothing unexpected (the row-count checks catch an empty frame).
        out["success"] = considered == 0 or (considered - unexpected) / considered >= mostly
        out["result"] = {
            "element_count": rows,
            "unexpected_count": unexpected,
            "unexpected_percent": 100.0 * unexpected / considered if considered else 0.0,
        }
        return out
    (observed,) = (metrics[k] for k in p.aggregates)
    out["result"] = {"observed_value": observed}
    out["success"] = _in_range(observed, kw)
    return out


def examples(df, p: Plan, index_columns: list[str]) -> dict[str, Any]:
    """Up to :data:`EXAMPLES` unexpected rows of a failed row-level check, GX's SUMMARY keys."""
    cols = list(dict.fromkeys([*index_columns, *p.columns]))
    rows = [r.asDict() for r in df.filter(p.unexpected).select(*cols).limit(EXAMPLES).collect()]
    if index_columns:
        return {"partial_unexpected_index_list": rows}
    return {"partial_unexpected_list": [r[p.columns[0]] for r in rows]}
