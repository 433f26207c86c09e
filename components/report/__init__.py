"""The demo's HTML report: one self-contained file (plots embedded as base64 PNG, no scripts,
no network), written from the demo summary and the artefacts it names.

    from components.report import write_report
    write_report(summary, "out/demo/report.html")

Sections: the headline figures; data (accounting, splits, quarantine plot); training curves;
cold-start AUC before/after adaptation and the per-task AUC distribution; communication bytes;
MixCache hit rate; gate and serving; where the outputs are and what to run next. The figures are
drawn by :mod:`components.report.plots`.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
color:#222;line-height:1.45;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f5f5f5}td.l,th.l{text-align:left}code{background:#f5f5f5;
padding:0 .2em}img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:.92em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _f(value: Any, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></figure>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(
        f'<th class="{"l" if i == 0 else ""}">{_e(h)}</th>' for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i == 0 else ""}">{_e(c)}</td>'
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def train_records(run_dir: Path) -> list[dict[str, Any]]:
    """The ``kind = "train"`` records of a run's ``metrics.jsonl`` (one per log step)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r for r in map(json.loads, filter(None, lines)) if r.get("kind") == "train"]


def reading(cold: dict[str, Any]) -> str:
    """One sentence on what the cold-start numbers say (they decide it, not the wording)."""
    m, p = cold["meta"], cold["plain"]
    if None in (m["before"]["auc"], m["after"]["auc"], p["before"]["auc"], p["after"]["auc"]):
        return "Some AUCs are undefined (a split with one class only): too little data."
    lift_m, lift_p = m["after"]["auc"] - m["before"]["auc"], p["after"]["auc"] - p["before"]["auc"]
    best = "meta" if m["after"]["auc"] > p["after"]["auc"] else "plain"
    return (
        f"Adapting to each task's support set changes the AUC by {lift_m:+.4f} for the meta "
        f"model and {lift_p:+.4f} for the plain one (plain + fine-tuning, the usual baseline); "
        f"after adaptation the {best} model ranks best (meta {m['after']['auc']:.4f}, plain "
        f"{p['after']['auc']:.4f}). On these generated logs most of the lift is each campaign's "
        "base rate; see bench/meta_quality.py for where meta learning wins (support sets that "
        "carry more than the base rate)."
    )


def comparison_section(summary: dict[str, Any]) -> list[str]:
    """Meta vs plain beside the baselines on ranking and calibration, and which model to ship
    (the gate's rule and its guards); nothing where the summary has no comparison."""
    c, rec = summary.get("comparison"), summary.get("recommendation")
    if not c or not rec:
        return []
    keys = ("auc", "gauc", "episode_gauc", "logloss", "ne", "calibration", "ece")
    rows = [[f"{r['model']}: {r['row']}", *(_f(r[k]) for k in keys)] for r in c["rows"]]
    guards = [[g["name"], g["metric"], _f(g["challenger"]), _f(g["champion"]), g["tolerance"],
               {True: "passed", False: "FAILED", None: "not checked"}[g["passed"]], g["note"]]
              for g in rec["guards"]]  # fmt: skip
    tuned = c["tuning"].get("plain", {})
    held_out = tuned.get("skipped", "cold tasks held out from training and from the test split")
    return [
        "<h2>Which model to ship: ranking and calibration against the baselines</h2>",
        f"<p>Both exports on <code>{_e(c['split'])}</code> with <code>metarec evaluate</code>: "
        "without adaptation, with the calibration-only baseline (each task's logit shifted by "
        "its shrunk support click rate: no gradient step), adapted with the training setting, "
        "and fine-tuned with the grid cell tuned on "
        f"<code>{_e(tuned.get('split') or 'n/a')}</code> ({_e(held_out)}). Pooled AUC mixes "
        "ranking with "
        "per-task base rates; GAUC and episode GAUC rank within a task; pred/obs and ECE are "
        "calibration.</p>",
        _table(["model: row", "AUC", "GAUC", "epGAUC", "logloss", "NE", "pred/obs", "ECE"],
               rows),
        f"<p><b>Ship {_e(rec['ship'])}.</b> The gate's rule, with the meta model as the "
        f"challenger and the plain one as the model to beat, on <code>{_e(rec['metric'])}</code>: "
        f"{_e(rec['verdict'])} ({_e(rec['reason'])}). The calibration-only baseline reaches AUC "
        f"{_f(rec['calibration_only_auc'])}; the shipped model adds "
        f"{_f(rec['auc_over_calibration_only'], '+.4f')} over it.</p>",
        _table(["guard", "metric", "meta", "plain", "tolerance", "result", "note"], guards),
    ]  # fmt: skip


