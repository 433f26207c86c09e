"""Meta-step benchmark: samples/s of a plain, a FOMAML and a MAML training step, batched (all
episodes at once, ``trainer.meta``) vs a per-task Python loop with the same maths, plus a
straightforward PyTorch sparse-Adam plain step.

    python -m bench.meta_step --out out/bench/meta_step.json              # CPU, all cores
    python -m bench.meta_step --device cuda --out out/bench/meta_step_gpu.json
    python -m bench.meta_step --profile                                   # where the time goes
    python -m bench.meta_step --threads 1 --only plain,maml               # steadier on a busy box

Shape (issue 3): 16 single-slot sparse fields, dim 16, a 1M-row stacked table (16 x 62,500 rows),
MLP 256-128-1 over the concatenated fields (``--arch melu``; any arch works), 64 episodes of
32 support + 32 query = 4,096 samples per step. Ids are Zipf(1.05) per field, so a batch has
realistic duplicates for VSI. Every variant runs a full step: lookup, forward, backward, Adam on
the dense parameters and row-wise Adagrad on the looked-up rows (the torch baseline: ``nn.Embedding
(sparse=True)`` + ``SparseAdam``). All variants run in this one process on the same pre-built
batches with the same thread count; after warm-up, the median step time is reported, in wall
time and in process CPU time (``time.process_time``: steadier than wall time on a shared machine,
exact at ``--threads 1``; with more threads it also counts the pool's spin-waits), and where the
time goes per phase of a step (``phases_ms``: lookup, loss forward with the inner loop, backward,
optimizers; medians). On a shared, oversubscribed machine run it with ``OMP_WAIT_POLICY=PASSIVE``
(recorded in the JSON): with the default (spinning) policy the OpenMP pool's spin-waits compete
with the other processes and a step's wall and CPU time grow several-fold, more for the meta steps
(more, smaller operators) than for the plain one. ``--profile`` also writes each variant's top operators (torch.profiler, self
CPU time over 3 steps, grouped by input shape) into the JSON.

Targets: FOMAML >= 0.95x plain, MAML (inner_steps 1, adapt=dense) >= 0.7x plain (issues 3 and 14),
batched >= 2x the loop; the torch sparse-Adam plain step is the floor (about 50k samples/s on the
2-core CI machine). The MAML target is close to the bound set by the arithmetic: at this shape a
second-order step runs ~1.33x the plain step's matmul FLOPs (per layer: support and query
forwards, the inner backward to the layer outputs, the query backward, and the second-order terms
of the inner backward), so MAML / plain <= ~0.77 with lookup and optimizers counted, before any
elementwise work; the elementwise and small batched matmuls of the low-rank terms take the rest,
and they slow down the most when the machine is loaded (memory bandwidth, page faults).

Where a MAML step's time goes (per step, CPU time, ``--threads 1``, 2-core machine at load ~12;
op times summed per category): matmuls 27 ms (plain: 25; 21 vs 18 units of 2048 x 256 x 128
multiply-adds), the low-rank terms' batched matmuls 5 ms (3 units, at half the matmuls' rate:
each streams a ``(T, n, width)`` tensor through a rank-32 product, so they are bound by memory
traffic), elementwise 6 ms (plain: 4.7; ReLU's backward four times per layer instead of once),
lookup/pooling/row optimizer 4.6 ms (plain: 4.1; the two sides pooled and scattered apart), and
about 2 ms of dispatch for 379 operators per step (plain: 208). ``trainer.lowrank.adapted_linear``
(backward written out) and ``trainer.models.common.relu`` (no zero tensor for ReLU'') took
MAML / plain from 0.650 to 0.738 in wall time and from 0.638 to 0.698 in CPU time (medians of 5
runs each of ``--threads 1 --steps 30``, before and after alternating, load average 12-15).
The JSON records the load average before and after the run (``machine.load_average``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainer.data.batch import EpisodeBatch, FeatureLayout
from trainer.meta import MetaConfig, outer_loss
from trainer.models import ModelConfig, build_model
from trainer.optim import OptimConfig, build_optimizers


def make_layout(fields: int, rows: int) -> FeatureLayout:
    buckets = rows // fields
    offsets = [f * buckets for f in range(fields)]
    return FeatureLayout(
        feature_names=tuple(f"f{i}" for i in range(fields)),
        feature_slots=(1,) * fields,
        feature_buckets=(buckets,) * fields,
        table_offsets=tuple(offsets),
        total_rows=buckets * fields,
        slot_feature=torch.arange(fields),
        slot_offsets=torch.tensor(offsets),
        dense_names=(),
        k_support=0,
        q_query=0,
    )


def make_batch(
    layout: FeatureLayout, T: int, K: int, Q: int, rng: np.random.Generator
) -> EpisodeBatch:
    """Zipf(1.05)-distributed local ids in [1, buckets) per field; VSI via np.unique."""
    buckets = layout.feature_buckets[0]
    ranks = np.arange(1, buckets, dtype=np.float64)
    cdf = np.cumsum(ranks**-1.05)
    cdf /= cdf[-1]
    S, N = layout.sparse_width, K + Q
    local = 1 + np.searchsorted(cdf, rng.random((T, N, S)))
    perm = rng.permutation(buckets - 1) + 1  # popular ids scattered over the table
    glob = perm[local - 1] + layout.slot_offsets.numpy()
    ids, inverse = np.unique(glob, return_inverse=True)
    full = torch.full((T,), K)
    return EpisodeBatch(
        ids=torch.from_numpy(ids),
        inverse=torch.from_numpy(inverse.reshape(T, N, S)),
        dense=torch.zeros(T, N, 0),
        click=torch.from_numpy((rng.random((T, N)) < 0.3).astype(np.float32)),
        conversion=torch.zeros(T, N),
        n_support=full,
        n_query=torch.full((T,), Q),
        task_ids=torch.arange(T),
        episode_mask=torch.ones(T, dtype=torch.bool),
        k_support=K,
    )


def loop_outer_loss(model, sparse, batch, cfg: MetaConfig) -> torch.Tensor:
    """The same maths as ``outer_loss`` (head/dense adaptation), one task at a time with
    ``torch.autograd.grad`` — what a straightforward MAML implementation does."""
    K = batch.k_support
    y = batch.click
    params = dict(model.dense_half.named_parameters())
    names = model.adapted_names(cfg.adapt)
    total = 0.0
    for t in range(batch.inverse.shape[0]):
        ns, nq = int(batch.n_support[t]), int(batch.n_query[t])
        p = dict(params)
        for _ in range(cfg.inner_steps):
            support = sparse.apply(lambda x, t=t, ns=ns: x[t, :ns])
            logit = functional_call(model.dense_half, p, (support, batch.dense[t, :ns]))
            loss = F.binary_cross_entropy_with_logits(logit, y[t, :ns])
            grads = torch.autograd.grad(
                loss, [p[n] for n in names], create_graph=cfg.mode == "maml"
            )
            p.update({n: p[n] - cfg.inner_lr * g for n, g in zip(names, grads, strict=True)})
        q = slice(K, K + nq)
        query = sparse.apply(lambda x, t=t, q=q: x[t, q])
        logit = functional_call(model.dense_half, p, (query, batch.dense[t, q]))
        total = total + F.binary_cross_entropy_with_logits(logit, y[t, q])
    return total / batch.inverse.shape[0]


PHASES = ("lookup", "forward", "backward", "optimizer")


def meta_step_fn(
    args, layout, meta: MetaConfig, loop: bool, phases: list[list[float]] | None = None
) -> Callable[[EpisodeBatch], None]:
    """One full step; with ``phases``, appends each step's wall seconds per phase (:data:`PHASES`)."""
    cfg = ModelConfig(arch=args.arch, embedding_dim=args.dim, mlp=tuple(args.mlp))
    model = build_model(cfg, layout, seed=0, device=args.device)
    opt = build_optimizers(OptimConfig(dense_lr=1e-3, sparse_lr=0.05), model)

    def step(batch: EpisodeBatch) -> None:
        marks = [time.perf_counter()]
        sparse = model.embeddings.lookup(batch)  # same fused lookup and pooling for both
        marks.append(_mark(args.device))
        if loop:
            loss = loop_outer_loss(model, sparse, batch, meta)
        else:
            loss, _ = outer_loss(model, sparse, batch, meta)
        marks.append(_mark(args.device))
        loss.backward()
        marks.append(_mark(args.device))
        opt.step()
        marks.append(_mark(args.device))
        if phases is not None:
            phases.append([b - a for a, b in itertools.pairwise(marks)])

    return step


