"""The whole delivery of one interval, step after step, and its Markdown report.

    outcome = deliver_interval(cfg, Interval.parse("2026-11-01T00/1h"))
    outcome["promote"]["champion"]

The Airflow DAG and the KFP pipeline call the same steps one task at a time; this runs them in
one process (``python -m components.steps deliver``, a backfill loop).
"""

from __future__ import annotations

import logging
from typing import Any

from components.steps.config import DeliveryConfig
from components.steps.layout import Interval, RunLayout

log = logging.getLogger(__name__)


def deliver_interval(
    cfg: DeliveryConfig, interval: Interval, spark=None, *, force: bool = False
) -> dict[str, Any]:
    """Validate raw -> ETL -> validate episodes -> train -> export -> evaluate -> gate -> promote.

    Returns:
        Each step's result (``to_dict()``), keyed by step name, plus ``report`` (its path).

    Raises:
        ValueError: the raw partitions are not all there (``check_raw``); a validation failed
            (``ValidationFailed``); or any step's own error.
    """
    from components.steps import data, delivery, training

    status = data.check_raw(cfg, interval)
    if not status.ready:
        raise ValueError(f"{interval.id}: raw data not ready: {status.reason}")
    out: dict[str, Any] = {"interval": interval.to_dict()}
    out["raw_validation"] = data.validate_raw_step(cfg, interval, spark, force=force).to_dict()
    etl = data.etl_step(cfg, interval, spark, force=force)
    out["etl"] = etl.to_dict()
    out["validate_episodes"] = data.validate_episodes_step(cfg, interval, force=force).to_dict()
    train = training.train_step(cfg, interval, etl, force=force)
    out["train"] = train.to_dict()
    exported = delivery.export_step(cfg, interval, train, etl)
    out["export"] = exported.to_dict()
    ev = delivery.evaluate_step(cfg, interval, exported, etl, force=force)
    out["evaluate"] = ev.to_dict()
    gate = delivery.gate_step(cfg, interval, ev, force=force)
    out["gate"] = gate.to_dict()
    out["promote"] = delivery.promote_step(cfg, interval, gate).to_dict()
    out["report"] = write_report(cfg, interval, out)
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_report(interval: Interval, results: dict[str, Any]) -> str:
    """A Markdown summary of an interval's delivery from the steps' results (missing ones are
    left out, so a partial run renders too)."""
    lines = [f"# metarec delivery: {interval.id}", ""]
    if etl := results.get("etl"):
        eps = ", ".join(f"{k} {v}" for k, v in etl["episodes"].items())
        lines += [
            "## Data",
            "",
            f"- episodes: `{etl['episodes_dir']}` (content hash `{etl['content_hash'][:12]}`)",
            f"- rows read {etl['rows_read']}, kept {etl['rows_kept']}, quarantined "
            f"{etl['rows_quarantined']}; episodes: {eps}",
        ]
    for key in ("raw_validation", "validate_episodes"):
        if v := results.get(key):
            verdict = "passed" if v["success"] else "FAILED"
            lines.append(
                f"- {v['kind']} validation {verdict} ({v['statistics']}); report `{v['report']}`"
            )
    if t := results.get("train"):
        lines += [
            "",
            "## Training",
            "",
            f"- run `{t['run_dir']}`, {t['steps']} steps on {t['backend']}",
            f"- warm start: {t['warm_start']['reason']}",
        ]
        for split, m in t.get("evaluation", {}).items():
            if isinstance(m, dict) and "after" in m:
                lines.append(
                    f"- {split}: AUC {_fmt(m['before'].get('auc'))} -> "
                    f"{_fmt(m['after'].get('auc'))} after adaptation"
                )
    if ev := results.get("evaluate"):
        lines += [
            "",
            "## Gate",
            "",
            "| model | role | " + ev["metric"] + " |",
            "|---|---|---|",
            f"| {ev['challenger']} | challenger | {_fmt(ev['challenger_value'])} |",
        ]
        if ev.get("champion"):
            lines.append(f"| {ev['champion']} | champion | {_fmt(ev['champion_value'])} |")
    if g := results.get("gate"):
        lines += ["", f"- verdict **{g['verdict']}**: {g['reason']}"]
    if p := results.get("promote"):
        action = "promoted" if p["promoted"] else "not promoted"
        lines += [f"- {action}; champion now `{p['champion']}` ({p['reason']})"]
    return "\n".join(lines) + "\n"


def write_report(cfg: DeliveryConfig, interval: Interval, results: dict[str, Any]) -> str:
    """Write ``intervals/<id>/report.md``; returns its path."""
    path = RunLayout.of(cfg.run_root).records(interval) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(interval, results))
    return str(path)


RECORDED_STEPS = ("raw_validation", "etl", "train", "evaluate", "gate", "promote")


def recorded_results(cfg: DeliveryConfig, interval: Interval) -> dict[str, Any]:
    """The interval's step results as recorded (a step that did not run is absent); the episode
    validation comes from the manifest's ``validation`` entry."""
    import json

    from components.steps.layout import read_record
    from trainer.data.contract import MANIFEST_NAME

    layout = RunLayout.of(cfg.run_root)
    out = {s: r for s in RECORDED_STEPS if (r := read_record(layout, interval, s)) is not None}
    manifest = layout.episodes(interval) / MANIFEST_NAME
    if manifest.is_file() and (v := json.loads(manifest.read_text()).get("validation")):
        out["validate_episodes"] = {
            "kind": "episodes",
            "success": v["success"],
            "statistics": v.get("statistics", {}),
            "report": str(layout.episodes(interval) / v["report"]),
        }
    return out
