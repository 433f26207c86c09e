"""Distributed meta-step benchmark: bytes on the wire with VSI vs without, and step throughput at
world size 1 and 2 (gloo, CPU processes spawned on this machine).

    python -m bench.distributed_step --out out/bench/distributed_step.json
    python -m bench.distributed_step --steps 3 --warmup 1 --rows 100000  # quick look

Shape (as ``bench/meta_step.py``): 16 single-slot sparse fields, dim 16, a 1M-row stacked table
(16 x 62,500 rows, row-wise sharded), the MeLU concat MLP 256-128-1, 64 episodes of 32 support +
32 query samples PER RANK (4,096 samples). Ids are Zipf(1.2) per field (popular ids scattered over
the table), drawn independently by each rank. Every step is the full distributed meta step
(``trainer.parallel``): ids AlltoAll, rows AlltoAll, inner loop, query loss, gradients AlltoAll,
bucketed dense AllReduce, Adam and the owners' row-wise Adagrad.

(a) Bytes per sample, same processes, same batches: ``vsi`` sends each rank's unique ids once;
``no_vsi`` sends every slot occurrence (the owner sums the duplicate gradients; training is the
same). Counted by the communication meter (:mod:`trainer.parallel.comm`: bytes a rank sends to
other ranks). Target: >= 3x fewer embedding-exchange bytes with VSI at Zipf 1.2.
(b) Samples/s of the ``vsi`` step (median step time after warm-up) at world size 1 (one process,
all cores; and one process on one core) and 2 (two processes, cores split between them) on the
same machine. On a machine shared with other jobs, intra-op threads that outnumber the free cores
can slow a step down many times over (measured: 25 ms on one thread vs 1.6 s on two at load 6 on
2 cores): compare ``world_size_1_one_thread`` too, and run on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data.batch import EpisodeBatch, FeatureLayout
from trainer.meta import MetaConfig, outer_loss
from trainer.models import ModelConfig
from trainer.optim import OptimConfig, build_optimizers
from trainer.parallel.apply import build_parallel_model
from trainer.parallel.env import ParallelEnv
from trainer.parallel.launch import spawn_local

EXCHANGES = ("splits", "ids", "rows", "grads")


@dataclasses.dataclass(frozen=True)
class Shape:
    fields: int = 16
    rows: int = 1_000_000
    dim: int = 16
    mlp: tuple[int, ...] = (256, 128)
    episodes: int = 64
    support: int = 32
    query: int = 32
    zipf: float = 1.2
    mode: str = "fomaml"
    steps: int = 5
    warmup: int = 2
    device: str = "cpu"
    """``cuda``: one GPU per rank with NCCL (world size 2 only with two GPUs)."""


def make_layout(shape: Shape) -> FeatureLayout:
    buckets = shape.rows // shape.fields
    offsets = [f * buckets for f in range(shape.fields)]
    return FeatureLayout(
        feature_names=tuple(f"f{i}" for i in range(shape.fields)),
        feature_slots=(1,) * shape.fields,
        feature_buckets=(buckets,) * shape.fields,
        table_offsets=tuple(offsets),
        total_rows=buckets * shape.fields,
        slot_feature=torch.arange(shape.fields),
        slot_offsets=torch.tensor(offsets),
        dense_names=(),
        k_support=shape.support,
        q_query=shape.query,
    )


def make_batch(layout: FeatureLayout, shape: Shape, rng: np.random.Generator) -> EpisodeBatch:
    """Zipf(``shape.zipf``) local ids in [1, buckets) per field; VSI via ``np.unique``."""
    buckets = layout.feature_buckets[0]
    cdf = np.cumsum(np.arange(1, buckets, dtype=np.float64) ** -shape.zipf)
    cdf /= cdf[-1]
    T, K, N = shape.episodes, shape.support, shape.support + shape.query
    local = 1 + np.searchsorted(cdf, rng.random((T, N, layout.sparse_width)))
    perm = np.random.default_rng(7).permutation(buckets - 1) + 1  # same scatter on every rank
    ids, inverse = np.unique(perm[local - 1] + layout.slot_offsets.numpy(), return_inverse=True)
    return EpisodeBatch(
        ids=torch.from_numpy(ids),
        inverse=torch.from_numpy(inverse.reshape(T, N, -1)),
        dense=torch.zeros(T, N, 0),
        click=torch.from_numpy((rng.random((T, N)) < 0.3).astype(np.float32)),
        conversion=torch.zeros(T, N),
        n_support=torch.full((T,), K),
        n_query=torch.full((T,), shape.query),
        task_ids=torch.arange(T),
        episode_mask=torch.ones(T, dtype=torch.bool),
        k_support=K,
    )


def without_vsi(batch: EpisodeBatch) -> EpisodeBatch:
    """Every slot occurrence as its own id: what an exchange without de-duplication sends."""
    flat = batch.ids[batch.inverse].reshape(-1)
    inverse = torch.arange(flat.numel()).reshape(batch.inverse.shape)
    return dataclasses.replace(batch, ids=flat, inverse=inverse)


def _rank_job(env: ParallelEnv, shape: Shape, out_file: str) -> None:
    """Per rank: time the VSI step, then count the bytes of both variants on the same batches."""
    layout = make_layout(shape)
    cfg = ModelConfig(arch="melu", embedding_dim=shape.dim, mlp=shape.mlp)
    meta = MetaConfig(mode=shape.mode, adapt="dense")
    rng = np.random.default_rng(1000 + env.rank)
    batches = [make_batch(layout, shape, rng) for _ in range(shape.warmup + shape.steps)]
    report: dict[str, Any] = {"rank": env.rank}
    for variant in ("vsi", "no_vsi"):
        model, _ = build_parallel_model(cfg, layout, env, seed=0)
        opt = build_optimizers(OptimConfig(dense_lr=1e-3, sparse_lr=0.05), model)
        times, comm = [], []
        for i, batch in enumerate(batches):
            batch = (batch if variant == "vsi" else without_vsi(batch)).to(env.device)
            _sync(env.device)
            env.comm_stats(reset=True)
            t0 = time.perf_counter()
            sparse = model.embeddings.lookup(batch)
            loss, _ = outer_loss(
                model, sparse, batch, meta, env.normalizer(batch.episode_mask.sum())
            )
            loss.backward()
            env.reduce_dense_grads(model.parameters())
            opt.step()
            _sync(env.device)
            if i >= shape.warmup:
                times.append(time.perf_counter() - t0)
                comm.append(env.comm_stats(reset=True))
        samples = int(batches[0].num_samples)
        report[variant] = {
            "step_ms_median": 1e3 * statistics.median(times),
            "samples_per_step": samples,
            "unique_ids_per_step": statistics.mean(int(b.ids.numel()) for b in batches),
            "bytes_per_sample": {
                k.removeprefix("comm."): statistics.mean(c[k] for c in comm) / samples
                for k in comm[0]
                if k.endswith(".bytes")
            },
        }
    report["device"] = str(env.device)
    report["backend"] = env.backend
    torch.save(report, out_file)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summarise(reports: list[dict], shape: Shape, world_size: int, threads: int) -> dict:
    vsi = [r["vsi"] for r in reports]
    step_ms = max(v["step_ms_median"] for v in vsi)  # the job moves at its slowest rank
    out: dict[str, Any] = {
        "world_size": world_size,
        "threads_per_rank": threads,
        "step_ms_median": step_ms,
        "samples_per_s": sum(v["samples_per_step"] for v in vsi) / (step_ms / 1e3),
        "no_vsi_step_ms_median": max(r["no_vsi"]["step_ms_median"] for r in reports),
        "slots_per_rank_step": vsi[0]["samples_per_step"] * shape.fields,
        "unique_ids_per_rank_step": statistics.mean(v["unique_ids_per_step"] for v in vsi),
    }
    if world_size > 1:
        per = {
            variant: {
                k: statistics.mean(r[variant]["bytes_per_sample"][k] for r in reports)
                for k in reports[0][variant]["bytes_per_sample"]
            }
            for variant in ("vsi", "no_vsi")
        }
        emb = {v: sum(per[v][f"{x}.bytes"] for x in EXCHANGES) for v in per}
        out["bytes_per_sample"] = per
        out["embedding_bytes_per_sample"] = emb
        out["vsi_saving"] = emb["no_vsi"] / emb["vsi"]
        out["vsi_saving_with_dense"] = per["no_vsi"]["bytes"] / per["vsi"]["bytes"]
    return out


def run(
    out_file: str | Path = "out/bench/distributed_step.json", shape: Shape | None = None
) -> dict[str, Any]:
    """Run both world sizes, write ``out_file`` (JSON) and return its content."""
    shape = shape or Shape()
    cores = os.cpu_count() or 1
    out = Path(out_file).parent
    out.mkdir(parents=True, exist_ok=True)
    # World size 1 on all cores is the baseline a user compares against; on one core it shows
    # the per-core scaling (and is immune to thread oversubscription on a busy machine).
    configs = {"world_size_1": (1, cores), "world_size_2": (2, max(1, cores // 2))}
    if shape.device == "cuda" and torch.cuda.device_count() < 2:
        del configs["world_size_2"]  # one GPU: world size 1 with NCCL initialised only
    if cores > 1 and shape.device == "cpu":
        configs["world_size_1_one_thread"] = (1, 1)
    runs = {}
    for name, (world_size, threads) in configs.items():
        tmp = out / f".distributed_step-{name}"
        tmp.mkdir(exist_ok=True)
        files = [str(tmp / f"rank-{r}.pt") for r in range(world_size)]
        t0 = time.perf_counter()
        spawn_local(
            _rank_job_entry, world_size, (shape, files),
            threads=threads, timeout_s=600, device=shape.device,
        )  # fmt: skip
        reports = [torch.load(f, weights_only=False) for f in files]
        runs[name] = _summarise(reports, shape, world_size, threads)
        runs[name].update(
            wall_s=time.perf_counter() - t0,
            device=reports[0]["device"],
            backend=reports[0]["backend"],
        )
        for f in files:
            os.remove(f)
        tmp.rmdir()
    result: dict[str, Any] = {
        "benchmark": "distributed_step",
        "shape": dataclasses.asdict(shape),
        "machine": {
            "platform": platform.platform(), "cpus": cores, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if shape.device == "cuda" else None,
        },
        **runs,
    }  # fmt: skip
    if "world_size_2" in runs:
        w1, w2 = runs["world_size_1"], runs["world_size_2"]
        one = runs.get("world_size_1_one_thread", w1)
        result.update(
            throughput_ratio_w2_over_w1=w2["samples_per_s"] / w1["samples_per_s"],
            scaling_efficiency_w2_vs_one_thread=w2["samples_per_s"] / (2 * one["samples_per_s"]),
            vsi_saving=w2["vsi_saving"],
            vsi_target_met=w2["vsi_saving"] >= 3.0,
        )
    Path(out_file).write_text(json.dumps(result, indent=2))
    return result


def _rank_job_entry(env: ParallelEnv, shape: Shape, files: list[str]) -> None:
    _rank_job(env, shape, files[env.rank])


def main(argv: list[str] | None = None) -> int:
    """Command line (``python -m bench`` passes ``--out <dir>/distributed_step.json``)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="out/bench/distributed_step.json", help="JSON result path")
    defaults = Shape()
    for f in dataclasses.fields(Shape):
        if f.name == "mlp":
            continue
        ap.add_argument(
            f"--{f.name}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name)
        )
    ap.add_argument(
        "--mlp", type=lambda s: tuple(int(x) for x in s.split(",")), default=defaults.mlp
    )
    args = vars(ap.parse_args(argv))
    out_file = args.pop("out")
    result = run(out_file, Shape(**args))
    w1, w2 = result["world_size_1"], result.get("world_size_2")
    if w2 is None:
        print(
            f"world size 1 ({w1['backend']}, {w1['device']}): {w1['samples_per_s']:,.0f} samples/s"
        )
        return 0
    print(
        f"world size 1: {w1['samples_per_s']:,.0f} samples/s ({w1['step_ms_median']:.1f} ms/step); "
        f"world size 2: {w2['samples_per_s']:,.0f} samples/s ({w2['step_ms_median']:.1f} ms/step), "
        f"ratio {result['throughput_ratio_w2_over_w1']:.2f}; per-core scaling efficiency "
        f"{result['scaling_efficiency_w2_vs_one_thread']:.2f}\n"
        f"embedding bytes/sample at world size 2: {w2['embedding_bytes_per_sample']['vsi']:.1f} with "
        f"VSI vs {w2['embedding_bytes_per_sample']['no_vsi']:.1f} without: "
        f"{result['vsi_saving']:.2f}x fewer (target >= 3x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
