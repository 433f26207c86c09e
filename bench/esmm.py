"""ESMM (CTR and CVR in one meta-learned model) against the classic CVR model trained on clicked
samples only, on generated logs with conversions, 5 seeds.

    python -m bench.esmm --out out/bench/esmm.json                     # 5 seeds (tens of minutes)
    python -m bench.esmm --seeds 0 --steps 10 --max-episodes 64 --out /tmp/esmm.json   # smoke run

Data: ``components.generate`` logs through the ETL, task = campaign (the ``generated`` dataset of
``bench/meta_quality.py``, cached under ``--work``; conversions follow clicks with the campaign x
user preference, ``components/generate/labels.py``; 15 % of advertisers report none).

Per seed, three runs with the same model (MeLU-style MLP), steps, data and MAML inner loop
(``bench/_quality_data.py``'s ``COMMON``), only the label / task differing:

- ``esmm``: ``model.task = "esmm"``: a CTR and a CVR tower on the shared embeddings, CTR and
  CTCVR losses over all impressions;
- ``ctr``: the CTR model (``model.label = "click"``);
- ``cvr_clicked``: the CVR model trained on clicked samples only
  (``model.label = "clicked_conversion"``).

All three are scored in ONE pass over ``test_cold`` (cold campaigns), without adaptation and after
adapting on each episode's support set (the run's inner loop), by
:func:`trainer.metrics.esmm_metrics`: CTR AUC (every query sample), CVR AUC (clicked samples with
a known conversion) and CTCVR AUC (pCTR x pCVR against click x conversion, every sample with a
known conversion). ESMM's scores are its two heads; the baseline's are the CTR model's pCTR times
the clicked-only CVR model's pCVR. Target (issue 16): ESMM's CTCVR AUC above the baseline's
(means over the seeds, after adaptation), written under ``target`` with the spread: each seed's
two AUCs, the paired per-seed differences (mean, std, min, max) and the seeds ESMM wins.
"""

from __future__ import annotations

import argparse
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

from bench import _quality_data as quality_data

log = logging.getLogger("bench.esmm")
RUNS: dict[str, dict[str, Any]] = {
    "esmm": {"model.task": "esmm"},
    "ctr": {"model.label": "click"},
    "cvr_clicked": {"model.label": "clicked_conversion"},
}
HEADS = ("ctr", "cvr", "ctcvr")
METRICS = ("auc", "gauc", "logloss", "samples")
SETTINGS = ("no adaptation", "adapted")


def _config(root: Path, out: Path, seed: int, overrides: dict[str, Any]) -> Any:
    from trainer.config import load_trainer_config

    values = {
        "data.path": str(root), "train.output_dir": str(out), "train.seed": seed,
        "data.seed": seed, "train.threads": 1, "train.deterministic": False,
        "train.device": "auto", "checkpoint.every": 0, "checkpoint.resume": False,
        "eval.splits": [], "train.log_every": 50, "train.eval_every": 0,
        "meta.mode": "maml", **overrides,
    }  # fmt: skip
    return load_trainer_config("default", [f"{k}={json.dumps(v)}" for k, v in values.items()])


def _train(cfg: Any) -> tuple[Any, float]:
    """Train one run; the trained model and the seconds."""
    from trainer.trainer import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(cfg).build()
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer.model, round(time.perf_counter() - t0, 1)


@torch.no_grad()
def score(
    models: dict[str, Any], meta: Any, root: Path, split: str, max_episodes: int
) -> dict[str, np.ndarray]:
    """Query samples of the first ``max_episodes`` episodes of ``split`` (0: all): labels, task,
    episode, and each model's logits without adaptation (``<name>/no adaptation``) and after
    adapting on the episode's support set (``<name>/adapted``)."""
    from trainer.data.reader import EpisodeReader
    from trainer.evaluate import limit_episodes
    from trainer.meta import adapt, predict

    parts: dict[str, list[np.ndarray]] = {}
    done = 0
    with EpisodeReader(str(root), split, 32, shuffle=False, epochs=1, prefetch=0) as reader:
        for batch in reader:
            if max_episodes and done >= max_episodes:
                break
            if max_episodes:
                batch = limit_episodes(batch, max_episodes - done)
            K = batch.k_support
            mask = batch.query_mask & batch.episode_mask[:, None]
            episode = done + torch.arange(batch.num_episodes)[:, None].expand_as(mask)
            found = {
                "click": batch.click[:, K:], "conversion": batch.conversion[:, K:],
                "task": batch.task_ids[:, None].expand_as(mask), "episode": episode,
            }  # fmt: skip
            for name, model in models.items():
                sparse = model.embeddings.read(batch)
                with torch.enable_grad():
                    adapted = adapt(model, sparse, batch, meta)
                found[f"{name}/no adaptation"] = predict(model, sparse, batch)
                found[f"{name}/adapted"] = predict(model, sparse, batch, adapted)
            for key, value in found.items():
                parts.setdefault(key, []).append(value[mask].double().numpy())
            done += int(batch.episode_mask.sum())
    return {k: np.concatenate(v) for k, v in parts.items()}


