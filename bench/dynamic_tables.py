"""Dynamic embedding tables vs a hashed table of the same memory, on a Zipf id stream with 100x
more distinct ids than rows (issue 16 item 1; ``trainer/dynamic.py``).

    python -m bench.dynamic_tables --out out/bench/dynamic_tables.json
    python -m bench.dynamic_tables --out /tmp/dyn.json --quick

Stream: an ``item`` feature over ``100 x rows`` ids, Zipf (exponent ``--zipf``) with a drifting
popularity (every step the ranks move by ``drift`` ids, so new ids keep arriving: cold starts),
a ``category`` feature (32 values, ``item mod 32``) and ``--fields`` context features (1,000
uniform values each, no signal), hashed and static in both models. Click probability
``sigmoid(w_item + w_category - 1)`` with ``w ~ normal(0, 1)``: half of the signal is the item's
own. Batches of 64 episodes x 32 samples; a DeepFM of the project's default size (dim 16, MLP
256-128) trained with Adam + row-wise Adagrad, plain (no meta-learning), the same batches for
both models. ``--fields 0 --small`` times the table work alone (dim 8, MLP 64-32, two fields).

Models of ``item`` (``rows = 1 + fallback + capacity``):
- dynamic: ``capacity`` exact rows (admission after 2 occurrences, LRU) + ``fallback`` rows;
- hashed, same rows: ``item`` ids hashed into ``rows`` buckets (the ETL's feature hash);
- hashed, same bytes: as many more buckets as the dynamic maps' bytes (keys, clocks, sketch) buy.

Reported (JSON): collisions among admitted ids (in every step, distinct admitted ids that the
translation puts on one row: must be 0; for the hashed table, the seen ids that share a row with
another seen id), memory (rows x bytes, the maps' bytes, the most rows held against the
capacity), progressive-validation AUC (each batch scored before training on it, from
step ``steps // 4`` on) overall and on cold-start samples (an item first seen at most
``COLD_STEPS`` steps earlier), and training-step time (lookup, forward, backward, both
optimizers; the models alternate step by step in this process; medians), with the ratio
``hashed step time / dynamic step time`` (the dynamic table's throughput relative to the hashed
one: target >= 0.8). ``ratio_dynamic_vs_hashed`` is that ratio in CPU time of this thread (one
intra-op thread: the step's work, which other processes sharing the cores do not inflate);
``..._wall`` in wall time. ``dynamic_map_cpu_s_median``: the id -> row map's share of the
dynamic step (the batch is mapped by ``prefetch`` ahead of its ``lookup``, as the trainer does
with a prefetching MixCache).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("bench.dynamic_tables")

EPISODES, K, Q = 64, 16, 16
CATEGORIES = 32
CONTEXT_BUCKETS = 1000
COLD_STEPS = 5


@dataclass
class Stream:
    """The id stream and the true click model."""

    universe: int
    zipf: float
    drift: int
    seed: int

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        p = 1.0 / np.arange(1, self.universe + 1) ** self.zipf
        self.cdf = np.cumsum(p / p.sum())
        self.perm = rng.permutation(self.universe) + 1  # ids 1..universe
        self.w_item = rng.normal(size=self.universe + 1)
        self.w_cat = rng.normal(size=CATEGORIES)
        self.rng = rng

    def batch(self, step: int, fields: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item ids ``(T, N)``, context ids ``(T, N, fields)`` and clicks ``(T, N)``."""
        n = EPISODES * (K + Q)
        context = self.rng.integers(1, CONTEXT_BUCKETS, size=(EPISODES, K + Q, fields))
        rank = np.searchsorted(self.cdf, self.rng.random(n))
        rank = np.minimum(rank, self.universe - 1)
        ids = self.perm[(rank + self.drift * step) % self.universe]
        logit = self.w_item[ids] + self.w_cat[ids % CATEGORIES] - 1.0
        click = self.rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
        return ids.reshape(EPISODES, K + Q), context, click.reshape(EPISODES, K + Q)


