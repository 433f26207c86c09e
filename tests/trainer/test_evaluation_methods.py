"""``metarec evaluate`` on the new methods' models: the grid's cells adapt at the grid's step size
(a Meta-SGD model's learned step sizes are its training-setting row only), and a FiLM model,
which adapts by a forward pass, gets no grid rows but the reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.trainer.run_helpers import tiny_config, write_episodes
from trainer.data.batch import FeatureLayout
from trainer.data.contract import load_manifest
from trainer.evaluation import EvaluatedModel, Settings, evaluate_model
from trainer.evaluation.command import format_table
from trainer.models import build_model
from trainer.models.build import build_embeddings

SETTINGS = Settings(steps=(1,), lrs=(0.05, 0.5), scopes=("dense", "head"), tune_split="valid",
                    batch_episodes=8, max_episodes=16)  # fmt: skip


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("eval-methods") / "interval")


def _model(episodes: Path, tmp: Path, **meta) -> EvaluatedModel:
    """An untrained model of the method (seeded): what the grid does does not need training."""
    cfg = tiny_config(episodes, tmp, **meta)
    torch.manual_seed(0)
    layout = FeatureLayout.from_manifest(load_manifest(str(episodes)))
    emb = build_embeddings(cfg.model, layout, device="cpu")
    net = build_model(cfg.model, layout, emb, device="cpu", meta=cfg.meta).eval()
    info = {"step": 0, "arch": cfg.model.arch, "label": cfg.model.label, "mode": cfg.meta.mode}
    return EvaluatedModel(net, "checkpoint", str(tmp), cfg.meta, info)


def _rows(result: dict, name: str) -> list[dict]:
    return [r for r in result["rows"] if r["row"] == name and r["level"] == "episode"]


def test_meta_sgd_grid_cells_use_the_grid_step_size(episodes: Path, tmp_path: Path) -> None:
    meta = {"meta.mode": "maml", "meta.learn_inner_lr": "layer", "meta.adapt": "dense",
            "meta.inner_steps": 1, "meta.inner_lr": 0.05}  # fmt: skip
    model = _model(episodes, tmp_path, **meta)
    with torch.no_grad():  # "learned": the step sizes moved away from inner_lr
        for p in model.model.inner_lrs.parameters():
            p.mul_(8.0)
    settings = dataclasses.replace(SETTINGS, levels=("episode",), tune_split=None)
    result = evaluate_model(model, str(episodes), "test_cold", settings)  # head: no longer raises
    # the oracle: the same dense model without learned step sizes, at the same cells
    model.model.inner_lrs = None
    fixed = dataclasses.replace(model.training, learn_inner_lr="off")
    reference = evaluate_model(dataclasses.replace(model, training=fixed), str(episodes),
                               "test_cold", settings)  # fmt: skip
    grid, want = _rows(result, "grid"), _rows(reference, "grid")
    assert [r["setting"] for r in grid] == [r["setting"] for r in want]
    assert {(s["scope"], s["lr"]) for s in (r["setting"] for r in grid)} == {
        ("dense", 0.05), ("dense", 0.5), ("head", 0.05), ("head", 0.5)}  # fmt: skip
    for got, ref in zip(grid, want, strict=True):
        assert got["metrics"] == pytest.approx(ref["metrics"], abs=1e-9, nan_ok=True)
    assert grid[0]["metrics"]["logloss"] != grid[1]["metrics"]["logloss"]  # the lr applies
    (training,) = _rows(result, "training setting")
    assert training["setting"] == {"steps": 1, "lr": 0.05, "scope": "dense", "learned_lr": "layer"}
    same_cell = next(r for r in grid if r["setting"] == {"steps": 1, "lr": 0.05, "scope": "dense"})
    assert training["metrics"]["logloss"] != same_cell["metrics"]["logloss"]  # learned sizes
    assert "learned" in format_table(result)


def test_film_gets_no_grid_rows_but_the_reason(episodes: Path, tmp_path: Path) -> None:
    model = _model(episodes, tmp_path, **{"meta.mode": "film"})
    torch.nn.init.normal_(model.model.task_encoder.to_film.weight, std=0.3)  # not the identity
    result = evaluate_model(model, str(episodes), "test_cold", SETTINGS)
    names = [(r["row"], r["level"]) for r in result["rows"]]
    assert names == [("no adaptation", "-")] + [
        (row, lv) for lv in ("episode", "task") for row in ("calibration only", "training setting")
    ]
    assert "film" in result["grid_note"] and "does not apply" in result["grid_note"]
    assert result["tuning"]["episode"] == {"skipped": result["grid_note"]}
    table = format_table(result)
    assert f"grid: {result['grid_note']}" in table
    (training,) = _rows(result, "training setting")
    assert training["setting"] == {"film": "support-set encoder"}
    assert training["metrics"]["logloss"] != result["rows"][0]["metrics"]["logloss"]