def compare(scores: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, Any]]]:
    """``model -> setting -> head -> metrics`` for ESMM and the baseline (CTR model x CVR model
    on clicked samples)."""
    from trainer.metrics import esmm_metrics

    out: dict[str, dict[str, dict[str, Any]]] = {"esmm": {}, "baseline": {}}
    labels = (scores["click"], scores["conversion"])
    groups = (scores["task"].astype(np.int64), scores["episode"].astype(np.int64))
    for setting in SETTINGS:
        e = scores[f"esmm/{setting}"]
        pairs = {
            "esmm": (e[:, 0], e[:, 1]),
            "baseline": (scores[f"ctr/{setting}"], scores[f"cvr_clicked/{setting}"]),
        }
        for model, (ctr, cvr) in pairs.items():
            heads = esmm_metrics(*labels, ctr, cvr, *groups)
            out[model][setting] = {
                h: {m: heads[h][m] for m in METRICS if m in heads[h]} for h in HEADS
            }
    return out


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, std, min and max over the seeds of every model / setting / head AUC."""
    out: dict[str, Any] = {}
    for model in ("esmm", "baseline"):
        for setting in SETTINGS:
            for head in HEADS:
                values = [s["metrics"][model][setting][head]["auc"] for s in per_seed]
                out[f"{model} / {setting} / {head}_auc"] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values),
                    "max": max(values),
                }
    return out


def target(table: dict[str, Any], per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's target: ESMM's CTCVR AUC above the baseline's (means, after adaptation),
    with each seed's pair and the spread of the paired differences."""
    esmm = table["esmm / adapted / ctcvr_auc"]["mean"]
    base = table["baseline / adapted / ctcvr_auc"]["mean"]
    pairs = {
        s["seed"]: [s["metrics"][m]["adapted"]["ctcvr"]["auc"] for m in ("esmm", "baseline")]
        for s in per_seed
    }
    diffs = [e - b for e, b in pairs.values()]
    return {
        "rule": "ESMM CTCVR AUC > baseline CTCVR AUC (means over seeds, adapted)",
        "esmm_ctcvr_auc": esmm,
        "baseline_ctcvr_auc": base,
        "ratio": esmm / base,
        "met": esmm > base,
        "per_seed_esmm_baseline": pairs,
        "difference": {
            "mean": statistics.fmean(diffs),
            "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
            "min": min(diffs),
            "max": max(diffs),
        },
        "seeds_esmm_above": sum(d > 0 for d in diffs),
        "seeds": len(diffs),
    }


def main(argv: list[str] | None = None) -> int:
    from trainer.durable import write_json_atomic

    p = argparse.ArgumentParser(
        prog="python -m bench.esmm",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="out/bench/esmm.json", help="JSON result path")
    p.add_argument("--work", default="out/bench/meta_quality", help="where the data are cached")
    p.add_argument("--runs", default="out/bench/esmm", help="where the runs are written")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training/shuffle seeds")
    p.add_argument("--steps", type=int, default=0, help="override train.steps (default: 150)")
    p.add_argument("--max-episodes", type=int, default=0, help="test_cold episodes (0: all)")
    p.add_argument("--generated-rows", type=int, default=400_000, help="rows of generated logs")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    seeds = [int(s) for s in args.seeds.split(",") if s]
    root, data = quality_data.generated(Path(args.work) / "generated", args)
    overrides = dict(data["overrides"])
    if args.steps:
        overrides["train.steps"] = args.steps
    report: dict[str, Any] = {
        "benchmark": "esmm",
        "command": " ".join(["python -m bench.esmm", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "data": data["info"], "overrides": overrides, "runs": RUNS,
        "split": "test_cold", "max_episodes": args.max_episodes, "per_seed": [],
    }  # fmt: skip
    for seed in seeds:
        models, seconds = {}, {}
        for name, own in RUNS.items():
            cfg = _config(root, Path(args.runs) / f"{name}-seed{seed}", seed, {**overrides, **own})
            models[name], seconds[name] = _train(cfg)
            log.info("%s seed %d: trained in %.0f s", name, seed, seconds[name])
        t0 = time.perf_counter()
        meta = cfg.eval_meta()
        scores = score(models, meta, root, "test_cold", args.max_episodes)
        metrics = compare(scores)
        report["per_seed"].append({
            "seed": seed, "train_seconds": seconds, "score_seconds":
            round(time.perf_counter() - t0, 1), "metrics": metrics,
        })  # fmt: skip
        report["table"] = summarise(report["per_seed"])
        report["target"] = target(report["table"], report["per_seed"])
        write_json_atomic(args.out, report)  # after every seed: partial results
        log.info(
            "seed %d adapted: ESMM CTCVR AUC %.4f vs baseline %.4f; CVR AUC (clicked) %.4f vs %.4f",
            seed, metrics["esmm"]["adapted"]["ctcvr"]["auc"],
            metrics["baseline"]["adapted"]["ctcvr"]["auc"],
            metrics["esmm"]["adapted"]["cvr"]["auc"], metrics["baseline"]["adapted"]["cvr"]["auc"],
        )  # fmt: skip
    for key, row in report["table"].items():
        print(f"{key:42s} {row['mean']:.4f} (std {row['std']:.4f})")
    print(json.dumps(report["target"]))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
