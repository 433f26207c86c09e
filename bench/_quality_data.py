"""Datasets of ``bench/meta_quality.py``: each returns ``(episode root, data)``, ``data`` holding
``overrides`` (the trainer settings every method's run of that dataset shares: same model, same
steps), ``metaemb`` (MetaEmb's id feature and its attributes; None where the task key is no
feature), ``tune_split`` (where fine-tuning is tuned) and ``info``.

Data are cached under the work directory (rebuilt when absent).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.data.contract import MANIFEST_NAME, load_manifest

log = logging.getLogger("bench.meta_quality")
REPO = Path(__file__).resolve().parents[1]
MOVIELENS_SRC = REPO.parent / "shared" / "data" / "movielens-100k" / "original"

# One model and one inner loop for every dataset: a MeLU-style concat MLP (the model of the MeLU
# paper on MovieLens), one SGD step of 0.1 on all dense layers.
COMMON: dict[str, Any] = {
    "model.arch": "melu",
    "model.embedding_dim": 16,
    "model.mlp": [64, 32],
    "meta.inner_steps": 1,
    "meta.inner_lr": 0.1,
    "meta.adapt": "dense",
    "optim.dense_lr": 0.003,
    "optim.sparse_lr": 0.05,
    "data.batch_episodes": 32,
}


class Unavailable(RuntimeError):
    """A dataset's inputs or pipeline stage are missing here (the benchmark skips it)."""


def _info(root: Path) -> dict[str, Any]:
    m = load_manifest(str(root))
    return {
        "path": str(root),
        "task_key": m.task_key,
        "k_support": m.k_support,
        "q_query": m.q_query,
        "splits": m.splits,
        "features": [f.name for f in m.features],
        "dense_features": [d.name for d in m.dense_features],
    }


def _data(root: Path, steps: int, source: str, metaemb: dict | None = None) -> dict[str, Any]:
    tune = "valid_cold" if "valid_cold" in load_manifest(str(root)).splits else "valid"
    return {"overrides": {**COMMON, "train.steps": steps}, "metaemb": metaemb,
            "tune_split": tune, "info": {**_info(root), "source": source}}  # fmt: skip


def synthetic(work: Path, args: argparse.Namespace, k: int = 8) -> tuple[Path, dict]:
    """1,500 tasks of Zipf size, K = Q = ``k``, from :mod:`trainer.data.synthetic` (no Spark; it
    writes no ``valid_cold``: fine-tuning is tuned on ``valid``). ``--quick``: 200 tasks, 20
    steps."""
    from trainer.data.synthetic import write_synthetic_episodes

    quick = getattr(args, "quick", False)
    root = work / "episodes"
    if not (root / MANIFEST_NAME).exists():
        write_synthetic_episodes(root, num_tasks=200 if quick else 1500, k_support=k, q_query=k,
                                 seed=1, rows_per_group=128)  # fmt: skip
    return root, _data(root, 20 if quick else 300, "trainer.data.synthetic")


def _run_etl(raw: Path, out: Path, task_key: str, start: str, end: str, k: int, q: int) -> Path:
    """The Spark ETL over ``raw`` for ``[start, end)``; returns the interval's episode directory."""
    try:
        from components.etl.config import EtlConfig
        from components.etl.job import run_etl
    except ImportError as e:
        raise Unavailable(
            f"the Spark ETL (components.etl.job.run_etl) is not available: {e}"
        ) from e
    config = EtlConfig(
        input=str(raw), output=str(out), start=start, end=end, task_key=task_key,
        k_support=k, q_query=q, min_support=4, min_query=4, num_buckets=8,
        cold_fraction=0.3, valid_cold_fraction=1 / 3, allow_missing=True,
    )  # fmt: skip
    root = out / config.interval_id
    if (root / MANIFEST_NAME).exists() and "valid_cold" not in load_manifest(str(root)).splits:
        shutil.rmtree(root)  # cut before valid_cold existed
    if not (root / MANIFEST_NAME).exists():
        log.info("ETL %s -> %s (task key %s)", raw, root, task_key)
        log.info("%s", run_etl(config).summary())
    return root


def generated(work: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """``components.generate`` logs (per-campaign preferences, 20 % cold-start campaigns) through
    the ETL with task key ``campaign_id``."""
    from components.generate import GeneratorConfig, generate

    raw = work / "raw"
    gen = GeneratorConfig(
        out=str(raw), rows=args.generated_rows, hours=48, seed=3, format="parquet",
        num_campaigns=2000, ctr=0.1, overwrite=True,
    )  # fmt: skip
    stamp = raw / "_generation.json"
    if (
        not stamp.exists()
        or json.loads(stamp.read_text()).get("config", {}).get("rows") != gen.rows
    ):
        log.info("generating %d rows -> %s", gen.rows, raw)
        generate(gen)
    root = _run_etl(raw, work / "episodes", "campaign_id", gen.start, "2026-11-03T00", 32, 32)
    # ~1 epoch: 4.4k train episodes overfit fast (600 steps: train loss 0.19, cold logloss 0.48)
    metaemb = {"meta.metaemb_id": "campaign_id",
               "meta.metaemb_attributes": ["advertiser_id", "ad_category", "ad_brand"]}  # fmt: skip
    return root, _data(root, 150, "components.generate", metaemb)


def movielens(work: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """MovieLens-100K through the adapter and the ETL with task key ``user_id``."""
    src = Path(args.movielens)
    if not (src / "u.data").is_file():
        raise Unavailable(f"MovieLens-100K not found at {src} (licensed data, never committed)")
    from components.adapters import adapt
    from components.adapters.run import ADAPTER_JSON, AdapterConfig

    raw = work / "raw"
    if not (raw / ADAPTER_JSON).exists():
        log.info("adapting MovieLens-100K %s -> %s", src, raw)
        adapt("movielens", AdapterConfig(src=str(src), out=str(raw), overwrite=True))
    span = json.loads((raw / ADAPTER_JSON).read_text())["output"]["time_range"]
    start, end = span["start_hour"], span["end_hour_exclusive"]
    root = _run_etl(raw, work / "episodes", "user_id", start, end, 16, 16)
    # ~2 epochs of the 2.5k train episodes (longer runs overfit: 1,000 steps lose ~0.02 AUC)
    metaemb = {"meta.metaemb_id": "user_id", "meta.metaemb_attributes":
               ["user_gender", "user_age_bucket", "user_segment", "region"]}  # fmt: skip
    return root, _data(root, 150, "movielens-100k", metaemb)


DATASETS: dict[str, Callable[[Path, argparse.Namespace], tuple[Path, dict]]] = {
    "generated": generated,
    "movielens": movielens,
    "synthetic_k8": functools.partial(synthetic, k=8),
    "synthetic_k32": functools.partial(synthetic, k=32),
}
"""In the order the benchmark runs them: the issue's target datasets first."""
