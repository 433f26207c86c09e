"""Evaluate a checkpoint or an exported model on any episode folder and split, beside the
baselines (no adaptation, calibration only, fine-tuning with the training setting and tuned on
held-out cold tasks), with ranking (AUC, GAUC, episode GAUC) apart from calibration
(predicted / observed positives, per-task calibration error, ECE), logloss and NE. An ESMM model
is ranked on its CTR head, with the CVR AUC (clicked samples) and CTCVR AUC in two more columns
and every metric of the three heads in the JSON (``heads``).

MODEL is an export's version directory (<models>/<name>/v<N>) or a training checkpoint (a run's
output_dir, its checkpoints directory or a step-XXXXXXXX directory). Every grid cell (steps x lr
x scope) adapts per episode (each on its own support set, as training does) and per task (once
on all the task's support samples, as production does). Prints a table; --out writes the JSON
(atomically). Writes nothing else: no checkpoint, no run directory.

examples:
  metarec evaluate out/train/run --data out/episodes/interval=... --split test_cold
  metarec evaluate out/models/click-dlrm/v3 --data DIR --steps 0,1,5 --lr 0.01,0.1 \\
      --scope head,dense --tune-split valid_cold --out out/eval/v3.json
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

METRICS = (("auc", "AUC"), ("gauc", "GAUC"), ("episode_gauc", "epGAUC"), ("logloss", "logloss"),
           ("ne", "NE"), ("calibration", "pred/obs"), ("task_calibration_error", "taskCalErr"),
           ("ece", "ECE"))  # fmt: skip
ESMM_HEADS = (("cvr", "cvrAUC"), ("ctcvr", "ctcvrAUC"))
"""Extra columns of an ESMM model (the CTR head's are the main ones)."""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an export's version directory or a training checkpoint")
    parser.add_argument("--data", required=True, help="ETL output folder (holds _manifest.json)")
    parser.add_argument("--split", default="test_cold", help="split to evaluate (test_cold)")
    parser.add_argument("--steps", type=_ints, default=(1, 3, 5), help="grid: inner steps (1,3,5)")
    parser.add_argument("--lr", type=_floats, default=(0.03, 0.1, 0.3), help="grid: inner lrs")
    parser.add_argument("--scope", type=_names, default=(), help="grid: head,dense,dense+emb "
                        "(default: the training run's meta.adapt)")  # fmt: skip
    parser.add_argument("--level", type=_names, default=("episode", "task"),
                        help="episode and/or task adaptation (both)")  # fmt: skip
    parser.add_argument("--tune-split", default=None,
                        help="split the tuned row is chosen on (default: valid_cold if present)")  # fmt: skip
    parser.add_argument("--tune-metric", default="auc", help="metric the tuning maximises (auc)")
    parser.add_argument("--prior-strength", type=float, default=None,
                        help="calibration-only baseline: pseudo-samples at the global rate (10)")  # fmt: skip
    parser.add_argument("--batch-episodes", type=int, default=64, help="episodes per batch")
    parser.add_argument("--max-episodes", type=int, default=0, help="first N episodes (0: all)")
    parser.add_argument("--out", default=None, help="write the result as JSON here (atomic)")


def run(args: argparse.Namespace) -> int:
    from trainer.evaluation import Settings, evaluate_model, load_model

    settings = Settings(
        steps=args.steps,
        lrs=args.lr,
        scopes=args.scope,
        levels=args.level,
        tune_split=args.tune_split,
        tune_metric=args.tune_metric,
        batch_episodes=args.batch_episodes,
        max_episodes=args.max_episodes,
        **({} if args.prior_strength is None else {"prior_strength": args.prior_strength}),
    )
    model = load_model(args.model, args.data)
    result = evaluate_model(model, args.data, args.split, settings)
    if args.out:
        from trainer.durable import write_json_atomic

        write_json_atomic(args.out, result)
    sys.stdout.write(format_table(result))
    return 0


def _cell(value: Any, width: int, digits: int = 4) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if isinstance(value, float):
        return f"{'nan' if math.isnan(value) else f'{value:.{digits}f}':>{width}}"
    return f"{value!s:>{width}}"


def format_table(result: dict[str, Any]) -> str:
    """The rows of an evaluation as a text table (what ``metarec evaluate`` prints)."""
    m, d = result["model"], result["data"]
    who = f"{m['name']}/{m['version']}" if m["source"] == "export" else f"step {m['step']}"
    esmm = m.get("task") == "esmm"
    columns = METRICS + (ESMM_HEADS if esmm else ())
    lines = [
        f"{m['source']} {m['path']} ({who}, {m['arch']}{', ESMM: CTR head' if esmm else ''}, "
        f"{m['mode']}) on {d['path']} split {d['split']}: {d['episodes']} episodes, "
        f"{d['tasks']} tasks, {d['query_samples']} query samples",
        f"{'row':<22} {'level':<7} {'steps':>5} {'lr':>7} {'scope':>9} "
        + " ".join(f"{title:>{max(len(title), 7)}}" for _, title in columns),
    ]
    for r in result["rows"]:
        s = r["setting"] if r["setting"] and "steps" in r["setting"] else {}
        lr = _cell(s.get("lr"), 7, 3) if "learned_lr" not in s else f"{'learned':>7}"
        cells = [f"{r['row']:<22}", f"{r['level']:<7}", _cell(s.get("steps"), 5), lr,
                 _cell(s.get("scope"), 9)]  # fmt: skip
        cells += [_cell(r["metrics"][k], max(len(t), 7)) for k, t in METRICS]
        if esmm:
            cells += [_cell(r["heads"][k].get("auc"), max(len(t), 7)) for k, t in ESMM_HEADS]
        lines.append(" ".join(cells))
    if result.get("grid_note"):
        lines.append(f"grid: {result['grid_note']}")
    for level, t in result["tuning"].items():
        if "skipped" in t:
            lines.append(f"tuning ({level}): none, {t['skipped']}")
        else:
            c = t["chosen"]
            lines.append(f"tuning ({level}): on {t['split']} by {t['metric']}: steps {c['steps']} "
                         f"lr {c['lr']} scope {c['scope']} of {len(t['grid'])} cells")  # fmt: skip
    return "\n".join(lines) + "\n"
