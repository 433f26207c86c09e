"""Delta export size after one hour of generated traffic, against a full export of the same run.

    python -m bench.delta_export                      # the issue's measurement (default spec)
    python -m bench.delta_export --day-rows 20000     # a quick look

1. A day of traffic: synthetic episodes (:mod:`trainer.data.synthetic`: Zipf ids, tasks with
   their own popular rows) with the ETL's default feature spec (16 fields, 1.3 M table rows: the
   ~85 MB export of the issue) and ``--day-rows`` samples (the generator's default: 100 000 rows
   over 24 hours). The default trainer config trains one epoch over it; that checkpoint is
   exported in full: v1.
2. The next hour: ``--day-rows / 24`` samples of the same distribution (another seed), one epoch
   warm-started from the day's checkpoint; exported as a delta on v1 (v2), and in full in a second
   registry (the baseline, same process).
3. The ratio delta bytes / full bytes (whole version directories; target <= 0.10), the rows that
   changed, and a check that v2 loaded through its chain has the full export's tables bit for bit.
4. The same with ``user_id`` and ``ad_id`` as dynamic tables (:data:`DYNAMIC`: a tenth of their
   rows, admission after 2 sightings, LRU; the others hashed), under ``"dynamic"``: the delta
   also carries the id maps' changes (ids admitted and evicted), and the check covers the maps.

Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.delta_export")
K, Q = 8, 8
BATCH = 64
DYNAMIC = (
    'parallel.dynamic=[{feature = "user_id", capacity = 100000, fallback_rows = 1000, '
    'admit_count = 2}, {feature = "ad_id", capacity = 20000, fallback_rows = 100, admit_count = 2}]'
)
"""The dynamic case's tables: a tenth of the hashed tables' rows each."""


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _episodes(root: Path, samples: int, seed: int) -> tuple[Path, int]:
    """An interval of about ``samples`` samples (all in ``train``), its train episode count."""
    from components.etl.config import DEFAULT_DENSE, DEFAULT_FEATURES
    from trainer.data.synthetic import write_synthetic_episodes

    episodes_per_task = 4
    tasks = max(1, round(samples / (K + Q) / episodes_per_task))
    features = [(f.name, f.buckets, f.slots) for f in DEFAULT_FEATURES]
    write_synthetic_episodes(root, num_tasks=tasks, k_support=K, q_query=Q, features=features,
                             dense_width=len(DEFAULT_DENSE), episodes_per_task=episodes_per_task,
                             splits=("train",), partial_fraction=0.0, seed=seed)  # fmt: skip
    return root, tasks * episodes_per_task


def _train(
    data: Path, out: Path, episodes: int, warm_start: Path | None, extra: tuple[str, ...] = ()
) -> tuple[Path, int]:
    from trainer.config import load_trainer_config
    from trainer.trainer import Trainer

    steps = max(1, math.ceil(episodes / BATCH))  # one epoch
    values: dict[str, Any] = {
        "data.path": str(data), "train.output_dir": str(out), "train.steps": steps,
        "train.log_every": max(1, steps // 4), "checkpoint.every": steps,
        "data.batch_episodes": BATCH, "eval.splits": [],
    }  # fmt: skip
    if warm_start is not None:
        values["checkpoint.warm_start"] = str(warm_start / "checkpoints")
    args = [f"{k}={json.dumps(v)}" for k, v in values.items()]
    cfg = load_trainer_config("default", [*args, *extra])
    trainer = Trainer(cfg).build()
    try:
        trainer.fit()
    finally:
        trainer.close()
    return out, steps


def _case(
    work: Path, day: tuple[Path, int], hour: tuple[Path, int], extra: tuple[str, ...]
) -> dict[str, Any]:
    """Train the day then the hour (``extra`` overrides), export v1 (full), v2 (delta) and the
    hour in full; the sizes, changed rows and the bit-for-bit check."""
    import numpy as np

    from trainer.exported import export_checkpoint, load_exported

    day_run, day_steps = _train(day[0], work / "run-day", day[1], None, extra)
    hour_run, hour_steps = _train(hour[0], work / "run-hour", hour[1], day_run, extra)
    v1 = export_checkpoint(day_run, work / "models", name="bench", delta=True)
    v2 = export_checkpoint(hour_run, work / "models", name="bench", delta=True)
    full = export_checkpoint(hour_run, work / "models-full", name="bench")
    assert v1.base is None and v2.base == v1.version, (v1, v2)
    rows = np.load(v2.path / "tables" / "rows.npy")
    a, b = load_exported(v2.path), load_exported(full.path, mmap=False)
    equal = bool(np.array_equal(a.embeddings.emb, b.embeddings.emb)) and all(
        np.array_equal(a.model.state_dict()[k].numpy(), v.numpy())
        for k, v in b.model.state_dict().items()
    )
    out: dict[str, Any] = {}
    if b.embeddings.id_maps is not None:
        maps_a, maps_b = a.embeddings.id_maps.maps, b.embeddings.id_maps.maps
        equal = equal and all(
            np.array_equal(maps_a[f].ids, m.ids) and np.array_equal(maps_a[f].rows, m.rows)
            for f, m in maps_b.items()
        )
        out["id_maps"] = {}
        for name, info in a.descriptor["dynamic"].items():
            files = [info[k] for k in ("ids", "rows", "evicted") if k in info]
            out["id_maps"][name] = {
                "admitted_ids": len(maps_b[a.layout.feature_names.index(name)].ids),
                "written_as": "change" if "evicted" in info else "whole map",
                "bytes": sum((v2.path / f).stat().st_size for f in files),
            }
    total_rows = int(b.embeddings.emb.shape[0])
    return {
        "steps": {"day": day_steps, "hour": hour_steps, "batch_episodes": BATCH},
        "table_rows": total_rows,
        "changed_rows": len(rows),
        "changed_rows_fraction": len(rows) / total_rows,
        "bytes": {"full": full.bytes, "delta": v2.bytes, "first_full": v1.bytes},
        "ratio_delta_to_full": v2.bytes / full.bytes,
        "target_ratio": 0.10,
        "delta_equals_full_bit_for_bit": equal,
        "export_seconds": {"delta": v2.seconds, "full": full.seconds},
        **out,
    }


def run(work: Path, day_rows: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    day = _episodes(work / "day", day_rows, seed=0)
    hour = _episodes(work / "hour", max(1, day_rows // 24), seed=1)
    hashed = _case(work / "hashed", day, hour, ())
    dynamic = _case(work / "dynamic", day, hour, (DYNAMIC,))
    return {
        "day_samples": day[1] * (K + Q),
        "hour_samples": hour[1] * (K + Q),
        **hashed,
        "dynamic": {
            "tables": DYNAMIC.split("=", 1)[1],
            **dynamic,
            # its tables are a fraction of the hashed ones: the delta against the hashed full too
            "ratio_delta_to_hashed_full": dynamic["bytes"]["delta"] / hashed["bytes"]["full"],
        },
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--day-rows", type=int, default=100_000, help="samples of the day")
    parser.add_argument("--work", default="out/bench/delta_export", help="scratch directory")
    parser.add_argument("--out", default="out/bench/delta_export.json", help="JSON result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import shutil

    from trainer.durable import write_json_atomic

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    result = {"bench": "delta_export", "python": platform.python_version(),
              **run(work, args.day_rows)}  # fmt: skip
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
