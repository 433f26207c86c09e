"""The gate on real data: generated raw logs -> the Spark ETL -> both suites, two intervals."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from components.validation import validate_episodes, validate_raw
from trainer.data.contract import MANIFEST_NAME

pytestmark = [pytest.mark.spark, pytest.mark.slow]

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def test_real_etl_outputs_pass_and_the_second_interval_is_compared_with_the_first(spark, tmp_path):
    from components.etl.config import EtlConfig
    from components.etl.job import run_etl
    from components.generate import GeneratorConfig, generate

    raw = tmp_path / "raw"
    generate(
        GeneratorConfig(
            out=str(raw), rows=6000, hours=8, corrupt=0.02, num_users=600, num_campaigns=50, seed=4
        )
    )
    outputs = []
    for a, b in ((0, 4), (4, 8)):
        config = EtlConfig(
            input=str(raw),
            output=str(tmp_path / "episodes"),
            start=START + dt.timedelta(hours=a),
            end=START + dt.timedelta(hours=b),
            k_support=4,
            q_query=4,
            min_support=2,
            min_query=2,
            num_buckets=2,
            shuffle_partitions=4,
        )
        outputs.append(run_etl(config, spark).output)
    first, second = outputs
    before = json.loads((tmp_path / "episodes" / second.split("/")[-1] / MANIFEST_NAME).read_text())

    report = validate_episodes(second)

    assert report.success, report.to_text()
    # The sibling interval was found and the band applied; every manifest count was compared.
    c = report.check("row_count_vs_previous")
    assert not c.skipped and c.success
    assert any(first in n for n in report.notes)
    counted = {x.name.rsplit(":", 1)[-1] for x in report.checks if x.name.startswith("count_")}
    assert {"episodes", "tasks", "samples", "clicks", "conversions"} <= counted
    assert not any(x.skipped for x in report.checks)
    after = json.loads((tmp_path / "episodes" / second.split("/")[-1] / MANIFEST_NAME).read_text())
    assert after.pop("validation")["success"] is True
    before.pop("validation")
    assert after == before

    # The raw suite accepts the same (2 % corrupted) input, compared with its previous 4 hours.
    raw_report = validate_raw(
        str(raw), START + dt.timedelta(hours=4), START + dt.timedelta(hours=8), spark
    )
    assert raw_report.success, raw_report.to_text()
    assert not raw_report.check("row_count_vs_previous").skipped
