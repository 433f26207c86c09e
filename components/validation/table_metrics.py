"""One pass over an in-memory table: the metrics of GX expectations on a pyarrow Table.

``metrics.py`` turns a suite into one Spark aggregation (the raw suite, over raw logs); this
computes the same metrics, with the same semantics, on an Arrow table held in memory (the
per-episode profile, ``profile.episode_profile``) with pyarrow compute and numpy, and judges them
with the same :func:`metrics.judge`, so the verdicts, counts and observed values are those of GX on
the same rows as a Spark frame (``gx_reference``; ``tests/components/validation/test_one_pass.py``).

Comparisons follow Spark's, as GX's Spark backend evaluates them: a null compares as unknown (an
unexpected value where the check considers the row), and NaN equals NaN and sorts above every
number (a NaN fails an upper bound and passes a lower one; a column's max and mean are NaN when
it holds one). An expectation type not handled, a parameter without a value, a column the table
lacks or a type the comparison cannot handle is a FAILED check whose note says why (fail closed).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .metrics import EXAMPLES, ONE_ROW, Plan, UnsupportedExpectation, _kwargs

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

_ORDER = {
    "gt": "greater",
    "ge": "greater_equal",
    "lt": "less",
    "le": "less_equal",
    "eq": "equal",
}


def _is_float(x: Any) -> bool:
    import pyarrow as pa
    import pyarrow.types as pat

    if isinstance(x, pa.Array | pa.ChunkedArray | pa.Scalar):
        return pat.is_floating(x.type)
    return isinstance(x, float)


def _nan(x: Any):
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(x, pa.Array | pa.ChunkedArray):
        return pc.not_equal(x, x)  # true at a NaN, false at a number, null at a null
    return isinstance(x, float) and math.isnan(x)


def compare(op: str, a, b):
    """``a <op> b`` (``op`` in gt, ge, lt, le, eq) as Spark compares: null if either is null,
    NaN equal to NaN and above every number. ``a`` is an array; ``b`` an array or a scalar."""
    import pyarrow as pa
    import pyarrow.compute as pc

    fn = getattr(pc, _ORDER[op])
    if not (_is_float(a) or _is_float(b)):
        return fn(a, b)
    an, bn = _nan(a), _nan(b)
    if not isinstance(bn, pa.Array | pa.ChunkedArray):
        bn = pa.scalar(bool(bn))
    either = pc.or_kleene(an, bn)
    # Where either side is NaN, the order is that of the NaN flags alone (NaN is the largest).
    by_flags = fn(an.cast(pa.int8()), bn.cast(pa.int8()))
    return pc.if_else(either, by_flags, fn(a, b))


def _between(col, low, high, strict_low: bool, strict_high: bool):
    import pyarrow as pa
    import pyarrow.compute as pc

    if low is None and high is None:
        raise UnsupportedExpectation("min_value and max_value are both None")
    cond = pa.array([True] * len(col))
    if low is not None:
        cond = pc.and_kleene(cond, compare("gt" if strict_low else "ge", col, low))
    if high is not None:
        cond = pc.and_kleene(cond, compare("lt" if strict_high else "le", col, high))
    return cond


def duplicated(table: pa.Table, columns: list[str]) -> np.ndarray:
    """Per row: another row has the same values in ``columns`` (nulls equal, as Spark groups)."""
    import numpy as np

    codes = [
        table.column(c).combine_chunks().dictionary_encode(null_encoding="encode").indices
        for c in columns
    ]
    keys = np.stack([np.asarray(c.to_numpy(zero_copy_only=False), "int64") for c in codes], 1)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] > 1


def _row_level(config: dict[str, Any], kw: dict[str, Any], table: pa.Table):
    """``(considered, expected, columns)`` arrays of a row-level check, or None if not one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def col(name: str) -> pa.Array:
        return table.column(name).combine_chunks()

    everything = pa.array([True] * table.num_rows)
    kind = config["type"]
    if kind == "expect_column_values_to_not_be_null":
        c = kw["column"]
        return everything, col(c).is_valid(), [c]
    if kind == "expect_column_values_to_be_in_set":
        c = kw["column"]
        expected = pa.array([False] * table.num_rows)
        for v in kw["value_set"]:
            expected = pc.or_kleene(expected, compare("eq", col(c), v))
        return col(c).is_valid(), expected, [c]
    if kind == "expect_column_values_to_be_between":
        c = kw["column"]
        cond = _between(
            col(c),
            kw.get("min_value"),
            kw.get("max_value"),
            bool(kw.get("strict_min")),
            bool(kw.get("strict_max")),
        )
        return col(c).is_valid(), cond, [c]
    if kind in (
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_column_pair_values_to_be_equal",
    ):
        a, b = kw["column_A"], kw["column_B"]
        ignore = kw.get("ignore_row_if") or "both_values_are_missing"
        valid_a, valid_b = col(a).is_valid(), col(b).is_valid()
        considered = {
            "both_values_are_missing": pc.or_(valid_a, valid_b),
            "either_value_is_missing": pc.and_(valid_a, valid_b),
            "neither": everything,
        }.get(ignore)
        if considered is None:
            raise UnsupportedExpectation(f"ignore_row_if={ignore!r}")
        if kind == "expect_column_pair_values_to_be_equal":
            cond = compare("eq", col(a), col(b))
        else:
            cond = compare("ge" if kw.get("or_equal") else "gt", col(a), col(b))
        return considered, cond, [a, b]
    if kind == "expect_compound_columns_to_be_unique":
        cols = list(kw["column_list"])
        ignore = kw.get("ignore_row_if") or "all_values_are_missing"
        if ignore != "all_values_are_missing":
            raise UnsupportedExpectation(f"ignore_row_if={ignore!r}")
        considered = pa.array([False] * table.num_rows)
        for c in cols:
            considered = pc.or_(considered, col(c).is_valid())
        return considered, pa.array(~duplicated(table, cols)), cols
    return None


