"""``bench/gpu.py`` part 2: the MixCache on the device against the whole table on the device.

Both run the trainer's collection at world size 1 (``ShardedEmbeddingCollection``, what the
trainer builds with the cache on) and the same plain step on the same Zipf batches from the same
initial parameters:

The step is ``Trainer.train_step``'s: the (pinned) host batch moved to the device, the lookup,
the prefetch of the next host batch, the loss, backward, the optimizers.

- ``device_table``: every row and its Adagrad state in device memory;
- ``cache_10``: rows and state in (pinned, with CUDA) host memory behind a device cache of 10 %
  of each table's rows, the next batch's misses staged by the prefetch stage (background thread
  and, on CUDA, a side stream) while the current step computes; ``cache_10_no_prefetch`` stages
  them at the lookup.

Reported after the warm-up (until the cache is full: its first eviction, at least ``--warmup``
steps, at most 60; ``warmup_steps``): step time, samples/s, the ratio to
``device_table``, the hit rate per unique row, host->device and device->host bytes per step. The
oracle: the per-step losses of every variant equal ``device_table``'s (the cache moves rows, it
never changes them), ``loss_max_abs_diff``.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from bench._gpu_common import Budget, Shape, Timer, ZipfBatches, layout, summarize
from bench._gpu_steps import OPTIM, meta_config
from trainer.cache import CacheConfig, CacheSpec, HostStore, MixCache
from trainer.data.batch import EpisodeBatch
from trainer.meta import outer_loss
from trainer.models import ModelConfig, build_model
from trainer.optim import build_optimizers
from trainer.parallel.comm import Collectives
from trainer.parallel.plan import ParallelConfig, build_sharding_plan
from trainer.parallel.sharded_embeddings import ShardedEmbeddingCollection

VARIANTS = {
    "device_table": CacheConfig(),
    "cache_10": CacheConfig(enabled=True, capacity_fraction=0.1, prefetch=True),
    "cache_10_no_prefetch": CacheConfig(enabled=True, capacity_fraction=0.1, prefetch=False),
}
MODE = "plain"
MAX_FILL_STEPS = 60


def run_variant(
    shape: Shape, device: torch.device, batches: list[EpisodeBatch], timer: Timer, name: str,
    warmup: int,
) -> dict[str, Any]:  # fmt: skip
    """One variant over ``batches`` (the first ``warmup`` untimed); its figures and losses."""
    lay = layout(shape)
    cfg = ModelConfig(arch="melu", embedding_dim=shape.dim, mlp=shape.mlp)
    plan = build_sharding_plan(lay, 1, cfg, ParallelConfig(cache=VARIANTS[name]))
    coll = ShardedEmbeddingCollection(
        plan, Collectives(0, 1, device=device), lay.slot_feature, seed=1, device=device,
        cache=plan.cache_spec(0),
    )  # fmt: skip
    model = build_model(cfg, lay, embeddings=coll, seed=0, device=device)
    opt, meta = build_optimizers(OPTIM, model), meta_config(MODE)
    losses: list[torch.Tensor] = []
    stats: list[dict[str, float]] = []

    def step(t: int) -> None:
        batch = batches[t].to(device)  # as Trainer.train_step: the reader's batch, moved here
        sparse = coll.lookup(batch)
        if t + 1 < len(batches):
            coll.prefetch(batches[t + 1])
        loss, _ = outer_loss(model, sparse, batch, meta)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if name != "device_table":
            stats.append(coll.cache_stats(reset=True))

    try:
        seconds = timer.run(step, warmup, len(batches) - warmup)
    finally:
        coll.close()
    out: dict[str, Any] = summarize(seconds, shape.samples)
    if stats:
        timed = stats[warmup:]
        out["hit_rate"] = statistics.mean(s["cache.hit_rate"] for s in timed)
        out["h2d_bytes_per_step"] = statistics.mean(s["cache.h2d_bytes"] for s in timed)
        out["d2h_bytes_per_step"] = statistics.mean(s["cache.d2h_bytes"] for s in timed)
        out["lookups_per_step"] = statistics.mean(s["cache.lookups"] for s in timed)
        seconds_med = out["median_step_ms"] / 1e3
        out["h2d_gbps_at_median_step"] = round(out["h2d_bytes_per_step"] / seconds_med / 1e9, 3)
    out["losses"] = torch.stack(losses).cpu().tolist()
    return out


def fill(shape: Shape, stream: ZipfBatches, at_least: int, at_most: int) -> list[EpisodeBatch]:
    """The warm-up batches: until the 10 % cache is full (its first eviction), at least
    ``at_least`` and at most ``at_most``; found by replaying the ids through a MixCache of the
    same capacities (the policy's decisions do not depend on the rows' values)."""
    lay = layout(shape)
    cfg = ModelConfig(arch="melu", embedding_dim=shape.dim, mlp=shape.mlp)
    spec = build_sharding_plan(lay, 1, cfg, ParallelConfig(cache=VARIANTS["cache_10"])).cache_spec(
        0
    )
    assert spec is not None
    replay = MixCache(HostStore(shape.rows, [("x", 1)], torch.float32),
                      CacheSpec(spec.segments, prefetch=False), "cpu")  # fmt: skip
    batches: list[EpisodeBatch] = []
    full = False
    while len(batches) < at_most and (len(batches) < at_least or not full):
        batches.append(stream.next())
        replay.lookup(batches[-1].ids)
        full = full or replay.stats()["cache.evictions"] > 0
    return batches


def run_cache(
    shape: Shape, device: torch.device, timer: Timer, budget: Budget, *, steps: int, warmup: int,
    need_s: float,
) -> dict[str, Any]:  # fmt: skip
    """Part 2 (see the module docstring)."""
    stream = ZipfBatches(shape, seed=3)
    batches = fill(shape, stream, warmup, MAX_FILL_STEPS)
    warmup = len(batches)
    batches += [stream.next() for _ in range(steps)]
    if device.type == "cuda":  # the reader pins its batches when CUDA is present
        batches = [b.pin_memory() for b in batches]
    out: dict[str, Any] = {
        "status": "ok",
        "mode": MODE,
        "warmup_steps": warmup,
        "capacity_fraction": 0.1,
        "host_memory": "pinned" if device.type == "cuda" else "pageable (no CUDA)",
        "variants": {},
    }
    for name in VARIANTS:
        if not budget.allows(need_s):
            out["variants"][name] = {"status": budget.skip_reason(need_s)}
            continue
        try:
            out["variants"][name] = {"status": "ok"} | run_variant(
                shape, device, batches, timer, name, warmup
            )
        except Exception as e:  # e.g. a capacity the step does not fit: recorded, go on
            out["variants"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
    base = out["variants"].get("device_table", {})
    for res in out["variants"].values():
        if res.get("status") != "ok" or base.get("status") != "ok":
            continue
        res["ratio_vs_device_table"] = round(res["samples_per_s"] / base["samples_per_s"], 4)
        res["loss_max_abs_diff"] = max(
            abs(a - b) for a, b in zip(res["losses"], base["losses"], strict=True)
        )
    return out
