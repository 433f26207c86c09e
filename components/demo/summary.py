"""The demo's summary: numbers read back from the artefacts, and the table printed at the end.

Every figure is taken from what the stages wrote, not from what they meant to write: rows and
episodes from the ETL manifest, throughput, communication and cache counters from each run's
``metrics.jsonl``, cold-start AUCs from ``evaluation/cold_start.json`` (the exports' scores) and
each run's ``eval.json``, the gate from the registry's ``CHAMPION`` pointer, scoring from the
scorer's ``*.summary.json``. ``summary.json`` holds the result; :func:`format_summary` prints it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from components.demo.settings import MODES, DemoConfig


def train_records(run_dir: Path) -> list[dict[str, Any]]:
    """The ``kind = "train"`` records of a run's ``metrics.jsonl`` (one per log step)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r for r in map(json.loads, filter(None, lines)) if r.get("kind") == "train"]


def training_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput, communication and cache figures of one run from its train records.

    A record covers the steps since the previous one (``step`` minus the previous ``step``) and
    holds per-step means, so sums weight each record by its steps. Throughput leaves out the first
    record (start-up: thread pools, first allocations) when there are several.
    """
    out: dict[str, Any] = {"steps": records[-1]["step"] if records else 0}
    if not records:
        return out
    prev, spans = 0, []
    for r in records:
        spans.append(r["step"] - prev)
        prev = r["step"]
    steady = list(zip(records, spans, strict=True))[1:] or list(zip(records, spans, strict=True))
    seconds = sum(n / r["steps_per_s"] for r, n in steady if r.get("steps_per_s"))
    samples = sum(r["samples_per_s"] * n / r["steps_per_s"] for r, n in steady
                  if r.get("steps_per_s"))  # fmt: skip
    out["samples_per_s"] = samples / seconds if seconds else None
    out["steps_per_s"] = sum(n for _, n in steady) / seconds if seconds else None
    total_steps = sum(spans)
    out["comm_bytes_per_step"] = sum(r["comm.bytes"] * n for r, n in zip(records, spans,
                                     strict=True)) / total_steps  # fmt: skip
    out["comm_bytes_per_sample"] = records[-1].get("comm.bytes_per_sample")
    collectives = sorted({k.split(".")[1] for r in records for k in r
                          if k.startswith("comm.") and k.endswith(".bytes") and k.count(".") == 2})  # fmt: skip
    out["comm_bytes_per_step_by_collective"] = {
        c: sum(r.get(f"comm.{c}.bytes", 0.0) * n for r, n in zip(records, spans, strict=True))
        / total_steps
        for c in collectives
    }
    if "cache.lookups" in records[0]:
        lookups = sum(r["cache.lookups"] * n for r, n in zip(records, spans, strict=True))
        hits = sum(r["cache.hits"] * n for r, n in zip(records, spans, strict=True))
        out["cache_hit_rate"] = hits / lookups if lookups else None
        out["cache_hit_rate_last"] = records[-1]["cache.hit_rate"]
        out["cache_h2d_bytes_per_step"] = sum(r["cache.h2d_bytes"] * n for r, n in
                                              zip(records, spans, strict=True)) / total_steps  # fmt: skip
    return out


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def build_summary(
    config: DemoConfig, results: dict[str, Any], seconds: dict[str, float], skipped: list[str]
) -> dict[str, Any]:
    """``summary.json`` from the stage results and the artefacts (module docstring)."""
    from components.demo.evaluation import summarise_per_task
    from trainer.data.contract import load_manifest

    p = config.paths()
    etl = results["etl"]
    manifest = load_manifest(etl["output"])
    acc = manifest.accounting
    data = {
        "rows_generated": results["generate"]["rows_written"],
        "rows_read": acc["rows_read"], "rows_kept": acc["rows_kept"],
        "rows_quarantined": acc["rows_quarantined"], "quarantine_reasons": acc["per_reason"],
        "splits": {s: {k: manifest.splits[s][k] for k in ("episodes", "tasks", "samples")}
                   for s in manifest.splits},
        "k_support": manifest.k_support, "q_query": manifest.q_query,
        "task_key": manifest.task_key, "interval": manifest.interval["id"],
        "validation": {k: {"success": v["success"], "evaluated": v["evaluated"],
                           "failed": v["failed"], "report": v["report"]}
                       for k, v in results["validate"].items()},
        "manifest_validation": (manifest.validation or {}).get("success"),
    }  # fmt: skip
    cold = json.loads((p["evaluation"] / "cold_start.json").read_text())
    training, cold_start = {}, {}
    for mode in MODES:
        run = config.run_dir(mode)
        training[mode] = {**training_figures(train_records(run)),
                          "wall_s": results[f"train-{mode}"]["seconds"],
                          "nproc": results[f"train-{mode}"]["nproc"],
                          "meta_mode": results[f"train-{mode}"]["mode"]}  # fmt: skip
        trained = json.loads((run / "eval.json").read_text())["splits"]["test_cold"]
        m = cold["models"][mode]
        cold_start[mode] = {
            "version": m["version"], "episodes": m["episodes"], "query_samples": m["query_samples"],
            "before": {k: _finite(m["before"][k]) for k in ("auc", "gauc", "logloss")},
            "after": {k: _finite(m["after"][k]) for k in ("auc", "gauc", "logloss")},
            "trainer_eval_auc": {w: _finite(trained.get(w, {}).get("auc"))
                                 for w in ("before", "after")},
            "parity_abs_diff": m["parity"],
        }  # fmt: skip
    gate, score = results["gate"], results["score"]
    adapted, unadapted = score["adapted"], score["unadapted"]
    return {
        "config": config.describe(),
        "data": data,
        "training": training,
        "cold_start": {
            **cold_start,
            "tasks": cold["tasks"],
            "per_task": summarise_per_task(cold["per_task"]),
        },
        "gate": {
            "metric": "test_cold.after.auc",
            "name": gate["name"],
            "champion": gate["champion"],
            "champion_run": gate["champion_run"],
            "decisions": gate["decisions"],
            "stack": gate["stack"],
        },
        "scoring": {
            "model": score["model"],
            "version": score["version"],
            "cold_tasks": score["tasks"],
            "support_lines": score["lines"]["support"],
            "event_lines": score["lines"]["events"],
            "rows_read": adapted["rows_read"],
            "rows_scored": adapted["rows_scored"],
            "rows_rejected": adapted["rows_rejected"],
            "reasons": adapted["reasons"],
            "rows_adapted": adapted["rows_adapted"],
            "tasks_adapted": adapted["tasks_adapted"],
            "auc_adapted": _finite((adapted["metrics"] or {}).get("auc")),
            "auc_unadapted": _finite((unadapted["metrics"] or {}).get("auc")),
            "rows_per_second": adapted["rows_per_second"],
        },
        "outputs": {
            "raw": str(p["raw"]),
            "episodes": str(p["episodes"] / Path(etl["output"]).name),
            "quarantine": str(p["episodes"] / Path(etl["output"]).name / "_quarantine"),
            "validation": [results["validate"][k]["report"] for k in ("raw", "episodes")],
            **{f"run_{m}": str(config.run_dir(m)) for m in MODES},
            "checkpoints": str(config.run_dir("meta") / "checkpoints"),
            "models": str(p["models"] / gate["name"]),
            "champion": gate["champion_path"],
            "cold_start": str(p["evaluation"] / "cold_start.json"),
            "predictions": adapted["output"],
            "rejected": adapted["rejected_output"],
            "summary": str(p["summary"]),
            "report": str(p["report"]),
        },
        "delivery": results.get("delivery"),
        "seconds": seconds,
        "skipped": skipped,
    }


def _num(x: Any, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a plain-text table for the terminal."""
    d, t, c, g, sc, o = (s[k] for k in ("data", "training", "cold_start", "gate", "scoring",
                                        "outputs"))  # fmt: skip
    split = ", ".join(f"{k} {v['episodes']:,} ({v['tasks']:,} tasks)" for k, v in
                      sorted(d["splits"].items()))  # fmt: skip
    reasons = sorted(d["quarantine_reasons"].items(), key=lambda kv: -kv[1])
    lines = [
        "", "=" * 100, "metarec demo: summary", "=" * 100,
        f"data       {d['rows_read']:,} rows read = {d['rows_kept']:,} kept + "
        f"{d['rows_quarantined']:,} quarantined (top: "
        + ", ".join(f"{r} {n}" for r, n in reasons[:4]) + ")",
        f"           episodes of K={d['k_support']} + Q={d['q_query']} by {d['task_key']}: {split}",
        "           validation (great-expectations): "
        + ", ".join(f"{k} {'PASSED' if v['success'] else 'FAILED'} ({v['evaluated']} checks)"
                    for k, v in sorted(d["validation"].items())),
        "", f"cold start ({c['tasks']['scored']} test_cold tasks, never trained on), query AUC:",
        f"  {'model':<22}{'no adaptation':>15}{'adapted':>12}{'lift':>10}"
        f"{'median task AUC (adapted)':>30}",
    ]  # fmt: skip
    for mode in ("meta", "plain"):
        m = c[mode]
        b, a = m["before"]["auc"], m["after"]["auc"]
        med = c["per_task"].get(f"{mode}.after", {}).get("median")
        label = f"{mode} ({t[mode]['meta_mode']}, {m['version']})"
        lift = None if a is None or b is None else a - b
        lines.append(f"  {label:<22}{_num(b):>15}{_num(a):>12}{_num(lift, '+.4f'):>10}"
                     f"{_num(med):>30}")  # fmt: skip
    lines += ["", "training   (2 CPU ranks, gloo; embedding rows sharded, dense layers replicated)"]
    for mode in ("meta", "plain"):
        r = t[mode]
        cache = ("" if r.get("cache_hit_rate") is None else
                 f", MixCache hit rate {r['cache_hit_rate']:.1%} (last {r['cache_hit_rate_last']:.1%})")  # fmt: skip
        lines.append(
            f"  {mode:<6} {r['steps']} steps, {_num(r.get('samples_per_s'), ',.0f')} samples/s, "
            f"{_num(r['comm_bytes_per_step'] / 1e3, ',.1f')} kB/step "
            f"({_num(r['comm_bytes_per_sample'], ',.0f')} B/sample){cache}, {r['wall_s']:.0f} s"
        )
    decisions = "; ".join(f"{x['run']} {x['version']}: {x['verdict']}"
                          for x in g["decisions"])  # fmt: skip
    lines += [
        "",
        f"gate       {g['metric']}: {decisions} -> champion {g['name']}/{g['champion']} "
        f"({g['champion_run']} run)",
        f"scoring    {sc['version']} scored {sc['rows_scored']:,} of {sc['rows_read']:,} raw events "
        f"of {sc['cold_tasks']} cold campaigns ({sc['rows_rejected']} rejected), "
        f"{sc['rows_adapted']:,} after adapting to {sc['tasks_adapted']} campaigns' support "
        f"events: AUC {_num(sc['auc_unadapted'])} unadapted -> {_num(sc['auc_adapted'])} adapted",
    ]  # fmt: skip
    if s.get("delivery"):
        dv = s["delivery"]
        lines.append(
            f"airflow    {dv['dag']} DAG, {dv['interval']}: {dv['rows_read']:,} rows, episodes "
            + ", ".join(f"{k} {v}" for k, v in sorted(dv["episodes"].items()))
            + f"; gate {dv['verdict']} ({dv['gate_metric']} {_num(dv['challenger_value'])}) -> "
            f"champion {dv['champion']}; records {dv['records']}"
        )
    lines += ["", "outputs"]
    for key in ("raw", "episodes", "quarantine", "run_meta", "run_plain", "checkpoints", "models",
                "champion", "predictions", "summary", "report"):  # fmt: skip
        lines.append(f"  {key:<12} {o[key]}")
    ran = {k: v for k, v in s["seconds"].items() if k not in ("total", "stages")}
    skipped = s["skipped"]
    lines += [
        "",
        f"time       {s['seconds']['total']:.0f} s for this run; stages: "
        + ", ".join(f"{k} {v:.0f}s" + ("*" if k in skipped else "") for k, v in ran.items())
        + (" (* up to date, skipped: the time of its last run)" if skipped else ""),
        f"next       open {o['report']}; `metarec score --model {o['models']} --input <events>` "
        "scores new traffic; `metarec promote --models "
        f"{Path(o['models']).parent} --name {g['name']} --status` shows the champion and history",
        "=" * 100,
    ]  # fmt: skip
    return "\n".join(lines) + "\n"
