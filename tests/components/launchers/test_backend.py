"""``metarec train --backend kubernetes``: --dry-run prints exactly what would be created; a run
goes through the launcher (a fake API here) and maps its outcome to an exit code."""

from __future__ import annotations

import argparse

import pytest
import yaml

from components.launchers import backend
from components.launchers.render import job_of, render_run
from tests.components.launchers.fake_cluster import SCRIPTS, FakeCluster
from trainer.config import resolve_config_path


def _parse(argv: list[str]) -> argparse.Namespace:
    from trainer.__main__ import add_arguments

    parser = argparse.ArgumentParser()
    parser.add_argument("-v", "--verbose", action="store_true")
    add_arguments(parser)
    parser.add_argument("--nproc", type=int, default=1)
    backend.add_backend_arguments(parser)
    return parser.parse_intermixed_args(argv)


ARGV = ["--backend", "kubernetes", "--k8s-run-id", "day1", "--k8s-variant", "trainjob-gpu",
        "--k8s-nodes", "4", "--k8s-image", "reg.io/metarec-trainer:1.0",
        "--config", "debug", "data.path=/data/episodes/interval=2026110100-2026110200",
        "train.steps=50"]  # fmt: skip


def test_dry_run_prints_the_exact_objects(capsys: pytest.CaptureFixture[str]):
    args = _parse([*ARGV, "--dry-run"])
    assert backend.run_train_with_backend(args, args.config, args.overrides) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    expected = render_run(backend.build_params(args, args.config, args.overrides))
    assert printed == expected
    config_map, _runtime, job = printed
    assert config_map["data"]["trainer.toml"] == resolve_config_path("debug").read_text()
    assert job["metadata"]["name"] == "metarec-train-day1"
    assert job["spec"]["trainer"]["numNodes"] == 4
    assert job["spec"]["trainer"]["args"][-1] == "train.steps=50"


def test_a_bad_override_is_refused_before_rendering():
    args = _parse([*ARGV, "--dry-run", "train.steps=many"])
    with pytest.raises(ValueError, match=r"train\.steps"):
        backend.run_train_with_backend(args, args.config, args.overrides)


@pytest.mark.parametrize(("outcome", "code"), [("succeeded", 0), ("failed", 1)])
def test_a_run_goes_through_the_launcher(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], outcome: str, code: int
):
    cluster = FakeCluster(script=SCRIPTS["TrainJob"][outcome])
    monkeypatch.setattr(backend, "kubernetes_apis", lambda: (cluster, cluster))
    monkeypatch.setattr("time.sleep", lambda s: None)
    args = _parse(ARGV)
    assert backend.run_train_with_backend(args, args.config, args.overrides) == code
    created = [c[1][-1] for c in cluster.calls if c[0].startswith("create_")]
    objs = render_run(backend.build_params(args, args.config, args.overrides))
    assert created == [o["metadata"]["name"] for o in objs]
    assert job_of(objs)["metadata"]["name"] == "metarec-train-day1"
    if code:
        assert "metarec train: error: TrainJob metarec/metarec-train-day1 failed" in (
            capsys.readouterr().err
        )
