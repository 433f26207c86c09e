"""The episode suite on small hand-built ETL outputs: clean data passes, each defect fails by name."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from components.cli import main as cli
from components.validation import Thresholds, ValidationReport, validate_episodes
from components.validation.sources import DataUnavailableError
from trainer.data.contract import MANIFEST_NAME, ContractError

from .builders import END, START, K, make_episodes, write_episodes


def _failed(report) -> set[str]:
    return {c.name for c in report.failed}


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def test_clean_episodes_pass_and_the_manifest_records_it(tmp_path):
    root = write_episodes(tmp_path / "interval=a")
    before = _manifest(root)

    report = validate_episodes(str(root))

    assert report.success, report.to_text()
    assert report.exit_code == 0
    assert report.statistics["failed"] == 0
    assert report.statistics["evaluated"] >= 40
    # Every contract check ran (not skipped): spot-check the important ones.
    for name in (
        "list_length:sparse",
        "id_range:campaign_id:max",
        "support_older_than_query",
        "cold_tasks_not_in_training",
        "unique_task_episode",
        "count_matches_manifest:train:samples",
        "label_rate:click",
    ):
        assert not report.check(name).skipped and report.check(name).success
    # No previous interval: the row-count check is skipped and the report says why.
    skipped = report.check("row_count_vs_previous")
    assert skipped.skipped and "no previous interval" in skipped.note
    assert "SKIP row_count_vs_previous" in report.to_text()

    after = _manifest(root)
    v = after.pop("validation")
    assert v["success"] is True and v["suite"] == "episodes"
    assert v["failed"] == 0 and v["evaluated"] == report.statistics["evaluated"]
    assert v["report"] == "_validation/report.json"
    assert v["gx_version"].startswith("1.")
    assert v["statistics"] == report.statistics
    before.pop("validation")
    assert after == before  # nothing else changed, content_hash included

    written = json.loads((root / "_validation" / "report.json").read_text())
    assert written["success"] is True and written["kind"] == "episodes"
    assert {c["name"] for c in written["checks"]} == {c.name for c in report.checks}
    md = (root / "_validation" / "report.md").read_text()
    assert "| PASS | `support_older_than_query` |" in md


def _first(eps, **where):
    return next(e for e in eps if all(e[k] == v for k, v in where.items()))


def _null_task_key(eps):
    eps[0]["task_key"] = None


def _null_element(eps):
    eps[1]["sparse"][0] = None


def _short_list(eps):
    eps[2]["sparse"] = eps[2]["sparse"][:-1]


def _id_too_large(eps):
    eps[3]["sparse"][1] = 53  # campaign_id: slot 1, 53 buckets


def _negative_id(eps):
    eps[3]["sparse"][0] = -7  # user_id: slot 0


def _query_not_newer(eps):
    e = _first(eps, n_support=K, n_query=2)
    # The first query sample is as old as the last support sample.
    e["event_time_ms"][K] = e["event_time_ms"][K - 1]


def _task_in_two_splits(eps):
    _first(eps, split="train")["split"] = "test_cold"  # a warm task's episode leaks into cold


def _duplicate_episode(eps):
    eps.append(json.loads(json.dumps(eps[5])))


def _nan_dense(eps):
    eps[4]["dense"][0] = math.nan


def _bad_click(eps):
    eps[4]["click"][0] = 2


def _nonzero_padding(eps):
    e = _first(eps, n_support=2)
    e["sparse"][2 * 6] = 5  # sample 2 of a 2-support episode is padding (width 6)


def _wrong_task_id(eps):
    eps[6]["task_id"] += 1


def _support_above_k(eps):
    # A full episode claiming K+1 support samples: fails its check, without crashing the
    # positional slicing of the profile.
    _first(eps, n_support=K, n_query=2)["n_support"] = K + 1


def _negative_query(eps):
    eps[10]["n_query"] = -1  # (its real query samples then also count as non-zero padding)


# The defects the issue names, one dataset each.
DEFECTS = {
    "null_task_key": (_null_task_key, "not_null:task_key"),
    "null_list_element": (_null_element, "no_null_elements"),
    "wrong_list_length": (_short_list, "list_length:sparse"),
    "id_out_of_range": (_id_too_large, "id_range:campaign_id:max"),
    "support_not_older_than_query": (_query_not_newer, "support_older_than_query"),
    "task_in_two_splits": (_task_in_two_splits, "cold_tasks_not_in_training"),
}
# More defects, on different episodes of one dataset: each fails its own check and nothing else.
MORE_DEFECTS = {
    "negative_id": (_negative_id, "id_range:user_id:min"),
    "nan_dense": (_nan_dense, "dense_finite"),
    "click_not_binary": (_bad_click, "label_values:click"),
    "nonzero_padding": (_nonzero_padding, "padding_is_zero"),
    "task_id_not_hash": (_wrong_task_id, "task_id_matches_hash"),
    "duplicate_episode": (_duplicate_episode, "unique_task_episode"),
    "n_support_above_k": (_support_above_k, "n_support_range"),
    "negative_n_query": (_negative_query, "n_query_range"),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_defect_fails_with_its_check_named(tmp_path, defect):
    corrupt, check = DEFECTS[defect]
    root = write_episodes(tmp_path / "interval=a", defect=corrupt)

    report = validate_episodes(str(root))

    assert not report.success and report.exit_code == 1
    assert check in _failed(report), report.to_text()
    failing = report.check(check)
    if check.startswith("id_range:"):  # an aggregate: the observed extreme id
        assert failing.observed.lstrip("-").isdigit()
    else:  # row-level: how many episodes, and which
        assert failing.unexpected_count and failing.unexpected_count >= 1
        assert failing.examples and "task_key" in failing.examples[0]
    assert f"FAIL {check}" in report.to_text()
    v = _manifest(root)["validation"]
    assert v["success"] is False and check in v["failed_checks"]


def test_more_defects_each_fail_exactly_their_check(tmp_path):
    def corrupt_all(eps):
        for corrupt, _ in MORE_DEFECTS.values():
            corrupt(eps)

    root = write_episodes(tmp_path / "interval=a", defect=corrupt_all)
    report = validate_episodes(str(root), record=False)
    assert _failed(report) == {check for _, check in MORE_DEFECTS.values()}, report.to_text()
    for name in _failed(report) - {"id_range:user_id:min"}:  # that one is an aggregate
        assert report.check(name).unexpected_count >= 1
    assert report.check("id_range:user_id:min").observed == "-7"


def test_exactly_the_defective_check_fails(tmp_path):
    # The suite is precise: an out-of-range id fails that check and nothing else.
    root = write_episodes(tmp_path / "interval=a", defect=_id_too_large)
    report = validate_episodes(str(root), write_report=False, record=False)
    assert _failed(report) == {"id_range:campaign_id:max"}
    assert report.check("id_range:campaign_id:max").observed == "53"


def test_counts_differing_from_the_manifest_fail(tmp_path):
    def more_train_episodes(m):
        m["splits"]["train"]["episodes"] += 1

    root = write_episodes(tmp_path / "interval=a", manifest_defect=more_train_episodes)
    report = validate_episodes(str(root), record=False)
    assert _failed(report) == {"count_matches_manifest:train:episodes"}
    train = sum(e["split"] == "train" for e in make_episodes())
    c = report.check("count_matches_manifest:train:episodes")
    assert c.observed == str(train) and f"= {train + 1} (manifest)" in c.expected
    assert "FAIL count_matches_manifest:train:episodes" in report.to_text()


def _sibling(tmp_path, name, start, end, episodes: int | None = None) -> Path:
    def claim(m):
        if episodes is not None:
            m["splits"] = {"train": {**m["splits"]["train"], "episodes": episodes}}

    return write_episodes(
        tmp_path / name,
        start=start,
        end=end,
        episodes=make_episodes(start=start),
        manifest_defect=claim,
    )


def test_row_count_far_outside_the_previous_interval_fails(tmp_path):
    day = END - START
    _sibling(tmp_path, "interval=prev", START - day, START, episodes=1000)
    _sibling(tmp_path, "interval=older", START - 2 * day, START - day, episodes=30)
    root = write_episodes(tmp_path / "interval=cur")  # 30 episodes

    report = validate_episodes(str(root))

    assert _failed(report) == {"row_count_vs_previous"}
    c = report.check("row_count_vs_previous")
    assert c.observed == "30"
    assert report.parameters["row_count_min"] == math.ceil(1000 / 3)
    assert any("interval=prev" in n for n in report.notes)


def test_row_count_within_the_previous_band_passes_and_explicit_previous_wins(tmp_path):
    day = END - START
    near = _sibling(tmp_path / "elsewhere", "p", START - day, START, episodes=40)
    _sibling(tmp_path, "interval=prev", START - day, START, episodes=1000)
    root = write_episodes(tmp_path / "interval=cur")

    report = validate_episodes(str(root), previous=str(near), record=False)
    assert report.success, report.to_text()
    assert not report.check("row_count_vs_previous").skipped

    looser = validate_episodes(str(root), thresholds=Thresholds(row_count_ratio=50.0), record=False)
    assert looser.success and not looser.check("row_count_vs_previous").skipped


def test_missing_manifest_fails_closed(tmp_path, capsys):
    root = write_episodes(tmp_path / "interval=a", manifest=False)
    with pytest.raises(ContractError, match=r"no _manifest\.json"):
        validate_episodes(str(root))

    assert cli(["validate", "episodes", str(root)]) == 2
    err = capsys.readouterr().err
    assert "no _manifest.json" in err and "metarec etl" in err
    assert not (root / "_validation").exists()


def test_missing_directory_and_corrupt_file_fail_closed(tmp_path, capsys):
    with pytest.raises(ContractError):
        validate_episodes(str(tmp_path / "nope"))
    root = write_episodes(tmp_path / "interval=a")
    victim = next(root.glob("split=train/*/*.parquet"))
    victim.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataUnavailableError, match="unreadable Parquet file"):
        validate_episodes(str(root))
    assert cli(["validate", "episodes", str(root)]) == 2
    assert victim.name in capsys.readouterr().err


def test_schema_violation_fails_without_running_gx(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = write_episodes(tmp_path / "interval=a")
    victim = next(root.glob("split=train/*/*.parquet"))
    table = pq.read_table(victim)
    table = table.set_column(5, "sparse", table.column("sparse").cast(pa.list_(pa.int32())))
    pq.write_table(table, victim)

    report = validate_episodes(str(root), write_report=False, record=False)
    assert _failed(report) == {"schema"}
    (problem,) = report.check("schema").examples
    assert problem.startswith(victim.relative_to(root).as_posix())
    assert "'sparse'" in problem and "list<int64>" in problem
    assert any("not run" in n for n in report.notes)


def test_cli_exit_codes_and_report_paths(tmp_path, capsys):
    good = write_episodes(tmp_path / "good" / "interval=a")
    assert cli(["validate", "episodes", str(good)]) == 0
    out = capsys.readouterr().out
    assert "episodes validation PASSED" in out
    assert str(good / "_validation" / "report.json") in out

    bad = write_episodes(tmp_path / "bad" / "interval=a", defect=_id_too_large)
    assert cli(["validate", "episodes", str(bad), "--no-record"]) == 1
    out = capsys.readouterr().out
    assert "episodes validation FAILED" in out
    assert "FAIL id_range:campaign_id:max" in out and "observed: 53" in out
    assert _manifest(bad)["validation"] is None  # --no-record


def test_manifest_rewrite_is_atomic(tmp_path, monkeypatch):
    from components.validation.record import record_in_manifest
    from components.validation.sources import load_episode_manifest

    root = write_episodes(tmp_path / "interval=a")
    original = (root / MANIFEST_NAME).read_bytes()
    _, as_read = load_episode_manifest(str(root))
    report = ValidationReport("episodes", "episodes", str(root), [], gx_version="1.x")

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        record_in_manifest(str(root), as_read, report)
    # The old manifest is intact and no temporary file is left behind.
    assert (root / MANIFEST_NAME).read_bytes() == original
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == [MANIFEST_NAME]

    monkeypatch.undo()
    record_in_manifest(str(root), as_read, report)
    new, old = _manifest(root), json.loads(original)
    assert new.pop("validation")["success"] is True and old.pop("validation") is None
    assert new == old  # every other field as it was, content_hash included
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == [MANIFEST_NAME]


def test_damaged_data_pages_fail_closed_naming_the_file(tmp_path):
    # The footer is intact (the pre-checks pass); the pages are not: no verdict, the file named.
    root = write_episodes(tmp_path / "interval=a")
    victim = next(root.glob("split=train/*/*.parquet"))
    data = bytearray(victim.read_bytes())
    data[4:200] = b"\xff" * 196
    victim.write_bytes(bytes(data))

    with pytest.raises(DataUnavailableError, match="unreadable Parquet file") as e:
        validate_episodes(str(root), write_report=False, record=False)
    assert victim.relative_to(root).as_posix() in str(e.value)
    assert "rerun the ETL" in str(e.value)