def _observed(kind: str, column: pa.ChunkedArray) -> Any:
    """min / max / mean / unique proportion of a column, as Spark aggregates it (None if empty)."""
    import pyarrow.compute as pc

    values = column.drop_null()
    if kind == "expect_column_proportion_of_unique_values_to_be_between":
        return pc.count_distinct(values).as_py() / max(len(values), 1)
    if len(values) == 0:
        return None
    if _is_float(values) and pc.any(pc.is_nan(values)).as_py():
        numbers = values.filter(pc.invert(pc.is_nan(values)))
        if kind == "expect_column_min_to_be_between" and len(numbers):
            return pc.min(numbers).as_py()
        return math.nan  # NaN is the largest value: the max, the mean, the min of all-NaN
    if kind == "expect_column_mean_to_be_between":
        return pc.mean(values).as_py()
    op = pc.min if kind == "expect_column_min_to_be_between" else pc.max
    return op(values).as_py()


def plan(expectation, table: pa.Table, parameters: dict[str, Any], index: int) -> Plan:
    """The metrics of one expectation on ``table``, computed (``Plan.error`` says why not).

    ``Plan.aggregates`` holds the values (``metrics.judge`` reads them as its metrics);
    ``Plan.unexpected`` is a numpy mask of the unexpected rows of a row-level check.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    config = expectation.configuration.to_json_dict()
    p = Plan(config)
    kind = config["type"]
    try:
        kw = _kwargs(config, parameters)
        if kind == "expect_table_columns_to_match_set":
            return p  # the table's schema, no data
        row = _row_level(config, kw, table)
        if row is not None:
            considered, expected, p.columns = row
            unexpected = pc.and_(considered, pc.invert(pc.fill_null(expected, False)))
            p.unexpected = np.asarray(unexpected.to_numpy(zero_copy_only=False), bool)
            p.aggregates = {
                f"c{index}__considered": int(pc.sum(considered.cast(pa.int64())).as_py() or 0),
                f"c{index}__unexpected": int(p.unexpected.sum()),
            }
            return p
        if kind == "expect_table_row_count_to_be_between":
            observed: Any = table.num_rows
        elif kind in (*ONE_ROW, "expect_column_proportion_of_unique_values_to_be_between"):
            observed = _observed(kind, table.column(kw["column"]))
        else:
            raise UnsupportedExpectation(f"expectation type {kind} is not evaluated")
        p.aggregates = {f"c{index}__observed": observed}
    except (UnsupportedExpectation, KeyError, TypeError, pa.ArrowException) as e:
        p.error = f"{type(e).__name__}: {e}"
        p.unexpected = None
    return p


def examples(table: pa.Table, p: Plan, index_columns: list[str]) -> dict[str, Any]:
    """Up to :data:`~metrics.EXAMPLES` unexpected rows of a failed row-level check (table order),
    GX's SUMMARY keys."""
    import pyarrow as pa

    cols = list(dict.fromkeys([*index_columns, *p.columns]))
    rows = table.filter(pa.array(p.unexpected)).select(cols).slice(0, EXAMPLES).to_pylist()
    if index_columns:
        return {"partial_unexpected_index_list": rows}
    return {"partial_unexpected_list": [r[p.columns[0]] for r in rows]}
