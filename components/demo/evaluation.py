"""Cold-start evaluation of the two exports: per-task AUC on ``test_cold``, before and after
adapting to each episode's support set.

The scores come from the exported models (:func:`trainer.exported.evaluation.score_episodes`, the
trainer's evaluation loop on the export), so the aggregate AUCs here must equal the trainer's own
``eval.json``; the demo records the difference as a parity check. Per task, the AUC is over all
query samples of the task's episodes; tasks whose query samples hold one class only have no AUC
and are counted apart.

Written: ``<out>/evaluation/cold_start.json``::

    {"split": "test_cold", "models": {"meta": {"version": "v2", "episodes": 120,
      "query_samples": 3400, "before": {"auc": ...}, "after": {...}, "parity": {...}}, ...},
     "per_task": {"task_id": [...], "samples": [...], "meta.before": [...], "meta.after": [...],
                  "plain.before": [...], "plain.after": [...]},
     "tasks": {"scored": 96, "with_auc": 80}}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

SPLIT = "test_cold"


def per_task_auc(labels: np.ndarray, logits: np.ndarray, tasks: np.ndarray) -> dict[int, float]:
    """AUC of every task's samples (NaN for a task with one class only)."""
    from trainer.metrics import auc

    order = np.argsort(tasks, kind="stable")
    t, y, s = tasks[order], labels[order], logits[order]
    keys, starts = np.unique(t, return_index=True)
    bounds = [*starts[1:], len(t)]
    return {int(k): auc(y[a:b], s[a:b]) for k, a, b in zip(keys, starts, bounds, strict=True)}


def evaluate_exports(
    versions: dict[str, Path], episodes: Path, run_evals: dict[str, dict[str, Any]], out: Path
) -> dict[str, Any]:
    """Score ``test_cold`` with each export and write ``cold_start.json`` (module docstring).

    Args:
        versions: ``{"meta": <export dir>, "plain": <export dir>}``.
        episodes: the ETL output directory (one interval).
        run_evals: each run's ``eval.json`` ``splits`` (for the parity check).
        out: the file to write.

    Returns:
        What ``cold_start.json`` holds but the per-task table (NaN as None).
    """
    from trainer.durable import jsonable, write_json_atomic
    from trainer.exported.evaluation import score_episodes
    from trainer.exported.model import load_exported
    from trainer.metrics import binary_metrics

    models: dict[str, Any] = {}
    columns: dict[str, dict[int, float]] = {}
    sizes: dict[int, int] = {}
    for mode, path in versions.items():
        model = load_exported(path)
        s = score_episodes(model, str(episodes), SPLIT, batch_episodes=64)
        entry: dict[str, Any] = {"version": path.name, "episodes": s.num_episodes,
                                 "query_samples": len(s.labels)}  # fmt: skip
        for when, logits in (("before", s.before), ("after", s.after)):
            entry[when] = binary_metrics(s.labels, logits, s.task_ids).to_dict()
            columns[f"{mode}.{when}"] = per_task_auc(s.labels, logits, s.task_ids)
        trained = run_evals.get(mode, {}).get(SPLIT, {})
        entry["parity"] = {
            when: _diff(entry[when]["auc"], trained.get(when, {}).get("auc"))
            for when in ("before", "after")
        }
        models[mode] = entry
        ids, counts = np.unique(s.task_ids, return_counts=True)
        sizes.update({int(i): int(c) for i, c in zip(ids, counts, strict=True)})
    tasks = sorted(sizes)
    per_task: dict[str, list[Any]] = {"task_id": tasks, "samples": [sizes[t] for t in tasks]}
    for key, values in columns.items():
        per_task[key] = [_finite(values.get(t, math.nan)) for t in tasks]
    with_auc = sum(all(per_task[k][i] is not None for k in columns) for i in range(len(tasks)))
    result = {
        "split": SPLIT,
        "models": models,
        "tasks": {"scored": len(tasks), "with_auc": with_auc},
    }
    write_json_atomic(out, {**result, "per_task": per_task})
    return jsonable(result)


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _diff(a: float | None, b: float | None) -> float | None:
    """``|a - b|``, or None when either is missing."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return abs(a - b)


def summarise_per_task(per_task: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
    """Median and quartiles of each per-task AUC column, over tasks that have it."""
    out = {}
    for key, values in per_task.items():
        if "." not in key:
            continue
        v = np.array([x for x in values if x is not None], dtype=np.float64)
        if len(v):
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            out[key] = {"tasks": len(v), "q1": float(q1), "median": float(med), "q3": float(q3),
                        "mean": float(v.mean())}  # fmt: skip
    return out


COMPARED = ("no adaptation", "calibration only", "training setting", "tuned")
"""The comparison's rows per model (``tuned``: the grid cell tuned on ``valid_cold``)."""
COMPARED_METRICS = ("auc", "gauc", "episode_gauc", "logloss", "ne", "calibration", "ece")


