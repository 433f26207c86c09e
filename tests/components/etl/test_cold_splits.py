"""Named cold tasks (``--cold-tasks FILE``) and the ``valid_cold`` split: the Spark rule equals its
Python twin, named tasks land in the cold splits only, valid_cold and test_cold share no task,
the manifest counts and describes them, reruns are byte-identical, the episode suite passes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from components.etl.config import EtlConfig
from components.etl.splits import read_cold_tasks, task_split
from tests.components.etl import rawdata
from tests.components.etl.test_job import make_config, snapshot

NAMED = ("c-1", "c-2", "c-5")
"""Cold by name; c-4 is cold by the hash (unit_interval('split', 'c-4') = 0.022 < 0.1). With
valid_cold_fraction 0.5, c-2 and c-4 go to valid_cold, c-1 and c-5 to test_cold (the second hash:
0.149, 0.185 vs 0.769, 0.75); c-0 and c-3 stay warm."""


def _cold_tasks_file(path: Path) -> Path:
    path.write_text(" c-1\n\nc-2 \r\nc-5\n")  # whitespace and blank lines are not names
    return path


def test_cold_tasks_file_is_read_and_bad_files_are_named(tmp_path) -> None:
    assert read_cold_tasks(str(_cold_tasks_file(tmp_path / "cold.txt"))) == set(NAMED)
    assert read_cold_tasks("") == frozenset()
    with pytest.raises(ValueError, match=r"--cold-tasks .*nope.txt: no such file"):
        read_cold_tasks(str(tmp_path / "nope.txt"))
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="names no task"):
        read_cold_tasks(str(tmp_path / "blank.txt"))
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_cold_tasks(str(tmp_path / "latin.txt"))


def test_valid_cold_settings_are_checked(tmp_path) -> None:
    base = dict(input="r", output="o", start="2026-11-01T00", end="2026-11-01T03")
    with pytest.raises(ValueError, match=r"valid_cold_fraction must be in \[0, 1\)"):
        EtlConfig(**base, valid_cold_fraction=1.0)
    with pytest.raises(ValueError, match="needs cold tasks"):
        EtlConfig(**base, cold_fraction=0.0, valid_cold_fraction=0.5)
    EtlConfig(**base, cold_fraction=0.0, valid_cold_fraction=0.5, cold_tasks="cold.txt")


@pytest.mark.spark
def test_spark_split_equals_the_python_twin_with_named_and_held_out_cold_tasks(spark) -> None:
    from pyspark.sql import functions as F

    from components.etl import splits

    keys = [f"c-{i}" for i in range(300)]
    named = frozenset(keys[::7])
    df = spark.createDataFrame([(k, 1_000 * i) for i, k in enumerate(keys)], "k string, t bigint")
    options = {"valid_cold_fraction": 0.4, "cold_tasks": named}
    rows = df.select(
        "k", "t", splits.assign_split(F.col("k"), F.col("t"), 0.2, 150_000, **options).alias("s")
    ).collect()
    for r in rows:
        assert r["s"] == task_split(r["k"], r["t"], 0.2, 150_000, **options), r["k"]
    assert {r["s"] for r in rows} == {"train", "valid", "valid_cold", "test_cold"}
    assert all(r["s"] in ("valid_cold", "test_cold") for r in rows if r["k"] in named)


@pytest.fixture(scope="module")
def cold_run(spark, tmp_path_factory):
    from components.etl import run_etl

    root = tmp_path_factory.mktemp("cold")
    rows = rawdata.hours_of(root / "raw", range(3), rows_per_hour=96, campaigns=6)
    config = make_config(
        root / "raw",
        root / "out",
        cold_fraction=0.1,
        valid_cold_fraction=0.5,
        cold_tasks=str(_cold_tasks_file(root / "cold.txt")),
    )
    result = run_etl(config, spark)
    return rows, config, result


def _episodes(folder: Path) -> list[dict]:
    out = []
    for f in sorted(folder.glob("split=*/bucket=*/*.parquet")):
        split = f.parent.parent.name.removeprefix("split=")
        for r in pq.read_table(f, columns=["task_key", "n_support", "n_query"]).to_pylist():
            out.append(r | {"split": split})
    return out


@pytest.mark.spark
def test_named_tasks_are_cold_only_and_valid_cold_is_held_out(cold_run) -> None:
    rows, _, result = cold_run
    episodes = _episodes(Path(result.output))
    by_task: dict[str, set] = {}
    for e in episodes:
        by_task.setdefault(e["task_key"], set()).add(e["split"])
    assert by_task == {
        "c-0": {"train", "valid"},
        "c-3": {"train", "valid"},
        "c-1": {"test_cold"},
        "c-5": {"test_cold"},
        "c-2": {"valid_cold"},
        "c-4": {"valid_cold"},
    }
    m = result.manifest
    assert list(m.splits) == ["train", "valid", "test_cold", "valid_cold"]
    for split, counts in m.splits.items():
        mine = [e for e in episodes if e["split"] == split]
        assert counts["episodes"] == len(mine) > 0
        assert counts["tasks"] == len({e["task_key"] for e in mine})
    assert result.episodes == {s: c["episodes"] for s, c in m.splits.items()}
    assert m.files_of("valid_cold") and all(
        f["split"] == "valid_cold" for f in m.files_of("valid_cold")
    )
    assert m.split_rule["valid_cold_fraction"] == 0.5
    assert m.split_rule["cold_tasks"]["names"] == len(NAMED)
    # every row accounted for
    assert result.rows_read == rows == result.rows_kept + result.rows_quarantined


@pytest.mark.slow  # test_job checks byte-identical reruns; the cold-task rule is sorted, pure
@pytest.mark.spark
def test_rerun_with_cold_tasks_is_byte_identical(spark, cold_run, tmp_path) -> None:
    from components.etl import run_etl

    _, config, result = cold_run
    again = run_etl(dataclasses.replace(config, output=str(tmp_path)), spark)
    first, second = snapshot(Path(result.output)), snapshot(Path(again.output))
    first.pop("_manifest.json"), second.pop("_manifest.json")  # it names its output root
    assert first == second


@pytest.mark.spark
def test_evaluate_tunes_on_valid_cold_by_default(cold_run, tmp_path, capsys) -> None:
    """``metarec evaluate`` picks this output's valid_cold to tune on (issue 15 item 1d)."""
    from tests.trainer.test_evaluate_valid_cold import check_default_tuning

    check_default_tuning(cold_run[2].output, tmp_path, capsys)


@pytest.mark.spark
def test_episode_suite_accepts_valid_cold(cold_run) -> None:
    from components.validation import validate_episodes

    report = validate_episodes(
        cold_run[2].output, find_previous=False, record=False, write_report=False
    )
    assert report.success, report.to_text()


def test_episode_suite_fails_a_task_both_trained_on_and_in_valid_cold(tmp_path) -> None:
    from components.validation import validate_episodes
    from tests.components.validation.builders import write_episodes

    def leak(episodes: list[dict]) -> None:
        next(e for e in episodes if e["split"] == "train")["split"] = "valid_cold"

    root = write_episodes(tmp_path / "interval=a", defect=leak)
    report = validate_episodes(str(root), find_previous=False, record=False, write_report=False)
    assert "cold_tasks_not_in_training" in {c.name for c in report.failed}
