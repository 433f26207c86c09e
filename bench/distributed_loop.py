"""Training-loop throughput at world size 1 and 2: the real ``Trainer`` (reader, sharded lookups,
meta step, dense AllReduce, optimizers, logging) on an ETL-shaped episode directory, every step
timed by the loop's own progress records, and the bytes on the wire per sample from its
communication counters (``metrics.jsonl``: ``comm.<collective>.bytes`` of all ranks per step).

    python -m bench.distributed_loop --out out/bench/distributed_loop.json
    python -m bench.distributed_loop --steps 8 --warmup 2 --episodes 16     # quick look

Shape: 16 single-slot sparse fields of 62,500 hashed buckets (a 1M-row table, Zipf 1.2 ids),
dim 16, DLRM with MLP 256-128-1, FOMAML on the dense layers, ``--episodes`` episodes of 16 support
+ 16 query samples PER RANK per step (``data.batch_episodes``: the global batch of 2 ranks is twice
that of 1). Configurations, all in processes spawned by this command on this machine:
``world_size_1`` (one process, all cores), ``world_size_2`` (two processes, cores split between
them) and ``world_size_1_one_thread``. Reported per configuration: median samples/s of the job
(all ranks) over the timed steps, median step time, and the communication per sample;
``throughput_ratio_w2_over_w1`` is the ratio of the two headline runs. On a machine shared with
other jobs the figures move a lot between runs: compare ratios measured in the same command.
See ``bench/distributed_step.py`` for the isolated meta step and VSI vs no-VSI bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from trainer.config import load_trainer_config
from trainer.data.synthetic import write_synthetic_episodes
from trainer.logging_utils import read_jsonl
from trainer.parallel.env import ParallelEnv
from trainer.parallel.launch import spawn_local
from trainer.trainer import Trainer

FIELDS, BUCKETS = 16, 62_500
log = logging.getLogger("bench.distributed_loop")


def write_data(root: Path, episodes_needed: int, k: int) -> Path:
    """An interval with at least ``episodes_needed`` train episodes (written once, then reused)."""
    if (root / "_manifest.json").is_file():
        return root
    features = [(f"f{i}", BUCKETS, 1) for i in range(FIELDS)]
    per_task = 16
    write_synthetic_episodes(
        root, num_tasks=max(episodes_needed // per_task * 2, 64), k_support=k, q_query=k,
        features=features, dense_width=4, episodes_per_task=per_task, rows_per_group=128,
        valid_fraction=0.1, cold_fraction=0.1, seed=0,
    )  # fmt: skip
    return root


def _rank_run(env: ParallelEnv, overrides: list[str]) -> None:
    trainer = Trainer(load_trainer_config(None, overrides), env).build()
    try:
        trainer.fit()
    finally:
        trainer.close()


def run_config(data: Path, out: Path, world_size: int, threads: int, args: Any) -> dict[str, Any]:
    """Train ``warmup + steps`` steps on ``world_size`` spawned ranks; summarise ``metrics.jsonl``."""
    overrides = [
        f"data.path={json.dumps(str(data))}", f"train.output_dir={json.dumps(str(out))}",
        f"data.batch_episodes={args.episodes}", "data.prefetch=2", "model.arch=\"dlrm\"",
        "model.embedding_dim=16", "model.mlp=[256,128]", "model.bottom_mlp=[64]",
        "meta.mode=\"fomaml\"", "meta.adapt=\"dense\"", f"train.steps={args.warmup + args.steps}",
        "train.log_every=1", f"train.threads={threads}", "train.device=\"cpu\"",
        "checkpoint.every=0", "eval.splits=[]", "parallel.timeout_s=600.0",
    ]  # fmt: skip
    t0 = time.perf_counter()
    spawn_local(_rank_run, world_size, (overrides,), threads=threads, timeout_s=600)
    wall = time.perf_counter() - t0
    timed = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"][args.warmup :]
    comm = {
        k.removeprefix("comm.").removesuffix(".bytes"): statistics.mean(r[k] for r in timed)
        for k in timed[0]
        if k.startswith("comm.") and k.endswith(".bytes")
    }
    samples = statistics.mean(r["samples_per_s"] / r["steps_per_s"] for r in timed)
    return {
        "world_size": world_size,
        "threads_per_rank": threads,
        "samples_per_step": samples,
        "samples_per_s": statistics.median(r["samples_per_s"] for r in timed),
        "step_ms_median": 1e3 * statistics.median(1.0 / r["steps_per_s"] for r in timed),
        "comm_bytes_per_sample": statistics.mean(r["comm.bytes_per_sample"] for r in timed),
        "comm_bytes_per_step": comm,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.distributed_loop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="out/bench/distributed_loop.json", help="JSON result path")
    p.add_argument("--work", default="out/bench/distributed_loop", help="data and run directories")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    p.add_argument("--episodes", type=int, default=64, help="episodes per rank and step")
    p.add_argument("--k", type=int, default=16, help="support (= query) samples per episode")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work, cores = Path(args.work), os.cpu_count() or 1
    data = write_data(work / "data", 2 * args.episodes * (args.steps + args.warmup), args.k)
    configs = {"world_size_1": (1, cores), "world_size_2": (2, max(1, cores // 2))}
    if cores > 1:
        configs["world_size_1_one_thread"] = (1, 1)
    runs = {}
    for name, (world_size, threads) in configs.items():
        out = work / "runs" / name
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume of the last one
        runs[name] = run_config(data, out, world_size, threads, args)
        log.info("%s: %s", name, runs[name])
    w1, w2 = runs["world_size_1"], runs["world_size_2"]
    one = runs.get("world_size_1_one_thread", w1)
    result = {
        "benchmark": "distributed_loop",
        "command": " ".join(["python -m bench.distributed_loop", *(argv or [])]),
        "shape": {"fields": FIELDS, "rows": FIELDS * BUCKETS, "dim": 16, "mlp": [256, 128],
                  "episodes_per_rank": args.episodes, "k_support": args.k, "q_query": args.k,
                  "mode": "fomaml", "steps": args.steps, "warmup": args.warmup},
        "machine": {"platform": platform.platform(), "cpus": cores, "torch": torch.__version__,
                    "load_avg_1m": os.getloadavg()[0]},
        **runs,
        "throughput_ratio_w2_over_w1": w2["samples_per_s"] / w1["samples_per_s"],
        "scaling_efficiency_w2_vs_one_thread": w2["samples_per_s"] / (2 * one["samples_per_s"]),
    }  # fmt: skip
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"world size 1: {w1['samples_per_s']:,.0f} samples/s ({w1['step_ms_median']:.0f} ms/step); "
        f"world size 2: {w2['samples_per_s']:,.0f} samples/s ({w2['step_ms_median']:.0f} ms/step), "
        f"ratio {result['throughput_ratio_w2_over_w1']:.2f}; comm at world size 2: "
        f"{w2['comm_bytes_per_sample']:.0f} bytes/sample -> {out_path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
