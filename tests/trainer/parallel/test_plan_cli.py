"""``metarec plan``: the command line over the cost model (whose bytes and memory
``test_cost_model.py`` checks against real steps)."""

from __future__ import annotations

import json

import pytest
import torch

from components.cli import main
from tests.trainer.meta_fixtures import make_layout
from trainer.config import load_trainer_config
from trainer.parallel import cost_model
from trainer.parallel.plan import build_sharding_plan
from trainer.plan_cli import layout_from_features, parse_features

FEATURES = "user:1000003,ad:5000,tags:700:3"


def test_layout_from_features_is_the_manifest_layout() -> None:
    features = parse_features(FEATURES)
    assert features == [("user", 1000003, 1), ("ad", 5000, 1), ("tags", 700, 3)]
    got = layout_from_features(features, 2, 4, 3)
    want = make_layout(features, dense_width=2, k_support=4, q_query=3)
    for name in ("feature_buckets", "feature_slots", "table_offsets", "total_rows", "k_support"):
        assert getattr(got, name) == getattr(want, name), name
    assert torch.equal(got.slot_offsets, want.slot_offsets)


def test_expected_requests_account_for_every_slot() -> None:
    lay = make_layout(parse_features(FEATURES), dense_width=0, k_support=4, q_query=3)
    model = load_trainer_config("debug", ['data.path="x"']).model
    plan = build_sharding_plan(lay, 8, model)
    req = cost_model.expected_requests(plan, lay, episodes=10, unique_fraction=0.5)
    samples_slots = 10 * 7 * lay.sparse_width
    assert [sum(r) for r in req] == pytest.approx([0.5 * samples_slots] * 8)
    # row-wise: each owner's share is its share of the rows
    assert req[0][0] == pytest.approx(
        sum(
            0.5 * 70 * s * t.rows_per_rank[0] / t.rows
            for t, s in zip(plan.tables, (1, 1, 3), strict=True)
        )
    )


@pytest.mark.parametrize("world_size", [1, 16])
def test_plan_command_prints_and_writes_json(world_size: int, tmp_path, capsys) -> None:
    out = tmp_path / "plan.json"
    rc = main([
        "plan", "--world-size", str(world_size), "--config", "debug", "--features", FEATURES,
        "--k-support", "4", "--q-query", "3", "--json", str(out), "model.arch=\"deepfm\"",
    ])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    rank, dim = report["rank"], report["model"]["dim"]
    rows = report["plan"]["tables"]
    held = sum(t["rows_per_rank"][rank] for t in rows)
    assert held == report["rows_per_rank"]["max"]
    assert report["memory"]["table"] == held * (dim + 1) * 4
    assert report["memory"]["optimizer"] == held * 2 * 4
    names = [c["name"] for c in report["collectives"]]
    assert {"ids", "rows", "grads", "dense", "metrics"} <= set(names)
    assert "memory of rank" in text and "rows" in text and "step:" in text
    if world_size == 1:
        assert report["step"]["bytes"] == 0 and report["des"] is None
    else:
        by = {c["name"]: c for c in report["collectives"]}
        # the busiest rank serves more rows than it asks for (it holds more than 1/W of them)
        assert by["rows"]["bytes"] > by["grads"]["bytes"] > 0
        # the debug run's inner loop adapts the first layer: DES may substitute lr and fm only
        assert report["des"]["ops"] == ["lr", "fm"] and "DES lr+fm" in text
        assert "first layer" in report["des_excluded"][0] and not report["des_used"]
        assert report["step"]["comm_seconds"] > 0


def test_plan_command_names_a_bad_feature(capsys) -> None:
    rc = main(["plan", "--world-size", "2", "--config", "debug", "--features", "user:many"])
    assert rc == 2
    assert "'user:many' is not name:rows[:slots]" in capsys.readouterr().err


def test_plan_command_refuses_des_on_where_the_trainer_would(capsys) -> None:
    args = ["plan", "--world-size", "4", "--config", "debug", "--features", FEATURES]
    assert main([*args, 'model.arch="deepfm"', 'parallel.des="on"']) == 2
    assert "parallel.des='on' cannot substitute every operator" in capsys.readouterr().err
    assert main([*args, 'model.arch="deepfm"', 'parallel.des="on"', 'meta.mode="plain"']) == 0
    assert "DES lr+fm+first (used;" in capsys.readouterr().out
