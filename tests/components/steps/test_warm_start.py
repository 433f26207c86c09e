"""The warm-start choice of the training step, on a real trained, exported and promoted model;
and the Kubernetes backend's rendered job (dry run: no cluster needed)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from components.steps.config import DeliveryConfig, KubernetesSettings
from components.steps.data import EtlStepResult
from components.steps.layout import Interval, RunLayout
from components.steps.training import choose_warm_start, train_step
from tests.trainer.run_helpers import tiny_overrides, write_episodes

DAY = Interval.parse("2026-11-01T00/1d")  # the synthetic episodes' interval
NEXT = Interval.parse("2026-11-02T00/1h")


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> tuple[DeliveryConfig, Path, Path]:
    """A run root whose champion v1 was trained on DAY; returns (config, its checkpoint, the
    next interval's episodes)."""
    from components.promotion import registry
    from components.train.in_process import train_in_process
    from trainer.exported.export import export_checkpoint

    tmp = tmp_path_factory.mktemp("warm")
    first, second = write_episodes(tmp / "day1"), write_episodes(tmp / "day2", seed=1)
    overrides = [
        o for o in tiny_overrides(first, tmp / "x") if not o.startswith(("data.", "train.output"))
    ]
    cfg = DeliveryConfig(run_root=str(tmp / "run"), trainer_overrides=overrides)
    layout = RunLayout.of(cfg.run_root)
    run = layout.train(DAY)
    train_in_process("debug", [*overrides, f"data.path={first}", f"train.output_dir={run}"])
    exported = export_checkpoint(run, layout.models_root, name=cfg.model_name, graph=False)
    registry.promote(layout.models_root, cfg.model_name, exported.version)
    return (
        cfg,
        Path(json.loads((exported.path / "lineage.json").read_text())["checkpoint"]["path"]),
        second,
    )


def test_warm_start_from_the_champion_that_fits(champion):
    cfg, ckpt, episodes = champion
    ws = choose_warm_start(cfg, NEXT, str(episodes))
    assert (ws.checkpoint, ws.champion) == (str(ckpt), "v1")


def test_no_warm_start_from_a_model_trained_on_later_data(champion):
    cfg, _, episodes = champion
    ws = choose_warm_start(cfg, Interval.parse("2026-11-01T12/1h"), str(episodes))
    assert ws.checkpoint is None and "up to 2026-11-02" in ws.reason


def test_no_warm_start_when_off_or_when_the_model_changed(champion):
    cfg, _, episodes = champion
    assert choose_warm_start(replace(cfg, warm_start=False), NEXT, str(episodes)).checkpoint is None
    wider = replace(cfg, trainer_overrides=(*cfg.trainer_overrides, "model.embedding_dim=8"))
    ws = choose_warm_start(wider, NEXT, str(episodes))
    assert ws.checkpoint is None and "model.embedding_dim" in ws.reason and ws.champion == "v1"


def test_no_warm_start_when_the_checkpoint_is_gone(champion, tmp_path):
    cfg, ckpt, episodes = champion
    shutil.move(ckpt, tmp_path / "aside")
    try:
        ws = choose_warm_start(cfg, NEXT, str(episodes))
    finally:
        shutil.move(tmp_path / "aside", ckpt)
    assert ws.checkpoint is None and "unusable" in ws.reason


def test_no_champion_means_a_cold_start(tmp_path):
    ws = choose_warm_start(DeliveryConfig(run_root=str(tmp_path)), NEXT, str(tmp_path))
    assert ws.checkpoint is None and "no champion" in ws.reason


def test_kubernetes_backend_renders_a_job_named_after_the_interval(champion):
    cfg, ckpt, episodes = champion
    k8s = replace(
        cfg,
        backend="kubernetes",
        kubernetes=KubernetesSettings(variant="pytorchjob-cpu", image="reg/t:1"),
    )
    etl = EtlStepResult(str(episodes), "h", 1, 1, 0, {"train": 1})
    r = train_step(k8s, NEXT, etl, dry_run=True)
    text = Path(r.dry_run_manifests).read_text()
    tag = __import__("hashlib").sha1(b"ctr-dlrm").hexdigest()[:4]
    assert f"name: metarec-train-smoke-20261102t00-20261102t01-{tag}" in text
    assert f"checkpoint.warm_start={ckpt}" in text
    assert "reg/t:1" in text and r.warm_start.champion == "v1" and r.checkpoint == ""
