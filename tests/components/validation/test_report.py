"""Report rendering and GX-result conversion, and the thresholds: no Spark, no GX run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.validation import CheckResult, Thresholds, ValidationReport
from components.validation.report import from_gx_result


def _gx(success: bool, result: dict, check: str = "list_length:sparse", **kw) -> dict:
    return {
        "success": success,
        "expectation_config": {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "len_sparse", "value_set": [36], **kw},
            "meta": {"check": check},
            "description": "len(sparse) = 36",
        },
        "result": result,
        "exception_info": {"raised_exception": False},
    }


def test_row_level_result_keeps_counts_and_identified_examples():
    c = from_gx_result(
        _gx(
            False,
            {
                "element_count": 30,
                "unexpected_count": 2,
                "unexpected_percent": 6.666,
                "partial_unexpected_list": [35, 35],
                "partial_unexpected_index_list": [
                    {"task_key": "c-1", "episode": 0, "len_sparse": 35}
                ],
            },
            mostly=0.98,
        ),
        "episodes",
    )
    assert (c.name, c.success, c.unexpected_count) == ("list_length:sparse", False, 2)
    assert c.observed == "2 of 30 unexpected (6.67%)"
    assert c.examples == [{"task_key": "c-1", "episode": 0, "len_sparse": 35}]
    assert c.expected == "len(sparse) = 36 [mostly=0.98]"
    assert c.status == "FAIL"


def test_aggregate_result_and_an_erroring_check():
    agg = from_gx_result(_gx(True, {"observed_value": 0.031}, check="label_rate:click"), "raw")
    assert agg.observed == "0.031" and agg.unexpected_count is None and agg.success
    broken = _gx(True, {}, check="x")
    broken["exception_info"] = {"raised_exception": True, "exception_message": "boom"}
    c = from_gx_result(broken, "raw")
    assert not c.success and "could not run: boom" in c.note  # an error fails closed


def _report() -> ValidationReport:
    return ValidationReport(
        "episodes",
        "episodes",
        "/data/interval=a",
        [
            CheckResult("schema", "episodes", "contract columns", True, observed="6 files ok"),
            CheckResult(
                "id_range:ad_id:max",
                "episodes",
                "ad_id ids < buckets = 11",
                False,
                observed="1 of 9 unexpected (11.11%)",
                unexpected_count=1,
                examples=[{"task_key": "c|1", "max_id__ad_id": 11}],
            ),
            CheckResult(
                "row_count_vs_previous", "episodes", "band", True, skipped=True, note="no previous"
            ),
        ],
        gx_version="1.24.1",
    )


def test_statistics_exit_code_and_renderings(tmp_path):
    r = _report()
    assert r.statistics == {"evaluated": 2, "successful": 1, "failed": 1, "skipped": 1}
    assert not r.success and r.exit_code == 1
    text = r.to_text()
    lines = text.splitlines()
    assert lines[0] == "episodes validation FAILED: /data/interval=a"
    assert lines[2].startswith("FAIL id_range:ad_id:max")  # failures first
    assert '"max_id__ad_id": 11' in lines[3]
    assert "SKIP row_count_vs_previous" in text and "no previous" in text
    md = r.to_markdown()
    assert "| FAIL | `id_range:ad_id:max` |" in md and "c\\|1" in md  # pipes escaped in tables
    paths = r.write(str(tmp_path / "_validation"))
    data = json.loads(Path(paths["json"]).read_text())
    assert data["failed_checks"] == ["id_range:ad_id:max"]
    assert [c["status"] for c in data["checks"]] == ["PASS", "FAIL", "SKIP"]
    with pytest.raises(KeyError, match="no check"):
        r.check("nope")


def test_only_skipped_checks_do_not_fail_a_report():
    r = _report()
    r.checks = [c for c in r.checks if c.success]
    assert r.success and r.exit_code == 0


def test_thresholds_validate_and_compute_the_band():
    assert Thresholds().mostly == pytest.approx(0.98)
    assert Thresholds(row_count_ratio=3).row_count_band(100) == (34, 300)
    for bad in (
        {"max_bad_fraction": 1.0},
        {"ctr_min": 0.5, "ctr_max": 0.1},
        {"row_count_ratio": 0.5},
    ):
        with pytest.raises(ValueError):
            Thresholds(**bad)
