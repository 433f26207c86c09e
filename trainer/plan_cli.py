"""``metarec plan``: what a training run costs at a given world size, without running it.

    metarec plan --world-size 128 --config default data.path=<episodes>     # layout: the manifest
    metarec plan --world-size 128 --config default --features user:9000000000,ad:1000000000 \\
        --k-support 32 --q-query 32 --dense-width 8 --json out/plan-128.json

Prints the sharding plan (``trainer/parallel/plan.py``), the memory of the busiest rank (table
shard, row-wise Adagrad state, null-row mask, dense replica and Adam state, MixCache device rows,
one step's activations as an estimate) and the bytes, calls and time of every collective of one
step on that rank (ids AlltoAll, rows AlltoAll forward and gradients back, the loss normaliser,
the dense AllReduce buckets, the logging counters once per ``train.log_every`` steps, and DES's
request and partial sums when the model admits DES), with the communication time implied by the
link speeds: defaults and their sources in ``trainer/parallel/cost_model.py``. The byte and memory
model is the one the tests check against the communication meter (gloo, world size 1, 2, 4) and
against a real step on PyTorch's fake process group at world size 64.

Without data the ids are an expectation: every rank looks up ``--unique-fraction`` of its slot
occurrences (1.0, the default: no id repeats within a rank's batch, the most bytes), spread
evenly over a row-wise table's owners. ``--features name:rows[:slots],...`` replaces the manifest's
features (then ``data.path`` is not read).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

MIB = 1024.0**2


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The options of ``metarec plan``."""
    parser.add_argument("--config", default=None, help="TOML config or packaged run name")
    parser.add_argument("--world-size", type=int, required=True, help="ranks (GPUs) of the job")
    parser.add_argument(
        "--features",
        default=None,
        help="name:rows[:slots],... instead of the manifest's features (data.path not read)",
    )
    parser.add_argument("--k-support", type=int, default=32, help="with --features: K")
    parser.add_argument("--q-query", type=int, default=32, help="with --features: Q")
    parser.add_argument("--dense-width", type=int, default=0, help="with --features: dense cols")
    parser.add_argument(
        "--unique-fraction", type=float, default=1.0, help="unique ids / slot occurrences"
    )
    parser.add_argument("--rank", type=int, default=None, help="rank to report (default: busiest)")
    parser.add_argument("--nvlink-gbps", type=float, default=None, help="GB/s per GPU, NVLink")
    parser.add_argument("--net-gbps", type=float, default=None, help="GB/s per GPU, RoCE/IB")
    parser.add_argument("--gpus-per-node", type=int, default=None)
    parser.add_argument("--latency-us", type=float, default=None, help="per collective call")
    parser.add_argument("--json", default=None, help="also write the plan as JSON here")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")


def run(args: argparse.Namespace) -> int:
    """Print the plan (and write ``--json``); user errors raise ``ValueError``."""
    from trainer.config import load_trainer_config
    from trainer.durable import write_json_atomic
    from trainer.parallel.cost_model import Links

    overrides = list(args.overrides)
    if args.features and not any(o.startswith("data.path=") for o in overrides):
        overrides.append('data.path="(unused: --features)"')
    cfg = load_trainer_config(args.config, overrides)
    if args.features:
        layout = layout_from_features(
            parse_features(args.features), args.dense_width, args.k_support, args.q_query
        )
    else:
        from trainer.data.batch import FeatureLayout
        from trainer.data.contract import load_manifest

        layout = FeatureLayout.from_manifest(load_manifest(cfg.data.path))
    given = {
        k: getattr(args, k)
        for k in ("nvlink_gbps", "net_gbps", "gpus_per_node", "latency_us")
        if getattr(args, k) is not None
    }
    report = cluster_report(
        cfg, layout, args.world_size, Links(**given), args.unique_fraction, args.rank
    )
    sys.stdout.write(format_report(report) + "\n")
    if args.json:
        write_json_atomic(Path(args.json), report)
    return 0


def parse_features(spec: str) -> list[tuple[str, int, int]]:
    """``"user:9000000000,tags:1000:3"`` -> ``[("user", 9000000000, 1), ("tags", 1000, 3)]``."""
    out = []
    for item in spec.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) not in (2, 3) or not parts[0]:
                raise ValueError
            rows, slots = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        except ValueError:
            raise ValueError(
                f"--features item {item!r} is not name:rows[:slots] (e.g. user:1000000 or tags:5000:3)"
            ) from None
        if rows < 2 or slots < 1:
            raise ValueError(f"--features {item!r}: need rows >= 2 (row 0 is padding), slots >= 1")
        out.append((parts[0], rows, slots))
    return out