def compare_models(versions: dict[str, Path], episodes: Path, out: Path) -> dict[str, Any]:
    """Both exports on ``test_cold`` through ``metarec evaluate``'s path
    (:func:`trainer.evaluation.evaluate_model`, the per-episode level the gate's metric uses):
    no adaptation, calibration only, the training setting and fine-tuning tuned on ``valid_cold``,
    on ranking (AUC, GAUC, episode GAUC) and calibration (pred/obs, ECE), logloss and NE.

    Writes ``out`` (``evaluation/comparison.json``: these rows and each full evaluation) and
    returns ``{"split", "tuning": {model: how it was tuned}, "rows": [{"model", "row",
    "setting", <metrics>}]}`` (NaN as None).
    """
    from trainer.durable import jsonable, write_json_atomic
    from trainer.evaluation import Settings, evaluate_model, load_model

    settings = Settings(levels=("episode",))
    evaluations = {mode: evaluate_model(load_model(path, str(episodes)), str(episodes), SPLIT,
                                        settings)
                   for mode, path in versions.items()}  # fmt: skip
    rows = []
    for mode, result in evaluations.items():
        for r in result["rows"]:
            name = "tuned" if r["row"].startswith("tuned on ") else r["row"]
            if name in COMPARED:
                metrics = {k: _finite(r["metrics"][k]) for k in COMPARED_METRICS}
                rows.append({"model": mode, "row": name, "setting": r["setting"], **metrics})
    tuning = {m: e["tuning"].get("episode", {}) for m, e in evaluations.items()}
    result = {"split": SPLIT, "content_hash": next(iter(evaluations.values()))["data"][
        "content_hash"], "tuning": tuning, "rows": rows}  # fmt: skip
    write_json_atomic(out, {**result, "evaluations": evaluations})
    return jsonable(result)


def recommend(comparison: dict[str, Any], policy: Any) -> dict[str, Any]:
    """Which model to ship and why: the gate (:func:`components.promotion.gate.decide`, with
    ``policy``'s metric, tolerance and guards) with the meta model as the challenger and the plain
    one as the model to beat, both as evaluated in ``comparison`` (same episodes). Also how much
    adaptation adds over the calibration-only baseline, the cheapest alternative."""
    from components.promotion.gate import Candidate, decide

    def evaluation(mode: str) -> dict[str, Any]:
        rows = {r["row"]: r for r in comparison["rows"] if r["model"] == mode}
        split = {"before": rows["no adaptation"], "after": rows["training setting"]}
        return {"splits": {comparison["split"]: split}}

    h = comparison["content_hash"]
    d = decide(Candidate("meta", evaluation("meta"), h), Candidate("plain", evaluation("plain"), h),
               policy)  # fmt: skip
    ship = "meta" if d.promote else "plain"
    calib = max(r["auc"] or 0.0 for r in comparison["rows"] if r["row"] == "calibration only")
    shipped = evaluation(ship)["splits"][comparison["split"]]["after"]["auc"]
    return {"ship": ship, "verdict": str(d.verdict), "reason": d.reason, "metric": d.metric,
            "guards": [dict(g) for g in d.guards], "calibration_only_auc": calib,
            "auc_over_calibration_only": None if shipped is None else shipped - calib}  # fmt: skip