def render_report(summary: dict[str, Any]) -> str:
    """The report's HTML text (see the module docstring)."""
    from components.report import plots

    d, t, c, g, sc, o = (summary[k] for k in ("data", "training", "cold_start", "gate",
                                              "scoring", "outputs"))  # fmt: skip
    runs = {m: train_records(Path(o[f"run_{m}"])) for m in ("meta", "plain")}
    per_task = json.loads(Path(o["cold_start"]).read_text())["per_task"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>metarec demo report"
             f"</title><style>{STYLE}</style></head><body>",
             "<h1>metarec demo report</h1>",
             f"<p class='note'>Interval {_e(d['interval'])}; demo settings "
             f"<code>{_e(json.dumps(summary['config']))}</code>; "
             f"this run took {summary['seconds']['total']:.0f} s"
             + (f" (up to date, step records reused: {_e(', '.join(summary['reused']))})"
                if summary["reused"] else "") + ".</p>"]  # fmt: skip

    head_rows = [[f"{m} ({t[m]['meta_mode']}, {c[m]['version']})", _f(c[m]["before"]["auc"]),
                  _f(c[m]["after"]["auc"]), _f(c["per_task"].get(f"{m}.after", {}).get("median")),
                  _f(t[m].get("samples_per_s"), ",.0f"), _f(t[m]["comm_bytes_per_step"] / 1e3, ",.1f"),
                  _f(t[m].get("cache_hit_rate"), ".1%")] for m in ("meta", "plain")]  # fmt: skip
    parts += ["<h2>Headline</h2>",
              _table(["model", "cold AUC, no adaptation", "cold AUC, adapted",
                      "median task AUC, adapted", "samples/s", "kB/step", "cache hit rate"],
                     head_rows),
              f"<p>Gate on <code>{_e(g['metric'])}</code>: {_e(g['verdict'])}, champion "
              f"<b>{_e(g['name'])}/{_e(g['champion'])}</b>. Scoring: "
              f"{sc['rows_scored']:,} raw events of {sc['cold_tasks']} cold campaigns, AUC "
              f"{_f(sc['auc_unadapted'])} unadapted &rarr; {_f(sc['auc_adapted'])} adapted to "
              f"each campaign's support events.</p>"]  # fmt: skip

    splits = [[s, v["episodes"], v["tasks"], v["samples"]] for s, v in sorted(d["splits"].items())]
    parts += ["<h2>Data</h2>",
              f"<p>{d['rows_generated']:,} raw rows generated; the Spark ETL read "
              f"{d['rows_read']:,} = {d['rows_kept']:,} kept in episodes + "
              f"{d['rows_quarantined']:,} quarantined with a reason. Episodes of "
              f"K={d['k_support']} support + Q={d['q_query']} query samples per "
              f"<code>{_e(d['task_key'])}</code>; test_cold tasks never occur in training. "
              "Validation (great-expectations): "
              + ", ".join(f"{k} {'passed' if v['success'] else 'FAILED'} ({v['evaluated']} "
                          f"checks, report <code>{_e(v['report'])}</code>)"
                          for k, v in sorted(d["validation"].items())) + ".</p>",
              _table(["split", "episodes", "tasks", "samples"], splits),
              _img(plots.quarantine(d["quarantine_reasons"], d["rows_kept"]), "quarantine")]  # fmt: skip

    parts += ["<h2>Training curves</h2>",
              f"<p>Both runs: {t['meta']['nproc']} ranks (torchrun, gloo on CPU), embedding rows "
              "sharded over AlltoAll, dense layers replicated over AllReduce, same model, data, "
              "steps and seed; only <code>meta.mode</code> differs.</p>",
              _img(plots.training_curves(runs), "training curves")]  # fmt: skip

    auc_rows = [[f"{m} {w}", _f(c[m][w]["auc"]), _f(c[m][w]["gauc"]), _f(c[m][w]["logloss"]),
                 _f(c[m]["trainer_eval_auc"][w]), _f(c[m]["parity_abs_diff"][w], ".2e")]
                for m in ("meta", "plain") for w in ("before", "after")]  # fmt: skip
    task_rows = [[k, v["tasks"], _f(v["q1"]), _f(v["median"]), _f(v["q3"])]
                 for k, v in c["per_task"].items()]  # fmt: skip
    parts += ["<h2>Cold-start AUC before / after adaptation</h2>",
              f"<p>{c['tasks']['scored']} test_cold tasks. Scores of the exported models; the "
              "trainer's own evaluation is shown beside them (parity: absolute difference).</p>",
              f"<p>{_e(reading(c))}</p>",
              _img(plots.auc_before_after(c), "AUC before and after adaptation"),
              _table(["model", "AUC", "GAUC", "logloss", "trainer eval AUC", "parity"], auc_rows),
              "<h2>Per-task AUC distribution</h2>",
              _img(plots.per_task_auc(per_task), "per-task AUC distribution"),
              _table(["series", "tasks", "q1", "median", "q3"], task_rows)]  # fmt: skip

    comm_rows = [[m, _f(t[m]["comm_bytes_per_step"], ",.0f"),
                  _f(t[m]["comm_bytes_per_sample"], ",.1f"),
                  ", ".join(f"{k} {v:,.0f}" for k, v in
                            t[m]["comm_bytes_per_step_by_collective"].items())]
                 for m in ("meta", "plain")]  # fmt: skip
    parts += ["<h2>Communication</h2>",
              "<p>Per step, each rank sends the ids it needs to their owners and gets the rows "
              "back (AlltoAll, after de-duplication), sends the row gradients to the owners "
              "(AlltoAll) and all-reduces the dense gradients. The MAML inner loop adds no "
              "communication, so the meta run moves the same bytes as the plain one when both "
              "read the same episodes.</p>",
              _img(plots.communication(runs, {m: t[m]["comm_bytes_per_step_by_collective"]
                                              for m in ("meta", "plain")}), "communication bytes"),
              _table(["run", "bytes/step", "bytes/sample", "by collective (bytes/step)"],
                     comm_rows)]  # fmt: skip

    cache_rows = [[m, _f(t[m].get("cache_hit_rate"), ".2%"), _f(t[m].get("cache_hit_rate_last"), ".2%"),
                   _f(t[m].get("cache_h2d_bytes_per_step"), ",.0f")] for m in ("meta", "plain")]  # fmt: skip
    parts += ["<h2>MixCache</h2>",
              "<p>Each rank's rows live in host memory; a device cache (LRU) holds the hot ones and "
              "the next step's misses are prefetched during the current step.</p>",
              _img(plots.cache_hit_rate(runs), "cache hit rate"),
              _table(["run", "hit rate", "last log step", "host-to-device bytes/step"],
                     cache_rows)]  # fmt: skip

    parts += comparison_section(summary)

    decision = [[f"{g['name']}/{g['challenger']} (meta)", _f(g["challenger_value"]),
                 g["champion_before"] or "none", _f(g["champion_value"]), g["verdict"],
                 "yes" if g["promoted"] else "no", g["reason"]]]  # fmt: skip
    parts += ["<h2>Gate, promotion and serving</h2>",
              "<p>The delivery steps of the <code>continuous_delivery</code> DAG: the meta "
              "model's export (the challenger) and the current champion are evaluated on this "
              f"interval's episodes; the gate compares them on <code>{_e(g['metric'])}</code> "
              "and the promotion moves the registry's CHAMPION pointer. Step records: "
              f"<code>{_e(o['records'])}</code>.</p>",
              _table(["challenger", "value", "champion", "value", "verdict", "promoted",
                      "reason"], decision),
              f"<p>Champion stack: {_e(' → '.join(g['stack']))}. The champion scored "
              f"{sc['rows_read']:,} raw events ({sc['rows_rejected']} rejected: "
              f"{_e(', '.join(f'{k} {v}' for k, v in sc['reasons'].items()) or 'none')}), {sc['rows_adapted']:,} of them after adapting to "
              f"{sc['tasks_adapted']} campaigns' newest support events.</p>"]  # fmt: skip

    out_rows = [[k, v if isinstance(v, str) else ", ".join(v)] for k, v in o.items()]
    parts += ["<h2>Where the outputs are</h2>", _table(["output", "path"], out_rows),
              "<h2>Next</h2><ul>",
              f"<li><code>metarec score --model {_e(o['models'])} --input &lt;events&gt; "
              "--adapt-on &lt;support events&gt; --out preds.parquet</code>: score new traffic "
              "with the champion</li>",
              f"<li><code>metarec promote --models {_e(Path(o['models']).parent)} --name "
              f"{_e(g['name'])} --status</code>; <code>metarec rollback ...</code></li>",
              f"<li><code>metarec train --help</code>, <code>{_e(o['run_meta'])}/config.json"
              "</code>: the training config; <code>metarec etl --help</code>: the ETL</li>",
              "</ul></body></html>"]  # fmt: skip
    return "\n".join(parts) + "\n"


def write_report(summary: dict[str, Any], path: str | Path) -> Path:
    """Render the report and write it atomically to ``path``."""
    from trainer.durable import write_atomic

    target = Path(path)
    write_atomic(target, render_report(summary))
    return target