def _mark(device: str) -> float:
    sync(device)
    return time.perf_counter()


def torch_sparse_adam_fn(args, layout) -> Callable[[EpisodeBatch], None]:
    """Baseline: nn.Embedding(sparse=True) over the stacked table + MLP, SparseAdam + Adam."""
    dev = args.device
    emb = nn.Embedding(layout.total_rows, args.dim, sparse=True).to(dev)
    widths = [layout.sparse_width * args.dim, *args.mlp]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    mlp = nn.Sequential(*layers, nn.Linear(widths[-1], 1)).to(dev)
    sparse_opt = torch.optim.SparseAdam(emb.parameters(), lr=1e-3)
    dense_opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)

    def step(batch: EpisodeBatch) -> None:
        ids = batch.ids[batch.inverse].flatten(0, 1)  # (samples, S) global ids, no VSI
        logit = mlp(emb(ids).flatten(1)).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logit, batch.click.flatten())
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        sparse_opt.step()
        dense_opt.step()

    return step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile(step, batch, device: str, name: str, top: int = 15) -> list[dict]:
    """Print a torch.profiler table of 3 steps; return the ``top`` operators by self time (per
    step, grouped by input shapes) for the JSON."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    cuda = device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step(batch)
    with prof(activities=acts, record_shapes=True) as p:
        for _ in range(3):
            step(batch)
        sync(device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    events = p.key_averages(group_by_input_shape=True)
    print(f"\n=== {name} (3 steps) ===")
    print(events.table(sort_by=key, row_limit=top))
    total = sum(getattr(e, key) for e in events) or 1.0
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [
        {
            "op": e.key,
            "input_shapes": str(e.input_shapes),
            "ms_per_step": round(getattr(e, key) / 3e3, 3),
            "share": round(getattr(e, key) / total, 4),
            "calls_per_step": e.count / 3,
        }
        for e in rows
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="out/bench/meta_step.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--arch", default="melu")
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--support", type=int, default=32)
    ap.add_argument("--query", type=int, default=32)
    ap.add_argument("--fields", type=int, default=16)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--mlp", type=lambda s: [int(x) for x in s.split(",")], default=[256, 128])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--loop-steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--only", default="", help="comma-separated subset of variants")
    ap.add_argument(
        "--profile", action="store_true", help="print a torch.profiler table per variant"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    layout = make_layout(args.fields, args.rows)
    rng = np.random.default_rng(0)
    batches = [
        make_batch(layout, args.episodes, args.support, args.query, rng).to(args.device)
        for _ in range(args.batches)
    ]
    samples = batches[0].num_samples
    dense = dict(inner_steps=1, inner_lr=0.1, adapt="dense")
    phases: dict[str, list[list[float]]] = {"plain": [], "fomaml": [], "maml": []}
    variants = {
        "torch_sparse_adam_plain": (lambda: torch_sparse_adam_fn(args, layout), args.steps),
        "plain": (lambda: meta_step_fn(args, layout, MetaConfig(mode="plain"), False, phases["plain"]), args.steps),
        "fomaml": (lambda: meta_step_fn(args, layout, MetaConfig(mode="fomaml", **dense), False, phases["fomaml"]), args.steps),
        "maml": (lambda: meta_step_fn(args, layout, MetaConfig(mode="maml", **dense), False, phases["maml"]), args.steps),
        "fomaml_loop": (lambda: meta_step_fn(args, layout, MetaConfig(mode="fomaml", **dense), True), args.loop_steps),
        "maml_loop": (lambda: meta_step_fn(args, layout, MetaConfig(mode="maml", **dense), True), args.loop_steps),
    }  # fmt: skip
    only = [v for v in args.only.split(",") if v]
    variants = {k: v for k, v in variants.items() if not only or k in only}
    # Interleaved rounds (one step of every variant per round), so that machine noise and drift
    # hit every variant alike and the ratios are fair.
    steps_fns = {}
    profiles: dict[str, list[dict]] = {}
    for name, (make, _) in variants.items():
        steps_fns[name] = make()
        if args.profile:
            profiles[name] = profile(steps_fns[name], batches[0], args.device, name)
        for i in range(args.warmup):
            steps_fns[name](batches[i % len(batches)])
    for p in phases.values():
        p.clear()  # only the timed steps
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(max(n for _, n in variants.values())):
        batch = batches[r % len(batches)]
        for name, (_, n) in variants.items():
            if r < n:
                sync(args.device)
                t0, c0 = time.perf_counter(), time.process_time()
                steps_fns[name](batch)
                sync(args.device)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {
            "samples_per_s": round(samples / med, 1),
            "median_step_ms": round(med * 1e3, 3),
            "median_step_cpu_ms": round(statistics.median(cpu[name]) * 1e3, 3),
            "min_step_ms": round(min(ts) * 1e3, 3),
            "max_step_ms": round(max(ts) * 1e3, 3),
            "steps_timed": len(ts),
        }
        if phases.get(name):
            per_phase = zip(PHASES, zip(*phases[name], strict=True), strict=True)
            results[name]["phases_ms"] = {
                k: round(statistics.median(v) * 1e3, 3) for k, v in per_phase
            }
        print(
            f"{name:>24}: {results[name]['samples_per_s']:>12,.0f} samples/s  ({med * 1e3:.1f} ms/step)"
        )

    def ratio(a: str, b: str) -> float | None:
        if a in results and b in results:
            return round(results[a]["samples_per_s"] / results[b]["samples_per_s"], 3)
        return None

    def cpu_ratio(a: str, b: str) -> float | None:
        if a in results and b in results:
            return round(results[b]["median_step_cpu_ms"] / results[a]["median_step_cpu_ms"], 3)
        return None

    ratios = {
        "fomaml_vs_plain": ratio("fomaml", "plain"),
        "maml_vs_plain": ratio("maml", "plain"),
        "fomaml_vs_plain_cpu_time": cpu_ratio("fomaml", "plain"),
        "maml_vs_plain_cpu_time": cpu_ratio("maml", "plain"),
        "fomaml_batched_vs_loop": ratio("fomaml", "fomaml_loop"),
        "maml_batched_vs_loop": ratio("maml", "maml_loop"),
        "plain_vs_torch_sparse_adam": ratio("plain", "torch_sparse_adam_plain"),
    }
    targets = {
        "fomaml_vs_plain": 0.95,
        "maml_vs_plain": 0.7,
        "fomaml_batched_vs_loop": 2.0,
        "maml_batched_vs_loop": 2.0,
    }
    report = {
        "benchmark": "meta_step",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average": {"before": load_before, "after": os.getloadavg()},
        },
        "shape": {
            "arch": args.arch,
            "episodes": args.episodes,
            "support": args.support,
            "query": args.query,
            "samples_per_step": samples,
            "unique_ids_per_step": int(batches[0].ids.numel()),
            "fields": args.fields,
            "dim": args.dim,
            "table_rows": layout.total_rows,
            "mlp": [*args.mlp, 1],
            "inner": dense,
        },
        "results": results,
        "ratios": ratios,
        "targets": {k: {"min": v, "met": None if ratios[k] is None else ratios[k] >= v} for k, v in targets.items()},
    }  # fmt: skip
    if profiles:
        report["profile_top_ops"] = profiles
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
