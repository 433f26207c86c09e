"""The local launcher: real child processes (torchrun with 2 ranks, Spark local), streamed output,
clear errors on a non-zero exit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from components.launchers.local import LaunchError, etl_locally, stream_process, train_locally
from trainer.data.synthetic import write_synthetic_episodes


def test_stream_process_passes_every_line_and_the_exit_code():
    lines: list[str] = []
    code, tail = stream_process(
        [sys.executable, "-u", "-c",
         "import sys; print('one'); print('two', file=sys.stderr); sys.exit(3)"],
        sink=lines.append,
    )  # fmt: skip
    assert code == 3
    assert sorted(lines) == ["one", "two"] and tail == lines


@pytest.mark.multiprocess
def test_train_locally_with_torchrun(tmp_path: Path):
    data = tmp_path / "episodes"
    write_synthetic_episodes(data, num_tasks=24, episodes_per_task=2, num_buckets=2)
    lines: list[str] = []
    out = tmp_path / "run"
    train_locally(
        "debug",
        [f"data.path={data}", f"train.output_dir={out}", "train.steps=2", "checkpoint.every=0",
         "eval.max_episodes=8"],
        nproc=2,
        sink=lines.append,
    )  # fmt: skip
    assert (out / "eval.json").is_file() and (out / "metrics.jsonl").is_file()
    shards = sorted(p.name for p in (out / "checkpoints").glob("step-*/rank-*.pt"))
    assert shards == ["rank-00000.pt", "rank-00001.pt"]  # two ranks trained
    assert any("step 2/2" in line for line in lines)  # the ranks' log came through the sink


@pytest.mark.multiprocess
def test_train_locally_reports_a_user_error(tmp_path: Path):
    with pytest.raises(LaunchError) as info:
        train_locally("debug", [f"data.path={tmp_path / 'missing'}"], sink=lambda _: None)
    assert info.value.code == 2
    assert "refused its config or data, exit code 2" in str(info.value)
    assert "missing" in str(info.value)  # the trainer's own one-line reason is quoted


@pytest.mark.multiprocess
def test_etl_locally_reports_a_refused_input(tmp_path: Path):
    with pytest.raises(LaunchError) as info:
        etl_locally(
            ["--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "out"),
             "--start", "2026-11-01T00", "--end", "2026-11-01T01"],
            master="local[1]", sink=lambda _: None,
        )  # fmt: skip
    assert info.value.code == 2
    assert "local ETL refused its input" in str(info.value) and "nothing" in str(info.value)