def _layout(item_buckets: int, fields: int) -> Any:
    from trainer.data.batch import FeatureLayout

    buckets = (item_buckets, CATEGORIES + 1, *[CONTEXT_BUCKETS] * fields)
    offsets = tuple(int(o) for o in np.cumsum([0, *buckets])[:-1])
    return FeatureLayout(
        feature_names=("item", "category", *[f"context{i}" for i in range(fields)]),
        feature_slots=(1,) * len(buckets),
        feature_buckets=buckets,
        table_offsets=offsets,
        total_rows=sum(buckets),
        slot_feature=torch.arange(len(buckets)),
        slot_offsets=torch.tensor(offsets),
        dense_names=("d0",),
        k_support=K,
        q_query=Q,
    )


def _episode_batch(
    layout: Any, item_local: np.ndarray, ids: np.ndarray, context: np.ndarray, click: np.ndarray
) -> Any:
    from trainer.data.batch import EpisodeBatch

    local = np.concatenate([np.stack([item_local, ids % CATEGORIES + 1], -1), context], -1)
    glob = torch.from_numpy(local).long() + layout.slot_offsets
    uids, inverse = torch.unique(glob, return_inverse=True)
    T, N = click.shape
    y = torch.from_numpy(click.astype(np.float32))
    return EpisodeBatch(
        ids=uids, inverse=inverse, dense=torch.zeros(T, N, 1), click=y,
        conversion=torch.zeros(T, N), n_support=torch.full((T,), K),
        n_query=torch.full((T,), Q), task_ids=torch.arange(1, T + 1),
        episode_mask=torch.ones(T, dtype=torch.bool), k_support=K,
    )  # fmt: skip


def _model(layout: Any, embeddings: Any, small: bool) -> tuple[Any, Any]:
    from trainer.models import ModelConfig, build_model
    from trainer.optim import OptimConfig, build_optimizers

    mlp = (64, 32) if small else (256, 128)
    cfg = ModelConfig(arch="deepfm", embedding_dim=embeddings.dim, mlp=mlp, embedding_init_std=0.05)
    net = build_model(cfg, layout, embeddings=embeddings, seed=0)
    return net, build_optimizers(OptimConfig(dense_lr=3e-3, sparse_lr=0.05), net)


def _train_step(net: Any, opt: Any, batch: Any, dynamic: bool) -> tuple[float, float, float]:
    """One plain training step; returns its wall time, its CPU time (this thread: the work of the
    step, unaffected by other processes taking the cores) and the CPU time of the id -> row map
    (``dynamic``: the batch is mapped by ``prefetch``, which ``lookup`` then uses; else 0)."""
    t0, c0 = time.perf_counter(), time.thread_time()
    if dynamic:
        net.embeddings.prefetch(batch)
    c_map = time.thread_time() - c0
    sparse = net.embeddings.lookup(batch)
    loss = F.binary_cross_entropy_with_logits(net(sparse, batch.dense), batch.click)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0, time.thread_time() - c0, c_map


def _shared_rows(coll: Any, batch: Any, ids: np.ndarray) -> int:
    """Distinct admitted item ids of ``batch`` that the translation puts on one row (slot 0 of
    each sample is the item) with another distinct id."""
    unique = torch.from_numpy(np.unique(ids))
    admitted = unique[coll.maps[0][0].find(unique) >= 0]
    if admitted.numel() == 0:
        return 0
    mapped, _ = coll._translate(batch, train=False)
    item_rows = mapped.ids[mapped.inverse[..., 0]].reshape(-1)
    item_ids = torch.from_numpy(ids.reshape(-1))
    keep = torch.isin(item_ids, admitted)
    pairs = torch.unique(torch.stack([item_rows[keep], item_ids[keep]], 1), dim=0)
    return int(pairs.shape[0] - torch.unique(pairs[:, 0]).numel())


@torch.no_grad()
def _scores(net: Any, batch: Any) -> np.ndarray:
    return net(net.embeddings.read(batch), batch.dense).reshape(-1).numpy()


