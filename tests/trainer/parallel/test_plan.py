"""The sharding plan as data: built, printed and checked for world sizes 1, 2 and 8, no processes."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.meta_fixtures import make_layout
from trainer.models import ModelConfig
from trainer.parallel.plan import ParallelConfig, ShardingPlan, build_sharding_plan

FEATURES = [("user_id", 10_007, 1), ("ad_id", 5_003, 1), ("campaign_id", 1_009, 1),
            ("hour", 29, 1), ("tags", 1_009, 3)]  # fmt: skip


def _plan(world_size: int, **cfg) -> ShardingPlan:
    layout = make_layout(FEATURES, dense_width=1)
    return build_sharding_plan(
        layout, world_size, ModelConfig(arch="deepfm", embedding_dim=16), ParallelConfig(**cfg)
    )


@pytest.mark.parametrize("world_size", [1, 2, 8])
@pytest.mark.parametrize("table_wise", [(), ("hour", "campaign_id")])
def test_every_row_has_exactly_one_owner_and_one_local_row(world_size, table_wise) -> None:
    plan = _plan(world_size, table_wise=table_wise)
    total = make_layout(FEATURES, 1).total_rows
    seen = torch.zeros(total, dtype=torch.int64)
    for r in range(world_size):
        ids = plan.owned_ids(r)
        assert len(ids) == plan.rows_per_rank[r]
        owner, local = plan.locate(ids)
        assert (owner == r).all()
        assert torch.equal(local, torch.arange(len(ids)))  # dense local rows, in order
        seen[ids] += 1
    assert (seen == 1).all()
    assert sum(plan.rows_per_rank) == total == plan.total_rows


@pytest.mark.parametrize("world_size", [2, 8])
def test_row_wise_balances_rows_and_spreads_null_rows(world_size) -> None:
    plan = _plan(world_size)
    assert max(plan.rows_per_rank) - min(plan.rows_per_rank) <= len(FEATURES)
    for t in plan.tables:  # every table is dealt: per-rank counts differ by at most one
        assert max(t.rows_per_rank) - min(t.rows_per_rank) <= 1
    null_owners = plan.locate(torch.tensor([t.global_offset for t in plan.tables]))[0]
    assert len(set(null_owners.tolist())) == min(world_size, len(FEATURES))


def test_interleaving_spreads_a_hot_contiguous_id_range() -> None:
    plan = _plan(8)
    hot = torch.arange(1, 801)  # 800 consecutive user ids
    counts = torch.bincount(plan.locate(hot)[0], minlength=8)
    assert (counts == 100).all()


def test_table_wise_tables_live_on_one_rank_chosen_by_load() -> None:
    plan = _plan(2, table_wise=("campaign_id", "hour"))
    by_name = {t.feature: t for t in plan.tables}
    for name in ("campaign_id", "hour"):
        t = by_name[name]
        assert t.sharding == "table_wise" and len(t.owners) == 1
        assert t.rows_per_rank[t.owners[0]] == t.rows and sum(t.rows_per_rank) == t.rows
    # Greedy by bytes: the two table-wise tables go to different ranks here.
    assert by_name["campaign_id"].owners != by_name["hour"].owners
    assert plan.tables[0].sharding == "row_wise"

    all_tw = _plan(8, sharding="table_wise")
    assert all(len(t.owners) == 1 for t in all_tw.tables)
    assert len({t.owners[0] for t in all_tw.tables}) == len(FEATURES)  # 5 tables, 8 ranks


def test_bytes_count_weights_linear_and_adagrad_state() -> None:
    plan = _plan(2)
    # dim 16 + linear 1 weights, 1 + 1 Adagrad floats, 4 bytes each
    assert plan.bytes_per_row() == (16 + 1 + 2) * 4
    assert plan.bytes_per_rank == tuple(n * 76 for n in plan.rows_per_rank)
    no_linear = build_sharding_plan(
        make_layout(FEATURES, 1), 2, ModelConfig(arch="dlrm", embedding_dim=8), dtype=torch.float64
    )
    assert no_linear.bytes_per_row() == (8 + 1) * 8


@pytest.mark.parametrize("world_size", [1, 2, 8])
def test_plan_prints_one_line_per_table_and_a_total(world_size) -> None:
    text = str(_plan(world_size, table_wise=("hour",)))
    lines = text.splitlines()
    assert lines[0].startswith("sharding plan ") and f"{world_size} rank(s)" in lines[0]
    assert lines[1].split() == ["feature", "rows", "sharding", "owners", "rows/rank", "(min-max)",
                                "MiB/rank", "(max)"]  # fmt: skip
    body = {line.split()[0]: line for line in lines[2:]}
    assert list(body) == [f[0] for f in FEATURES] + ["total"]
    assert "table_wise" in body["hour"] and "10,007" in body["user_id"]
    if world_size == 8:
        assert " 0-7 " in body["user_id"] and "1,250-1,251" in body["user_id"]


def test_round_trip_through_plain_data_keeps_the_fingerprint() -> None:
    plan = _plan(8, table_wise=("hour",))
    again = ShardingPlan.from_dict(plan.to_dict())
    assert again == plan and again.fingerprint == plan.fingerprint
    assert _plan(2).fingerprint != plan.fingerprint


def test_bad_config_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="not features of this layout"):
        _plan(2, table_wise=("nope",))
    with pytest.raises(ValueError, match="world size must be >= 1"):
        _plan(0)
    with pytest.raises(ValueError, match=r"parallel\.sharding"):
        ParallelConfig(sharding="column_wise")
    with pytest.raises(ValueError, match="dense_bucket_mb"):
        ParallelConfig(dense_bucket_mb=0)