def layout_from_features(
    features: list[tuple[str, int, int]], dense_width: int, k_support: int, q_query: int
) -> Any:
    """A :class:`~trainer.data.batch.FeatureLayout` as a manifest with these features gives."""
    import torch

    from trainer.data.batch import FeatureLayout

    if k_support < 1 or q_query < 1 or dense_width < 0:
        raise ValueError(
            f"need K, Q >= 1 and dense width >= 0, got {k_support, q_query, dense_width}"
        )
    slot_feature = [i for i, (_, _, s) in enumerate(features) for _ in range(s)]
    offsets, total = [], 0
    for _, rows, _ in features:
        offsets.append(total)
        total += rows
    return FeatureLayout(
        feature_names=tuple(n for n, _, _ in features),
        feature_slots=tuple(s for _, _, s in features),
        feature_buckets=tuple(r for _, r, _ in features),
        table_offsets=tuple(offsets),
        total_rows=total,
        slot_feature=torch.tensor(slot_feature, dtype=torch.int64),
        slot_offsets=torch.tensor([offsets[i] for i in slot_feature], dtype=torch.int64),
        dense_names=tuple(f"dense{i}" for i in range(dense_width)),
        k_support=k_support,
        q_query=q_query,
    )


def _dense_model(cfg: Any, layout: Any) -> Any:
    """The model's dense half, built over a 2-row-per-table copy of ``layout`` (its dense
    parameters do not depend on the tables' sizes)."""
    import torch

    from trainer.models import build_model

    tiny = dataclasses.replace(
        layout,
        feature_buckets=(2,) * layout.num_features,
        table_offsets=tuple(2 * f for f in range(layout.num_features)),
        total_rows=2 * layout.num_features,
        slot_offsets=2 * layout.slot_feature,
    )
    with torch.device("cpu"):
        return build_model(cfg.model, tiny, seed=0, meta=cfg.meta)


def cluster_report(
    cfg: Any,
    layout: Any,
    world_size: int,
    links: Any,
    unique_fraction: float = 1.0,
    rank: int | None = None,
) -> dict[str, Any]:
    """The plan, memory and collectives of one step of ``cfg`` over ``layout`` on ``world_size``
    ranks (plain data; :func:`format_report` prints it)."""
    from trainer.parallel import cost_model as cm
    from trainer.parallel import des_plan
    from trainer.parallel.plan import build_sharding_plan

    plan = build_sharding_plan(layout, world_size, cfg.model, cfg.parallel)
    W = world_size
    if rank is None:
        rank = max(range(W), key=lambda r: (plan.rows_per_rank[r], -r))
    if not 0 <= rank < W:
        raise ValueError(f"--rank must be in [0, {W}), got {rank}")
    model = _dense_model(cfg, layout)
    params = [p for p in model.parameters() if p.requires_grad]
    buckets = cm.dense_buckets(params, int(cfg.parallel.dense_bucket_mb * MIB))
    T = cfg.data.batch_episodes
    requests = cm.expected_requests(plan, layout, T, unique_fraction)
    metric_values = 8 + 2 * 7 + 2  # StepStats sums + calls/bytes per collective + totals
    calls = cm.step_collectives(plan, requests, rank, buckets, metric_values)
    samples = T * (layout.k_support + layout.q_query)
    inner = 0 if cfg.meta.mode == "plain" else cfg.meta.inner_steps
    mem = cm.rank_memory(
        plan,
        rank,
        sum(p.numel() for p in params),
        params[0].element_size() if params else 4,
        cm.activation_bytes(
            sum(requests[rank]), samples, layout.num_features, plan, cfg.model.mlp, inner
        ),
    )
    log_every = cfg.train.log_every
    rows = []
    for c in calls:
        every = log_every if c.name == "metrics" else 1
        rows.append({**dataclasses.asdict(c), "every_steps": every, **_time(c, W, links, every)})
    des = None
    first = model.first_field_layers()
    spec = des_plan.describe_model(
        cfg.model.arch,
        plan,
        layout.feature_slots,
        [(name, int(layer.weight.shape[1])) for name, layer in first],
    )
    adapted = model.adapted_layers(cfg.meta.adapt) if cfg.meta.mode != "plain" else []
    ops, why_not = des_plan.admissible(spec, cfg.meta, adapted)
    if cfg.parallel.des == "on":  # the trainer refuses it likewise
        des_plan.check_on(spec, (ops, why_not))
    if ops and W > 1:
        owned = [round(n) for n in cm.expected_requests(plan, layout, T, 1.0)[0]]
        counts = [
            des_plan.RequestCounts(
                samples, layout.sparse_width, [round(u) for u in requests[i]], owned, i
            )
            for i in range(W)
        ]
        parts = cm.des_collectives(spec, ops, counts, rank, plan.dtype_bytes)
        c = cm.Collective("des", "all_to_all", len(parts), sum(p.bytes for p in parts))
        des = {**dataclasses.asdict(c), "ops": list(ops), "every_steps": 1, **_time(c, W, links, 1)}
    replaced = ("splits", "ids", "rows", "grads")
    exchange = sum(r["bytes"] for r in rows if r["name"] in replaced)
    use_des = des is not None and (
        cfg.parallel.des == "on" or (cfg.parallel.des == "auto" and des["bytes"] < exchange)
    )
    step = [r for r in rows if not (use_des and r["name"] in replaced)] + ([des] if use_des else [])
    return {
        "world_size": W,
        "rank": rank,
        "model": {"arch": cfg.model.arch, "dim": plan.dim, "linear": plan.linear},
        "batch": {"episodes_per_rank": T, "samples_per_rank": samples},
        "unique_fraction": unique_fraction,
        "links": dataclasses.asdict(links),
        "plan": {"fingerprint": plan.fingerprint, **plan.to_dict(), "text": str(plan)},
        "rows_per_rank": {"min": min(plan.rows_per_rank), "max": max(plan.rows_per_rank)},
        "memory": mem.to_dict(),
        "collectives": rows,
        "des": des,
        "des_used": use_des,
        "des_excluded": why_not,
        "step": {
            "bytes": sum(r["bytes"] / r["every_steps"] for r in step),
            "comm_seconds": sum(r["seconds_per_step"] for r in step),
        },
    }