def run(
    capacity: int, fallback: int, steps: int, zipf: float, drift: int, seed: int, fields: int,
    small: bool,
) -> dict:  # fmt: skip
    from trainer.data.hashing import feature_id
    from trainer.dynamic import DynamicEmbeddingCollection, DynamicTableConfig, physical_layout
    from trainer.embeddings import PlainEmbeddingCollection
    from trainer.metrics import auc

    rows = 1 + fallback + capacity
    universe = 100 * rows
    dim = 8 if small else 16
    row_bytes = (dim + 1 + 2) * 4  # emb + linear + two Adagrad floats (float32)
    stream = Stream(universe, zipf, drift, seed)
    logical = _layout(universe + 1, fields)
    table = DynamicTableConfig(
        feature="item", capacity=capacity, fallback_rows=fallback, admit_count=2
    )
    phys = physical_layout(logical, [table])

    def plain(layout: Any) -> PlainEmbeddingCollection:
        return PlainEmbeddingCollection(
            layout.table_offsets, layout.total_rows, dim, layout.slot_feature, linear=True,
            init_std=0.05, seed=1,
        )  # fmt: skip

    dyn_coll = DynamicEmbeddingCollection(plain(phys), logical, [table], init_std=0.05, seed=1)
    m = dyn_coll.maps[0][0]  # one process: one id shard
    map_bytes = sum(t.numel() * t.element_size() for t in (m.keys, m.last_seen, m.freq, m.sketch))
    # Hashed tables: the same rows, and the same bytes (rows + the maps' bytes as rows).
    hashed_rows = {"h": rows, "hb": rows + -(-map_bytes // row_bytes)}
    ids_all = [str(i) for i in range(1, universe + 1)]
    local = {
        k: np.array([0] + [feature_id("item", v, r) for v in ids_all], dtype=np.int64)
        for k, r in hashed_rows.items()
    }
    layouts = {k: _layout(r, fields) for k, r in hashed_rows.items()}
    layouts["d"] = logical
    local["d"] = np.arange(universe + 1, dtype=np.int64)
    models = {k: _model(layouts[k], plain(layouts[k]), small) for k in ("h", "hb")}
    models["d"] = _model(logical, dyn_coll, small)
    first_seen = np.full(universe + 1, -1, dtype=np.int64)
    scored: dict[str, dict[str, list]] = {k: {"y": [], "p": [], "cold": []} for k in models}
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in models}
    max_rows_used, dyn_collisions = 0, 0
    for step in range(steps):
        ids, context, click = stream.batch(step, fields)
        new = first_seen[ids] < 0
        first_seen[ids[new]] = step
        cold = (step - first_seen[ids]) <= COLD_STEPS
        batches = {
            k: _episode_batch(layouts[k], local[k][ids], ids, context, click) for k in models
        }
        if step >= steps // 4:  # progressive validation: scored before training on it
            for k, (net, _) in models.items():
                scored[k]["y"].append(click.reshape(-1))
                scored[k]["p"].append(_scores(net, batches[k]))
                scored[k]["cold"].append(cold.reshape(-1))
        order = list(models) if step % 2 == 0 else list(models)[::-1]
        for k in order:
            net, opt = models[k]
            times[k].append(_train_step(net, opt, batches[k], dynamic=k == "d"))
        max_rows_used = max(max_rows_used, m.used)
        dyn_collisions += _shared_rows(dyn_coll, batches["d"], ids)
        if step % 50 == 0:
            log.info("step %d/%d", step, steps)

    seen = np.nonzero(first_seen >= 0)[0]
    _, counts = np.unique(local["h"][seen], return_counts=True)
    hashed_sharing = int(counts[counts > 1].sum())
    admitted_ids = m.keys[m.keys >= 0]

    def aucs(key: str) -> dict[str, float]:
        y = np.concatenate(scored[key]["y"]).astype(np.float64)
        p = np.concatenate(scored[key]["p"])
        c = np.concatenate(scored[key]["cold"])
        return {
            "auc": auc(y, p),
            "cold_start_auc": auc(y[c], p[c]),
            "cold_start_share": float(c.mean()),
        }

    def median(key: str, part: int) -> float:
        return statistics.median(x[part] for x in times[key][steps // 10 :])

    t = {k: median(k, 0) for k in times}
    cpu = {k: median(k, 1) for k in times}
    counters = dyn_coll.cache_stats(reset=True)
    return {
        "stream": {
            "rows_of_item": rows,
            "id_universe": universe,
            "distinct_ids_seen": int(seen.size),
            "distinct_ids_per_row": int(seen.size) / rows,
            "zipf": zipf,
            "drift_per_step": drift,
            "samples_per_step": EPISODES * (K + Q),
            "steps": steps,
        },
        "model": {
            "arch": "deepfm",
            "dim": dim,
            "mlp": [64, 32] if small else [256, 128],
            "fields": 2 + fields,
        },
        "dynamic_config": {
            "capacity": capacity,
            "fallback_rows": fallback,
            "admit_count": 2,
            "eviction": "lru",
        },
        "collisions": {
            "dynamic_admitted_ids_sharing_a_row_any_step": dyn_collisions,
            "dynamic_admitted_ids_now": int(admitted_ids.numel()),
            "hashed_seen_ids_sharing_a_row": hashed_sharing,
        },
        "memory": {
            "row_bytes": row_bytes,
            "dynamic_item_rows": rows,
            "dynamic_capacity": capacity,
            "dynamic_rows_used_max": max_rows_used,
            "within_capacity": max_rows_used <= capacity,
            "dynamic_item_bytes": rows * row_bytes,
            "dynamic_map_bytes": map_bytes,
            "hashed_item_rows": hashed_rows["h"],
            "hashed_same_bytes_item_rows": hashed_rows["hb"],
        },
        "dynamic_counters_total": counters,
        "quality": {
            "hashed_same_rows": aucs("h"),
            "hashed_same_bytes": aucs("hb"),
            "dynamic": aucs("d"),
        },
        "throughput": {
            "hashed_step_s_median": t["h"],
            "hashed_same_bytes_step_s_median": t["hb"],
            "dynamic_step_s_median": t["d"],
            "ratio_dynamic_vs_hashed_wall": t["h"] / t["d"],
            "hashed_step_cpu_s_median": cpu["h"],
            "hashed_same_bytes_step_cpu_s_median": cpu["hb"],
            "dynamic_step_cpu_s_median": cpu["d"],
            "dynamic_map_cpu_s_median": median("d", 2),
            "dynamic_map_share_of_step": median("d", 2) / cpu["d"],
            "ratio_dynamic_vs_hashed": cpu["h"] / cpu["d"],
            "target_ratio": 0.8,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.dynamic_tables",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="out/bench/dynamic_tables.json", help="JSON report path")
    p.add_argument("--capacity", type=int, default=1000, help="exact rows of the dynamic table")
    p.add_argument("--fallback", type=int, default=24, help="fallback rows of the dynamic table")
    p.add_argument("--steps", type=int, default=200, help="training steps")
    p.add_argument("--zipf", type=float, default=1.05, help="Zipf exponent of the id stream")
    p.add_argument("--drift", type=int, default=40, help="ids the popularity ranks move per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (0: torch default)")
    p.add_argument("--fields", type=int, default=6, help="static context features")
    p.add_argument("--small", action="store_true", help="dim 8, MLP 64-32 (table work alone)")
    p.add_argument("--quick", action="store_true", help="capacity 200, 40 steps")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.capacity, args.fallback, args.steps = 200, 8, 40
    from trainer.durable import write_json_atomic

    t0 = time.perf_counter()
    result = {
        "benchmark": "dynamic_tables",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        **run(
            args.capacity,
            args.fallback,
            args.steps,
            args.zipf,
            args.drift,
            args.seed,
            args.fields,
            args.small,
        ),
    }
    result["wall_s"] = time.perf_counter() - t0
    write_json_atomic(args.out, result)
    q, t = result["quality"], result["throughput"]
    log.info(
        "collisions %d; cold-start AUC dynamic %.4f vs hashed %.4f; step time ratio %.2f; -> %s",
        result["collisions"]["dynamic_admitted_ids_sharing_a_row_any_step"],
        q["dynamic"]["cold_start_auc"], q["hashed_same_rows"]["cold_start_auc"],
        t["ratio_dynamic_vs_hashed"], args.out,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
