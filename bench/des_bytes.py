"""DES benchmark: embedding-exchange bytes per sample of the plain row AlltoAll vs DES vs ``auto``,
measured by the communication meter in real training steps at world size 2 (gloo, CPU, two
processes spawned by this command, the same batches for every variant).

    python -m bench.des_bytes --out out/bench/des_bytes.json
    python -m bench.des_bytes --out /tmp/des.json --quick     # smaller tables and batches

Shapes (per rank 16 episodes x 64 samples = 1,024 samples, dim 16, FOMAML adapting the head):

- ``*_multihot``: 4 single-slot fields (Zipf 1.2) and 4 multi-hot fields of 32 slots (behaviour
  sequences: Zipf 1.05, 8-32 real ids per sample, the rest padding), 500k rows per table, first
  layer 32 wide: the industrial case DES was built for (rows per sample >> partials per sample);
  DeepFM with the multi-hot tables whole on one rank (table-wise: FM needs D + 1 floats per
  sample) and row-wise (each multi-hot field's partial embedding travels too), Wide&Deep, MeLU;
- ``wide_deep_wide_first_layer``: 16 single-slot fields of 62.5k rows (Zipf 1.2) and a first layer
  1,024 wide (> fields x dim = 256): DES loses, ``auto`` must keep the rows;
- ``dlrm_multihot``: nothing applies (dot interaction); ``auto`` keeps the rows.

Embedding exchange = ``splits + ids + rows + grads`` (plain) or ``des.header + des.request +
des.forward + des.backward`` (DES); steps after the first (the first also carries ``auto``'s one
decision all-reduce, reported apart). The dense all-reduce (W1 included, the same in every variant)
is reported separately. Target: >= 60 % fewer embedding-exchange bytes where DES applies (paper:
up to 68.7 %).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
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
from trainer.parallel.plan import ParallelConfig

log = logging.getLogger("bench.des_bytes")
PLAIN = ("splits", "ids", "rows", "grads")
DES = ("des.header", "des.request", "des.forward", "des.backward")


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    arch: str
    single: int
    """Single-slot fields."""
    multi: int
    """Multi-hot fields."""
    slots: int
    """Slots per multi-hot field."""
    rows: int
    """Rows per table."""
    mlp: tuple[int, ...]
    multi_table_wise: bool = False


def shapes(quick: bool) -> list[Shape]:
    rows = 50_000 if quick else 500_000
    single_rows = 20_000 if quick else 62_500
    multi = dict(single=4, multi=4, slots=32, rows=rows, mlp=(32, 16))
    return [
        Shape("deepfm_multihot_table_wise", "deepfm", **multi, multi_table_wise=True),
        Shape("deepfm_multihot_row_wise", "deepfm", **multi),
        Shape("wide_deep_multihot", "wide_deep", **multi),
        Shape("melu_multihot", "melu", **multi),
        Shape("wide_deep_wide_first_layer", "wide_deep", 16, 0, 1, single_rows, (1024, 64)),
        Shape("dlrm_multihot", "dlrm", **multi),
    ]


def make_layout(s: Shape, samples: int) -> FeatureLayout:
    names = [f"s{i}" for i in range(s.single)] + [f"m{i}" for i in range(s.multi)]
    slots = [1] * s.single + [s.slots] * s.multi
    offsets = [i * s.rows for i in range(len(names))]
    slot_feature = [f for f, n in enumerate(slots) for _ in range(n)]
    return FeatureLayout(
        feature_names=tuple(names),
        feature_slots=tuple(slots),
        feature_buckets=(s.rows,) * len(names),
        table_offsets=tuple(offsets),
        total_rows=s.rows * len(names),
        slot_feature=torch.tensor(slot_feature),
        slot_offsets=torch.tensor([offsets[f] for f in slot_feature]),
        dense_names=(),
        k_support=samples // 2,
        q_query=samples // 2,
    )


def _zipf(rng: np.random.Generator, n: int, exponent: float, size: tuple) -> np.ndarray:
    cdf = np.cumsum(np.arange(1, n, dtype=np.float64) ** -exponent)
    cdf /= cdf[-1]
    local = 1 + np.minimum(np.searchsorted(cdf, rng.random(size)), n - 2)
    return np.random.default_rng(7).permutation(n - 1)[local - 1] + 1  # popular ids anywhere


def make_batch(s: Shape, lay: FeatureLayout, episodes: int, samples: int, rng) -> EpisodeBatch:
    B = episodes * samples
    parts = [_zipf(rng, s.rows, 1.2, (B, s.single))]
    if s.multi:
        seq = _zipf(rng, s.rows, 1.05, (B, s.multi, s.slots))
        length = rng.integers(s.slots // 4, s.slots + 1, size=(B, s.multi, 1))
        seq[np.arange(s.slots)[None, None] >= length] = 0  # padding: the null row
        parts.append(seq.reshape(B, -1))
    local = np.concatenate(parts, 1)
    ids, inverse = np.unique(local + lay.slot_offsets.numpy(), return_inverse=True)
    T, N = episodes, samples
    return EpisodeBatch(
        ids=torch.from_numpy(ids),
        inverse=torch.from_numpy(inverse.reshape(T, N, -1)),
        dense=torch.zeros(T, N, 0),
        click=torch.from_numpy((rng.random((T, N)) < 0.3).astype(np.float32)),
        conversion=torch.zeros(T, N),
        n_support=torch.full((T,), N // 2),
        n_query=torch.full((T,), N // 2),
        task_ids=torch.arange(T),
        episode_mask=torch.ones(T, dtype=torch.bool),
        k_support=N // 2,
    )


def _rank_job(env: ParallelEnv, args: dict[str, Any], files: list[str]) -> None:
    """Per rank: every shape under each exchange, the same batches; comm bytes per step."""
    torch.manual_seed(0)
    report: dict[str, Any] = {}
    for s in shapes(args["quick"]):
        lay = make_layout(s, args["samples"])
        rng = np.random.default_rng(1000 + env.rank)
        batches = [
            make_batch(s, lay, args["episodes"], args["samples"], rng)
            for _ in range(args["steps"] + 1)
        ]
        cfg = ModelConfig(arch=s.arch, embedding_dim=16, mlp=s.mlp, bottom_mlp=(32,), head_layers=2)
        meta = MetaConfig(mode="fomaml", adapt="head")
        table_wise = tuple(f"m{i}" for i in range(s.multi)) if s.multi_table_wise else ()
        out: dict[str, Any] = {}
        for variant in ("off", "on", "auto"):
            if variant == "on" and s.arch == "dlrm":
                continue  # refused: nothing to substitute (tested in tests/.../test_des.py)
            pcfg = ParallelConfig(des=variant, table_wise=table_wise)
            model, _ = build_parallel_model(cfg, lay, env, pcfg, seed=0, meta=meta)
            coll = model.embeddings
            opt = build_optimizers(OptimConfig(), model)
            per_step, t0 = [], time.perf_counter()
            for batch in batches:
                env.comm_stats(reset=True)
                sparse = coll.lookup(batch)
                loss, _ = outer_loss(
                    model, sparse, batch, meta, env.normalizer(batch.episode_mask.sum())
                )
                loss.backward()  # under DES: the return trip to the owners
                env.reduce_dense_grads(model.parameters())
                opt.step()
                per_step.append(env.comm_stats(reset=True))
            out[variant] = {
                "comm": per_step,
                "ops": list(coll.des.ops) if coll.des is not None else [],
                "estimates": coll.des.metrics() if coll.des is not None else {},
                "unique_rows": statistics.mean(int(b.ids.numel()) for b in batches),
                "samples": int(batches[0].num_samples),
                "wall_s": time.perf_counter() - t0,
            }
            del model, coll, opt
        report[s.name] = out
    torch.save(report, files[env.rank])


def _per_sample(run: dict[str, Any], names: tuple[str, ...]) -> float:
    steps = run["comm"][1:]  # the first step carries auto's one-off decision
    total = statistics.mean(sum(c.get(f"comm.{n}.bytes", 0) for n in names) for c in steps)
    return total / run["samples"]


def summarise(reports: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name in reports[0]:
        runs = {v: [r[name][v] for r in reports] for v in reports[0][name]}
        entry: dict[str, Any] = {}
        for variant, per_rank in runs.items():
            names = PLAIN + DES
            emb = statistics.mean(_per_sample(r, names) for r in per_rank)
            dense = statistics.mean(_per_sample(r, ("dense",)) for r in per_rank)
            entry[variant] = {
                "embedding_bytes_per_sample": emb,
                "dense_bytes_per_sample": dense,
                "ops": per_rank[0]["ops"],
                "unique_rows_per_rank_step": statistics.mean(r["unique_rows"] for r in per_rank),
                "decision_bytes": per_rank[0]["comm"][0].get("comm.des.decide.bytes", 0),
            }
            if per_rank[0]["estimates"]:
                entry[variant]["estimated"] = per_rank[0]["estimates"]
        plain = entry["off"]["embedding_bytes_per_sample"]
        for variant in ("on", "auto"):
            if variant in entry:
                got = entry[variant]["embedding_bytes_per_sample"]
                entry[variant]["saving_vs_plain"] = 1.0 - got / plain
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.des_bytes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="out/bench/des_bytes.json", help="JSON report path")
    p.add_argument("--steps", type=int, default=3, help="measured steps (plus one first step)")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--samples", type=int, default=64, help="samples per episode")
    p.add_argument("--quick", action="store_true", help="tables of 50k rows, 2 steps")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.steps = 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / ".des_bytes"
    tmp.mkdir(exist_ok=True)
    files = [str(tmp / f"rank-{r}.pt") for r in range(2)]
    job = {
        "quick": args.quick,
        "steps": args.steps,
        "episodes": args.episodes,
        "samples": args.samples,
    }
    t0 = time.perf_counter()
    spawn_local(_rank_job, 2, (job, files), threads=1, timeout_s=600)
    reports = [torch.load(f, weights_only=False) for f in files]
    for f in files:
        os.remove(f)
    tmp.rmdir()
    result = {
        "benchmark": "des_bytes",
        "world_size": 2,
        "job": job,
        "shapes": [dataclasses.asdict(s) for s in shapes(args.quick)],
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "backend": "gloo",
        },
        "results": summarise(reports),
        "wall_s": time.perf_counter() - t0,
    }
    applies = {k: v for k, v in result["results"].items() if "on" in v}
    result["target_saving_where_des_applies"] = 0.60
    result["best_saving_where_des_applies"] = max(
        (v["auto"]["saving_vs_plain"] for v in applies.values()), default=0.0
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, entry in result["results"].items():
        line = f"{name}: plain {entry['off']['embedding_bytes_per_sample']:,.0f} B/sample"
        for v in ("on", "auto"):
            if v in entry:
                e = entry[v]
                line += (
                    f"; {'DES' if v == 'on' else 'auto'} {e['embedding_bytes_per_sample']:,.0f}"
                    f" ({100 * e['saving_vs_plain']:+.1f}% saved, ops {'+'.join(e['ops']) or 'plain'})"
                )
        print(line)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
