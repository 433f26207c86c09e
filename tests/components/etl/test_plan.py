"""The performance design holds: one full-row shuffle, read once (the dedup aggregates reuse it),
no per-row Python UDF (the JSONL parse is one ``mapInArrow`` over the files)."""

from __future__ import annotations

import re

import pytest

from tests.components.etl import rawdata
from tests.components.etl.test_job import make_config

pytestmark = pytest.mark.spark


def test_one_full_row_shuffle_and_no_python_udf(spark, tmp_path):
    from components.etl import extract, rows
    from components.etl import transform as tr

    rawdata.corrupted_interval(tmp_path / "raw", "jsonl")  # has duplicates: the dedup branch runs
    config = make_config(tmp_path / "raw", tmp_path / "out")
    listing = extract.list_input(config)
    frame = tr.transform(rows.read_raw(spark, listing), listing.fmt, config)
    frame.collect()  # runs the Dataset's own query execution, so its plan below is the final one
    text = frame._jdf.queryExecution().executedPlan().toString()
    plan = text.split("== Initial Plan ==")[0]  # the adaptive plan as it ran
    assert "== Final Plan ==" in plan
    # (a ReusedExchange prints the exchange it reuses: count distinct exchanges by plan id)
    full_row = set(
        re.findall(
            r"Exchange hashpartitioning\(_pk#\d+, 4\), REPARTITION_BY_NUM, \[plan_id=(\d+)\]", plan
        )
    )
    assert len(full_row) == 1, plan
    assert plan.count("ReusedExchange") == 2, plan  # both de-duplication aggregates reuse it
    # the input is read and parsed once, by the shared Python parser over whole Arrow batches
    assert plan.count("MapInArrow") == 1, plan
    assert (
        "PythonUDF" not in plan and "BatchEvalPython" not in plan and "ArrowEvalPython" not in plan
    )
    assert "SortAggregate" in plan or "ObjectHashAggregate" in plan


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parse_and_encode_compile_whole_stage(spark, tmp_path, fmt):
    """Every method Spark generates for parse + validate + encode stays under the limit the job
    sets (the JIT's), else Spark runs that stage as slower row-by-row projections; see
    ``transform.compact``. Checked on the default features."""
    from components.etl import extract, rows
    from components.etl import transform as tr
    from components.etl.job import JOB_CONF

    rawdata.corrupted_interval(tmp_path / "raw", fmt)
    config = make_config(tmp_path / "raw", tmp_path / "out")
    listing = extract.list_input(config)
    df = tr.compact(tr.parse(rows.read_raw(spark, listing), listing.fmt, config), config)
    stages = df._jdf.queryExecution().debug().codegenToSeq()
    sizes = [stages.apply(i)._3().maxMethodCodeSize() for i in range(stages.size())]
    assert sizes and max(sizes) <= int(JOB_CONF["spark.sql.codegen.hugeMethodLimit"]), sizes
