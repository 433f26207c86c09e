"""The demo's summary: numbers read back from the step results and the artefacts, the progress
descriptions of each stage, and the table printed at the end.

Every figure is taken from what the steps wrote, not from what they meant to write: rows and
episodes from the ETL manifest, throughput, communication and cache counters from each run's
``metrics.jsonl``, the gate and the promotion from their step results and the registry's
``CHAMPION`` pointer, cold-start AUCs from ``evaluation/cold_start.json`` (the exports' scores) and
each run's evaluation, scoring from the scorer's summary. ``summary.json`` holds the result;
:func:`format_summary` prints it. Both read plain JSON (the ``to_dict()`` of each step result), so a
recorded set of results renders the same summary again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.demo.settings import CONFIG_FILE, META_MODE, MODES, DemoConfig


def _episodes(episodes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in episodes.items())


DESCRIBE: dict[str, Callable[[Any], str]] = {
    "generate": lambda r: (
        f"{r['rows_written']:,} rows ({r['corrupted_rows']} corrupted) in {r['files']} files"
    ),
    "validation": lambda r: (
        f"{r.kind} suite "
        f"{'PASSED' if r.success else 'FAILED'} ({r.statistics.get('evaluated')} checks); {r.report}"
    ),
    "etl": lambda r: (
        f"{r.rows_read:,} rows read = {r.rows_kept:,} kept + "
        f"{r.rows_quarantined:,} quarantined; episodes {_episodes(r.episodes)} -> {r.episodes_dir}"
    ),
    "train": lambda r: f"{r.steps} steps; {r.warm_start.reason} -> {r.run_dir}",
    "export": lambda r: (
        f"{r.name}/{r.version} ({'new' if r.created else 'exported before'}) -> {r.model_dir}"
    ),
    "evaluate": lambda r: (
        f"{r.metric}: challenger {r.challenger} {_num(r.challenger_value)}, "
        f"champion {r.champion or 'none'} {_num(r.champion_value)}"
    ),
    "gate": lambda r: f"{r.verdict}: {r.reason}",
    "promote": lambda r: f"{'promoted' if r.promoted else 'not promoted'}; champion {r.champion}",
    "cold_start": lambda r: (
        f"test_cold ({r['tasks']['scored']} tasks): "
        + ", ".join(
            f"{m} AUC {_num(v['before']['auc'])} -> {_num(v['after']['auc'])}"
            for m, v in r["models"].items()
        )
    ),
    "comparison": lambda r: (
        f"{r['split']}: "
        + ", ".join(
            f"{x['model']} {x['row']} AUC {_num(x['auc'])} GAUC {_num(x['gauc'])}"
            for x in r["rows"]
            if x["row"] in ("calibration only", "training setting")
        )
    ),
    "score": lambda r: (
        f"{r['adapted']['rows_scored']:,} events of {r['tasks']} cold campaigns "
        f"-> {r['adapted']['output']}"
    ),
    "delivery": lambda r: (
        f"{r['dag']} {r['interval']}: {r['verdict']}, champion {r['champion']} -> {r['records']}"
    ),
}
"""One line per stage for the progress output (each takes the stage's result)."""


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


def _validation(v: dict[str, Any]) -> dict[str, Any]:
    stats = v["statistics"]
    return {"success": v["success"], "evaluated": stats.get("evaluated"),
            "failed": stats.get("failed"), "report": v["report"]}  # fmt: skip


def build_summary(
    config: DemoConfig, results: dict[str, Any], seconds: dict[str, float], reused: list[str]
) -> dict[str, Any]:
    """``summary.json`` from the stage results (JSON, as :func:`run_demo` keeps them) and the
    artefacts they name (module docstring)."""
    from components.demo.evaluation import summarise_per_task
    from components.promotion import registry
    from components.report import train_records
    from components.steps.layout import Interval, RunLayout
    from trainer.data.contract import load_manifest

    p = config.paths()
    interval = Interval(config.start, config.end)
    etl, train, exports = results["etl"], results["train"], results["export"]
    manifest = load_manifest(etl["episodes_dir"])
    acc = manifest.accounting
    data = {
        "rows_generated": results["generate"]["rows_written"],
        "rows_read": acc["rows_read"], "rows_kept": acc["rows_kept"],
        "rows_quarantined": acc["rows_quarantined"], "quarantine_reasons": acc["per_reason"],
        "splits": {s: {k: manifest.splits[s][k] for k in ("episodes", "tasks", "samples")}
                   for s in manifest.splits},
        "k_support": manifest.k_support, "q_query": manifest.q_query,
        "task_key": manifest.task_key, "interval": manifest.interval["id"],
        "interval_range": f"{config.start}/{config.end}",
        "validation": {v["kind"]: _validation(v)
                       for v in (results["raw_validation"], results["validate_episodes"])},
        "manifest_validation": (manifest.validation or {}).get("success"),
    }  # fmt: skip
    cold_file = p["evaluation"] / "cold_start.json"
    cold = results["cold_start"]
    training, cold_start = {}, {}
    for mode in MODES:
        t = train[mode]
        training[mode] = {**training_figures(train_records(Path(t["run_dir"]))),
                          "nproc": config.nproc, "meta_mode": META_MODE[mode],
                          "warm_start": t["warm_start"]["reason"]}  # fmt: skip
        trained = t["evaluation"].get("test_cold", {})
        m = cold["models"][mode]
        cold_start[mode] = {
            "version": exports[mode]["version"], "model": exports[mode]["name"],
            "episodes": m["episodes"], "query_samples": m["query_samples"],
            "before": {k: _finite(m["before"][k]) for k in ("auc", "gauc", "logloss")},
            "after": {k: _finite(m["after"][k]) for k in ("auc", "gauc", "logloss")},
            "trainer_eval_auc": {w: _finite(trained.get(w, {}).get("auc"))
                                 for w in ("before", "after")},
            "parity_abs_diff": m["parity"],
        }  # fmt: skip
    per_task = json.loads(cold_file.read_text())["per_task"]
    gate, promoted, score = results["gate"], results["promote"], results["score"]
    name = exports["meta"]["name"]
    models = Path(exports["meta"]["model_dir"]).parent
    pointer = registry.read_champion(models.parent, name)
    adapted, unadapted = score["adapted"], score["unadapted"]
    episodes = Path(etl["episodes_dir"])
    return {
        "config": config.describe(),
        "data": data,
        "training": training,
        "cold_start": {
            **cold_start,
            "tasks": cold["tasks"],
            "per_task": summarise_per_task(per_task),
        },
        "gate": {
            "metric": gate["metric"],
            "name": name,
            "challenger": gate["challenger"],
            "challenger_value": _finite(gate["challenger_value"]),
            "champion_before": gate["champion"],
            "champion_value": _finite(gate["champion_value"]),
            "verdict": gate["verdict"],
            "reason": gate["reason"],
            "promoted": promoted["promoted"],
            "champion": promoted["champion"],
            "stack": pointer.stack if pointer else [],
        },
        "scoring": {
            "model": score["model"],
            "version": Path(score["model"]).name,
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
            "episodes": str(episodes),
            "quarantine": str(episodes / "_quarantine"),
            "validation": [results[k]["report"] for k in ("raw_validation", "validate_episodes")],
            **{f"run_{m}": train[m]["run_dir"] for m in MODES},
            "checkpoints": str(Path(train["meta"]["run_dir"]) / "checkpoints"),
            "models": str(models),
            "champion": score["model"],
            "records": str(RunLayout.of(config.run_root("meta")).records(interval)),
            "config": str(config.run_root("meta") / CONFIG_FILE),
            "cold_start": str(cold_file),
            "predictions": adapted["output"],
            "rejected": adapted["rejected_output"],
            "logs": str(p["logs"]),
            "summary": str(p["summary"]),
            "report": str(p["report"]),
        },
        "delivery": results.get("delivery"),
        "seconds": seconds,
        "reused": reused,
        **_comparison(config, results),
    }


def _comparison(config: DemoConfig, results: dict[str, Any]) -> dict[str, Any]:
    """``comparison`` (both models beside the baselines) and ``recommendation`` (which model to
    ship: the gate's rule, meta against plain); none where the results have no comparison (a
    demo recorded before it had one)."""
    from components.demo.evaluation import recommend
    from components.promotion.gate import GatePolicy

    comparison = results.get("comparison")
    if not comparison:
        return {}
    policy = GatePolicy(**config.delivery_config("meta")["gate"])  # the demo's own gate
    rows = [{k: v for k, v in r.items() if k != "setting"} for r in comparison["rows"]]
    return {
        "comparison": {"split": comparison["split"], "tuning": comparison["tuning"], "rows": rows},
        "recommendation": recommend(comparison, policy),
    }


def _num(x: Any, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _format_comparison(s: dict[str, Any]) -> list[str]:
    """The comparison table and the recommendation (nothing where the summary has none)."""
    if not s.get("comparison"):
        return []
    c, rec = s["comparison"], s["recommendation"]
    titles = ("AUC", "GAUC", "epGAUC", "logloss", "NE", "pred/obs", "ECE")
    keys = ("auc", "gauc", "episode_gauc", "logloss", "ne", "calibration", "ece")
    lines = ["", f"ranking and calibration on {c['split']} (metarec evaluate; tuned: on "
             f"{c['tuning'].get('plain', {}).get('split', 'n/a')}):",
             f"  {'model':<7}{'row':<18}" + "".join(f"{t:>9}" for t in titles)]  # fmt: skip
    for r in c["rows"]:
        lines.append(f"  {r['model']:<7}{r['row']:<18}" + "".join(f"{_num(r[k]):>9}" for k in keys))
    guards = "; ".join(g["note"] for g in rec["guards"]) or "no guard checked"
    lines += [
        f"ship       {rec['ship']}: the gate's rule with meta as the challenger and plain as the "
        f"model to beat: {rec['verdict']} ({rec['reason']}); guards: {guards}",
        f"           calibration only (no gradient step) reaches AUC "
        f"{_num(rec['calibration_only_auc'])}: the shipped model adds "
        f"{_num(rec['auc_over_calibration_only'], '+.4f')} over it",
    ]  # fmt: skip
    return lines


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
    lines += _format_comparison(s)
    lines += ["", f"training   ({t['meta']['nproc']} CPU ranks, gloo; embedding rows sharded, dense "
              "layers replicated; both from scratch, same data and seed)"]  # fmt: skip
    for mode in ("meta", "plain"):
        r, wall = t[mode], s["seconds"].get(f"train-{mode}")
        cache = ("" if r.get("cache_hit_rate") is None else
                 f", MixCache hit rate {r['cache_hit_rate']:.1%} (last {r['cache_hit_rate_last']:.1%})")  # fmt: skip
        lines.append(
            f"  {mode:<6} {r['steps']} steps, {_num(r.get('samples_per_s'), ',.0f')} samples/s, "
            f"{_num(r['comm_bytes_per_step'] / 1e3, ',.1f')} kB/step "
            f"({_num(r['comm_bytes_per_sample'], ',.0f')} B/sample){cache}"
            + ("" if wall is None or f"train-{mode}" in s["reused"] else f", {wall:.0f} s")
        )
    against = (f"champion {g['champion_before']} ({_num(g['champion_value'])})"
               if g["champion_before"] else "no champion yet")  # fmt: skip
    lines += [
        "",
        f"gate       {g['metric']}: challenger {g['name']}/{g['challenger']} (meta, "
        f"{_num(g['challenger_value'])}) vs {against}: {g['verdict']} -> champion "
        f"{g['name']}/{g['champion']}",
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
    for key in ("raw", "episodes", "quarantine", "run_meta", "run_plain", "models", "champion",
                "records", "config", "predictions", "logs", "summary", "report"):  # fmt: skip
        lines.append(f"  {key:<12} {o[key]}")
    ran = {k: v for k, v in s["seconds"].items() if k != "total"}
    reused = s["reused"]
    lines += [
        "",
        f"time       {s['seconds']['total']:.0f} s for this run; stages: "
        + ", ".join(f"{k} {v:.0f}s" + ("*" if k in reused else "") for k, v in ran.items())
        + (" (* up to date: its step record reused)" if reused else ""),
        f"rerun      python -m components.steps --config {o['config']} deliver --interval "
        f"{d['interval_range']}: the meta model's steps from the command line (reusing records)",
        f"next       open {o['report']}; `metarec score --model {o['models']} --input <events>` "
        "scores new traffic; `metarec promote --models "
        f"{Path(o['models']).parent} --name {g['name']} --status` shows the champion and history",
        "=" * 100,
    ]  # fmt: skip
    return "\n".join(lines) + "\n"
