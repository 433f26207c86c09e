"""The training step run in this process (``[delivery] train_in_process``: no interpreter
spawn) trains the same model as the subprocess launch (``python -m trainer``), and fails the
same way on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from components.launchers.local import LaunchError
from components.steps.config import DeliveryConfig
from components.steps.data import EtlStepResult
from components.steps.layout import Interval
from components.steps.training import train_step
from tests.trainer.run_helpers import tiny_overrides, write_episodes

HOUR = Interval.parse("2026-11-01T00/1h")
TIMING = {"time", "elapsed_s", "step_s", "steps_per_s", "samples_per_s", "wall_s", "eta_s"}


def _trained(tmp: Path, episodes: Path, in_process: bool, warm_start: bool = False):
    overrides = [
        o
        for o in tiny_overrides(episodes, tmp / "x", **{"train.steps": 6})
        if not o.startswith(("data.", "train.output"))
    ]
    cfg = DeliveryConfig(
        run_root=str(tmp / ("in" if in_process else "sub")),
        trainer_overrides=overrides,
        warm_start=warm_start,
        train_in_process=in_process,
    )
    etl = EtlStepResult(str(episodes), "hash-of-the-episodes", 1, 1, 0, {"train": 1})
    return train_step(cfg, HOUR, etl)


def _state(ckpt: Path) -> dict[str, object]:
    """The checkpoint's shard as flat ``path -> value`` (tensors as lists): weights, optimizer
    state, step, data position. Not ``rng``: the global torch generator's state, which every
    interpreter seeds at random (two subprocess runs differ there too) and training never draws
    from (every initialisation forks it with the configured seed)."""
    shard = torch.load(ckpt / "rank-00000.pt", weights_only=True)
    flat: dict[str, object] = {}

    def walk(x: object, path: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}/{k}")
        elif isinstance(x, list | tuple):
            for i, v in enumerate(x):
                walk(v, f"{path}/{i}")
        else:
            flat[path] = x.tolist() if isinstance(x, torch.Tensor) else x

    walk({k: v for k, v in shard.items() if k != "rng"}, "")
    return flat


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.multiprocess  # one side of the comparison is train_locally's child process
def test_in_process_training_equals_the_subprocess_launch(tmp_path):
    episodes = write_episodes(tmp_path / "episodes")
    threads = torch.get_num_threads()
    sub = _trained(tmp_path, episodes, in_process=False)
    inp = _trained(tmp_path, episodes, in_process=True)

    assert (sub.steps, inp.steps) == (6, 6) and sub.warm_start == inp.warm_start
    assert sub.evaluation == inp.evaluation and sub.evaluation["test_cold"]
    sub_ckpt, in_ckpt = Path(sub.checkpoint), Path(inp.checkpoint)
    assert sub_ckpt.name == in_ckpt.name
    sub_state = _state(sub_ckpt)
    assert len(sub_state) > 10, sorted(sub_state)
    assert sub_state == _state(in_ckpt)
    assert _metrics(Path(sub.run_dir)) == _metrics(Path(inp.run_dir))
    assert torch.get_num_threads() == threads  # the trainer's thread setting was put back


def test_in_process_training_refuses_bad_data_as_a_user_error(tmp_path):
    """Code 2 and the trainer's one line, as the subprocess launch reports it
    (tests/components/launchers/test_local.py)."""
    with pytest.raises(LaunchError) as info:
        _trained(tmp_path, tmp_path / "missing", in_process=True)
    assert info.value.code == 2 and "trainer: error:" in str(info.value)
    assert str(tmp_path / "missing") in str(info.value)


@pytest.mark.parametrize("settings", [{"nproc": 2}, {"backend": "kubernetes"}])
def test_in_process_training_needs_one_local_rank(settings):
    with pytest.raises(ValueError, match="train_in_process needs backend = 'local' and nproc = 1"):
        DeliveryConfig(train_in_process=True, **settings)
    assert not DeliveryConfig(**settings).train_in_process  # off by default: a child process
