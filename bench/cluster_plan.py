"""Cluster-scale plan: per-rank memory and bytes per step of a 10^10-row table at W = 8 ... 1024
ranks (``metarec plan``, ``trainer/parallel/cost_model.py``), and the model checked in the same
process against a real step on PyTorch's fake process group at W = 64.

    python -m bench.cluster_plan --out out/bench/cluster_plan.json

Shape: the ``default`` run (``trainer/configs/default.toml``: 64 episodes of 32 + 32 samples per
rank, MAML) with ``model.arch = "deepfm"`` (dim 16 + linear; DES may substitute LR and FM, not the
first layer, which MAML adapts) over three tables,
``user`` 6e9 rows, ``ad`` 3e9, ``tags`` 1e9 with 8 slots, 8 dense features: 10^10 rows in all.
Ids: every slot occurrence its own row (``unique_fraction`` 1.0: the most bytes). Links: the
defaults of :class:`~trainer.parallel.cost_model.Links` (H100 NVLink, one 400 Gb/s NIC per GPU,
8 GPUs a node).

``check``: rank 5 of 64 builds the plan of a small layout on the fake process group, allocates
its shard (table and Adagrad bytes measured from the tensors) and runs one training step; the
communication meter's calls and bytes are compared with the prediction for that step (the fake
group echoes each rank's requests back: the prediction takes the mirrored request matrix). The
same comparison at W = 1, 2 and 4 on gloo is ``tests/trainer/parallel/test_cost_model.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

FEATURES = "user:6000000000,ad:3000000000,tags:1000000000:8"
OVERRIDES = ['model.arch="deepfm"']
WORLD_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
MIB = 1024.0**2


def plans(world_sizes: tuple[int, ...]) -> dict[str, Any]:
    """The report of ``metarec plan`` at each world size, and the 128-rank text."""
    from trainer.config import load_trainer_config
    from trainer.parallel.cost_model import Links
    from trainer.plan_cli import cluster_report, format_report, layout_from_features, parse_features

    cfg = load_trainer_config("default", [*OVERRIDES, 'data.path="(unused)"'])
    layout = layout_from_features(parse_features(FEATURES), 8, 32, 32)
    out: dict[str, Any] = {"sweep": []}
    for W in world_sizes:
        t0 = time.perf_counter()
        r = cluster_report(cfg, layout, W, Links())
        seconds = time.perf_counter() - t0
        by = {c["name"]: c["bytes"] for c in r["collectives"]}
        out["sweep"].append({
            "world_size": W,
            "rank": r["rank"],
            "device_mib": r["memory"]["device"] / MIB,
            "table_mib": r["memory"]["table"] / MIB,
            "optimizer_mib": r["memory"]["optimizer"] / MIB,
            "bytes_per_step": {**by, "des": r["des"]["bytes"] if r["des"] else None},
            "step_mib": r["step"]["bytes"] / MIB,
            "comm_ms": r["step"]["comm_seconds"] * 1e3,
            "plan_seconds": seconds,
        })  # fmt: skip
        if W == 128:
            out["w128"] = r
            out["w128_text"] = format_report(r)
    return out


def fake_group_check(world_size: int = 64, rank: int = 5) -> dict[str, Any]:
    """One real step of rank ``rank`` of ``world_size`` on the fake process group: predicted vs
    measured memory and meter snapshot."""
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from trainer.data.batch import EpisodeBatch
    from trainer.meta import MetaConfig, outer_loss
    from trainer.models import ModelConfig
    from trainer.optim import OptimConfig, build_optimizers
    from trainer.parallel import cost_model
    from trainer.parallel.apply import build_parallel_model
    from trainer.parallel.comm import Collectives
    from trainer.parallel.env import ParallelEnv
    from trainer.plan_cli import layout_from_features

    if dist.is_initialized():
        return {"skipped": "a process group is already initialised in this process"}
    W = world_size
    lay = layout_from_features(
        [("user", W * 40, 1), ("ad", W * 9, 1), ("hour", W, 1), ("tags", W * 3, 3)], 2, 4, 3
    )
    model_cfg = ModelConfig(arch="deepfm", embedding_dim=4, mlp=(8, 4), embedding_init_std=0.1)
    meta = MetaConfig(mode="fomaml", inner_steps=1, inner_lr=0.3, adapt="dense")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=W)
    try:
        env = ParallelEnv(rank, W, 0, torch.device("cpu"), "fake", Collectives(rank, W), 256)
        model, plan = build_parallel_model(model_cfg, lay, env, dtype=torch.float64)
        store = model.embeddings.store
        n_dense = sum(p.numel() for p in model.parameters())
        mem = cost_model.rank_memory(plan, rank, n_dense, 8, 0)
        memory = {
            "measured": {
                "table": sum(t.nbytes for t in store.weights.values()),
                "optimizer": sum(t.nbytes for t in store.accum.values()),
                "null_mask": store.null.nbytes,
            },
            "predicted": {
                "table": mem.table,
                "optimizer": mem.optimizer,
                "null_mask": mem.null_mask,
            },
        }
        opt = build_optimizers(OptimConfig(dense_lr=0.02, sparse_lr=0.2), model)
        g = torch.Generator().manual_seed(7)
        T, N, S = 4, 7, lay.sparse_width
        buckets_of_slot = torch.tensor(lay.feature_buckets)[lay.slot_feature]
        local = (torch.rand(T, N, S, generator=g) * (buckets_of_slot - 1)).long() + 1
        ids, inverse = torch.unique(local + lay.slot_offsets, return_inverse=True)
        batch = EpisodeBatch(
            ids=ids, inverse=inverse, dense=torch.randn(T, N, 2, generator=g, dtype=torch.float64),
            click=(torch.rand(T, N, generator=g) < 0.4).double(),
            conversion=torch.zeros(T, N, dtype=torch.float64), n_support=torch.full((T,), 4),
            n_query=torch.full((T,), 3), task_ids=torch.arange(T) + 1,
            episode_mask=torch.ones(T, dtype=torch.bool), k_support=4,
        )  # fmt: skip
        env.comm_stats(reset=True)
        sparse = model.embeddings.lookup(batch)  # one trainer step (trainer.Trainer.train_step)
        loss, _ = outer_loss(model, sparse, batch, meta, env.normalizer(batch.episode_mask.sum()))
        loss.backward()
        env.reduce_dense_grads(model.parameters())
        opt.step()
        measured = env.comm_stats(reset=True)
        mine = cost_model.requests_from_ids(plan, [batch.ids] * W)[0]
        mirrored = [[mine[i]] * W for i in range(W)]
        mirrored[rank] = mine
        buckets = cost_model.dense_buckets(model.parameters(), 256)
        predicted = cost_model.snapshot(cost_model.step_collectives(plan, mirrored, rank, buckets))
    finally:
        dist.destroy_process_group()
    return {
        "world_size": W,
        "rank": rank,
        "memory": memory,
        "meter": {"measured": measured, "predicted": predicted},
        "equal": memory["measured"] == memory["predicted"] and measured == predicted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/bench/cluster_plan.json")
    args = parser.parse_args(argv)
    from trainer.durable import write_json_atomic

    t0 = time.perf_counter()
    report = {
        "benchmark": "cluster_plan",
        "features": FEATURES,
        "overrides": OVERRIDES,
        **plans(WORLD_SIZES),
        "check": fake_group_check(),
        "wall_seconds": time.perf_counter() - t0,
        "platform": platform.platform(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    print(report["w128_text"])
    print(json.dumps({"check_equal": report["check"].get("equal"), "out": str(out)}))
    return 0 if report["check"].get("equal", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
