"""Convert embedding state between a full table and per-rank shards, and between world sizes.

Shards are those of :meth:`ShardedEmbeddingCollection.state_dict` (local rows in local-row order,
plus the plan as JSON); a full table is a plain
:class:`~trainer.embeddings.PlainEmbeddingCollection` ``state_dict`` (``emb.weight`` ``(total_rows, dim)``, ``linear.weight``, ``*.adagrad_sum``,
``null_mask``). Pure tensor work, no process group::

    full = merge_shards(old_shards)                   # e.g. to export a sharded run's table
    new = reshard_states(old_shards, new_plan)        # 2 ranks -> 4 ranks, same rows and state
    coll.load_state_dict(new[rank])

A rank can also load a full table directly (``ShardedEmbeddingCollection.load_state_dict`` takes
its rows with ``sharded_embeddings.shard_of_full``), which is how a single-process run warm-starts a
sharded one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from trainer.parallel.plan import ShardingPlan
from trainer.parallel.sharded_embeddings import (
    PLAN_KEY,
    ROW_KEYS,
    replicated_entries,
    shard_of_full,
)


def plan_of(shard: dict[str, Any]) -> ShardingPlan:
    """The plan a shard was saved under."""
    if "sharding.plan_json" not in shard:
        raise ValueError("this state has no sharding metadata: it is a full table, not a shard")
    return ShardingPlan.from_dict(json.loads(shard["sharding.plan_json"]))


def merge_shards(shards: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
    """The full table (a plain collection's ``state_dict``) from every rank's shard.

    Raises:
        ValueError: shards missing, out of rank order, or from different plans.
    """
    if not shards:
        raise ValueError("no shards to merge")
    plan = plan_of(shards[0])
    if len(shards) != plan.world_size:
        raise ValueError(
            f"the plan has {plan.world_size} ranks but {len(shards)} shards were given"
        )
    for r, shard in enumerate(shards):
        if shard.get(PLAN_KEY) != plan.fingerprint or shard.get("sharding.rank") != r:
            raise ValueError(
                f"shard {r} is rank {shard.get('sharding.rank')} of plan {shard.get(PLAN_KEY)}; "
                f"expected rank {r} of plan {plan.fingerprint} (all shards of one checkpoint, in "
                "rank order)"
            )
    keys = [k for k in ROW_KEYS if k in shards[0]]
    full: dict[str, Tensor] = {}
    for key in keys:
        first = shards[0][key]
        full[key] = first.new_zeros((plan.total_rows, *first.shape[1:]))
    for r, shard in enumerate(shards):
        ids = plan.owned_ids(r)
        for key in keys:
            full[key][ids] = shard[key].to(full[key].device)
    full.update(replicated_entries(shards[0]))
    return full


def reshard_states(shards: Sequence[dict[str, Any]], plan: ShardingPlan) -> list[dict[str, Any]]:
    """Every rank's shard under ``plan`` from the shards of another plan (any world sizes):
    the same rows and the same Adagrad state, only placed differently (a dynamic table's maps,
    saved whole by every rank, unchanged: at another world size a dynamic table's ids move to
    their new owners' rows, so such a run loads :func:`merge_shards`' full table instead)."""
    full = merge_shards(shards)
    return [shard_of_full(plan, r, full) for r in range(plan.world_size)]