def _time(c: Any, W: int, links: Any, every: int) -> dict[str, float]:
    from trainer.parallel.cost_model import comm_seconds

    return {"seconds_per_step": comm_seconds(c, W, links) / every}


def format_report(r: dict[str, Any]) -> str:
    """The report as text: the plan table, the rank's memory, the step's collectives."""
    W, links, m = r["world_size"], r["links"], r["memory"]
    nodes = -(-W // links["gpus_per_node"])
    model = r["model"]
    lines = [
        f"metarec plan: {model['arch']}, dim {model['dim']}{' + linear' if model['linear'] else ''},"
        f" {W} ranks ({nodes} node(s) of {links['gpus_per_node']}), "
        f"{r['batch']['episodes_per_rank']} episodes = {r['batch']['samples_per_rank']:,} samples "
        f"per rank and step, unique ids = {r['unique_fraction']:.0%} of the slot occurrences",
        "",
        r["plan"]["text"],
        "",
        f"memory of rank {r['rank']} (MiB; rows {r['rows_per_rank']['min']:,}-"
        f"{r['rows_per_rank']['max']:,} per rank):",
    ]
    for key in ("table", "optimizer", "null_mask", "dense", "dense_optimizer", "cache"):
        lines.append(f"  {key:<16} {m[key] / MIB:12,.1f}")
    lines.append(f"  {'activations':<16} {m['activations'] / MIB:12,.1f}  (estimate)")
    lines.append(f"  {'device total':<16} {m['device'] / MIB:12,.1f}")
    if m["host"]:
        lines.append(f"  {'host (MixCache)':<16} {m['host'] / MIB:12,.1f}")
    lines += [
        "",
        f"collectives of rank {r['rank']} per step (NVLink {links['nvlink_gbps']:g} GB/s, network "
        f"{links['net_gbps']:g} GB/s, {links['latency_us']:g} us a call):",
        f"  {'name':<8} {'kind':<11} {'calls':>5} {'MiB':>12} {'ms/step':>9}",
    ]
    for c in r["collectives"] + ([r["des"]] if r["des"] else []):
        name = c["name"]
        note = f"  every {c['every_steps']} steps" if c.get("every_steps", 1) > 1 else ""
        if name == "des":
            use = "used" if r["des_used"] else "not used"
            note = f"  DES {'+'.join(c['ops'])} ({use}; would replace splits, ids, rows, grads)"
        lines.append(
            f"  {name:<8} {c['kind']:<11} {c['calls']:>5} {c['bytes'] / MIB:12.3f} "
            f"{c['seconds_per_step'] * 1e3:9.3f}{note}"
        )
    s = r["step"]
    lines.append(
        f"  step: {s['bytes'] / MIB:,.3f} MiB sent by this rank, {s['comm_seconds'] * 1e3:.3f} ms "
        "of communication (not overlapped with compute)"
    )
    return "\n".join(lines)
