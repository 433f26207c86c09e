"""The demo flow: generate -> ETL -> validate -> train (meta, plain) -> export -> evaluate ->
gate + promote -> score -> summary and report. Each stage calls the project's own entry points
(no re-implementation); :mod:`components.demo.stages` decides what reruns.

    result = run_demo(DemoConfig.preset("out/demo", quick=False))
    result["summary"]["cold_start"]["meta"]["after"]["auc"]

Stage by stage (outputs under ``--out``):

    generate   components.generate.generate               raw/  (JSONL, dt=/hr=, 0.5 % corrupt)
    etl        components.etl.run_etl (Spark local[2])    episodes/interval=.../ + _quarantine/
    validate   components.validation (GX), fails closed   validation/raw/, <interval>/_validation/
    train-*    metarec train --nproc 2 (torchrun, gloo)   train/meta/, train/plain/
    export     trainer.serving.export_checkpoint          models/<name>/v1 (plain), v2 (meta)
    evaluate   trainer.serving.evaluation.score_episodes  evaluation/cold_start.json
    gate       components.promotion gate + registry       models/<name>/CHAMPION, HISTORY.jsonl
    score      components.score.run.score_events          score/predictions*.parquet
    delivery   airflow dags test continuous_delivery     delivery/ (one hourly interval; not --quick)
    report     components.report                          summary.json, report.html
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from components.demo.settings import MODES, DemoConfig, fingerprint
from components.demo.stages import DemoStopped, StageRunner

log = logging.getLogger("metarec.demo")
STAGES = ("generate", "etl", "validate", "train-meta", "train-plain", "export", "evaluate",
          "gate", "score", "delivery", "report")  # fmt: skip
GATE_METRIC = "test_cold.after.auc"
"""The promotion gate's metric: cold-start AUC after adaptation, on the same episodes."""


def generator_config(config: DemoConfig):
    from components.generate import GeneratorConfig

    return GeneratorConfig(
        out=str(config.paths()["raw"]), rows=config.rows, start=config.start, hours=config.hours,
        seed=config.seed, format="jsonl", corrupt=config.corrupt, num_users=config.users,
        num_campaigns=config.campaigns, num_advertisers=max(10, config.campaigns // 4), ctr=0.1,
        overwrite=True,
    )  # fmt: skip


def etl_config(config: DemoConfig):
    from components.etl import EtlConfig

    p = config.paths()
    return EtlConfig(
        input=str(p["raw"]), output=str(p["episodes"]), start=config.start, end=config.end,
        k_support=config.k, q_query=config.k, min_support=config.min_samples,
        min_query=config.min_samples, num_buckets=4 if config.quick else 8, cold_fraction=0.2,
        shuffle_partitions=4,
    )  # fmt: skip


class _Spark:
    """The demo's one SparkSession, started only when a Spark stage runs."""

    def __init__(self, session=None) -> None:
        self.session, self.owned = session, False

    def get(self):
        if self.session is None:
            from components.etl.session import build_spark

            log.info("  starting Spark local[2] ...")
            self.session = build_spark("metarec-demo", master="local[2]", conf={
                "spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"})  # fmt: skip
            self.owned = True
        return self.session

    def stop(self) -> None:
        if self.owned and self.session is not None:
            self.session.stop()
            self.session = None


def _generate(config: DemoConfig) -> dict[str, Any]:
    from components.generate import generate

    s = generate(generator_config(config))
    return {"rows_written": s.rows_written, "clean_rows": s.clean_rows,
            "expected_reasons": s.expected_reasons, "files": len(s.files), "ctr": s.ctr,
            "corrupted_rows": sum(s.corruption.values())}  # fmt: skip


def _etl(config: DemoConfig, spark: _Spark) -> dict[str, Any]:
    from components.etl import run_etl

    r = run_etl(etl_config(config), spark.get())
    return {"output": str(r.output), "rows_read": r.rows_read, "rows_kept": r.rows_kept,
            "rows_quarantined": r.rows_quarantined, "reasons": r.reasons,
            "episodes": r.episodes, "rows_per_second": round(r.rows_per_second, 1),
            "content_hash": r.manifest.content_hash}  # fmt: skip


def _validate(config: DemoConfig, interval: Path, spark: _Spark) -> dict[str, Any]:
    from components.validation import validate_episodes, validate_raw
    from components.validation.sources import parse_time

    for noisy in ("great_expectations", "py4j"):  # GX logs its internals at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    p = config.paths()
    raw = validate_raw(str(p["raw"]), parse_time(config.start), parse_time(config.end),
                       spark.get(), report_dir=str(p["validation"] / "raw"))  # fmt: skip
    _fail_closed(raw)
    episodes = validate_episodes(str(interval), spark.get())
    _fail_closed(episodes)
    return {
        name: {"success": r.success, **r.statistics, "report": r.paths.get("json", "")}
        for name, r in (("raw", raw), ("episodes", episodes))
    }


def _fail_closed(report) -> None:
    """Stop the demo, with the report, unless every check of ``report`` held."""
    if not report.success:
        where = ", ".join(f"{k}: {v}" for k, v in report.paths.items())
        raise DemoStopped(
            f"validation failed closed: the {report.suite} suite failed, so nothing is trained "
            f"on this data (report {where}).\n{report.to_text()}"
        )


def _export(config: DemoConfig, interval: Path) -> dict[str, Any]:
    from trainer.serving.export import export_checkpoint

    out: dict[str, Any] = {}
    for mode in ("plain", "meta"):  # plain first: it becomes v1, the incumbent champion
        r = export_checkpoint(config.run_dir(mode), config.paths()["models"],
                              manifest=str(interval))  # fmt: skip
        out[mode] = {"path": str(r.path), "name": r.name, "version": r.version, "bytes": r.bytes}
    return out


def _gate(config: DemoConfig, exports: dict[str, Any]) -> dict[str, Any]:
    """Plain export vs no champion (it becomes the incumbent), then meta vs plain on the same
    test_cold episodes; the registry moves the CHAMPION pointer for each promotion."""
    from components.promotion import registry
    from components.promotion.gate import GatePolicy, decide, load_candidate

    root, name = config.paths()["models"], exports["meta"]["name"]
    policy = GatePolicy(metric=GATE_METRIC)
    decisions = []
    champion = None
    for mode in ("plain", "meta"):
        candidate = load_candidate(Path(exports[mode]["path"]))
        decision = decide(candidate, champion, policy)
        decisions.append({**decision.to_dict(), "run": mode, "version": candidate.version})
        log.info("  gate: %s (%s) -> %s: %s", mode, candidate.version, decision.verdict,
                 decision.reason)  # fmt: skip
        if decision.promote:
            registry.promote(root, name, candidate.version, reason=decision.reason,
                             details={"decision": decision.to_dict(), "run": mode})  # fmt: skip
            champion = candidate
    pointer = registry.read_champion(root, name)
    if pointer is None:
        raise DemoStopped(f"the gate promoted no model: {decisions[-1]['reason']}")
    mode = "meta" if pointer.version == exports["meta"]["version"] else "plain"
    return {"name": name, "champion": pointer.version, "champion_run": mode,
            "champion_path": str(root / name / pointer.version), "stack": pointer.stack,
            "decisions": decisions, "history": registry.read_history(root, name)}  # fmt: skip


def _score(config: DemoConfig, interval: Path, gate: dict[str, Any]) -> dict[str, Any]:
    from components.demo.scoring import cold_tasks, score_cold, write_cold_events

    out = config.paths()["score"]
    tasks = cold_tasks(interval)
    events = write_cold_events(config.paths()["raw"], tasks, "campaign_id", out)
    scored = score_cold(Path(gate["champion_path"]), out, "campaign_id")
    return {"model": gate["champion_path"], "version": gate["champion"], **events, **scored}


def run_demo(config: DemoConfig, spark=None, fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) every stage, then write ``summary.json`` and ``report.html``.

    Args:
        config: the run.
        spark: a SparkSession to use (tests pass theirs); default: one local[2] session, started
            only if the ETL or the validation must run.
        fresh: ignore the records of earlier runs (see :mod:`components.demo.stages`).

    Returns:
        ``{"summary": ..., "stages": {stage: result}, "seconds": {stage: s}, "skipped": [...]}``.

    Raises:
        DemoStopped: validation failed (fails closed) or the gate promoted nothing.
        ValueError, FileNotFoundError: bad settings or inputs (the message says what to do).
        RuntimeError: a training job failed (the message holds its log's tail).
    """
    from components.demo import training
    from components.demo.evaluation import evaluate_exports

    t0 = time.perf_counter()
    p = config.paths()
    p["root"].mkdir(parents=True, exist_ok=True)
    runner = StageRunner(p["stages"], len(STAGES) - (not config.airflow), fresh)
    sp = _Spark(spark)
    etl_cfg = etl_config(config)
    interval = p["episodes"] / etl_cfg.interval_id
    try:
        # Fingerprints leave the paths out: the same settings give the same data wherever --out is.
        fp = {"generate": fingerprint(_without(generator_config(config).to_dict(), "out"))}
        runner.run("generate", fp["generate"], [p["raw"]], lambda: _generate(config),
                   lambda r: f"{r['rows_written']:,} rows ({r['corrupted_rows']} corrupted) in "
                             f"{r['files']} files -> {p['raw']}")  # fmt: skip
        fp["etl"] = fingerprint(fp["generate"], _without(etl_cfg.describe(), "input", "output"))
        runner.run("etl", fp["etl"], [p["episodes"]], lambda: _etl(config, sp),
                   lambda r: f"{r['rows_read']:,} rows read = {r['rows_kept']:,} kept + "
                             f"{r['rows_quarantined']:,} quarantined; episodes "
                             + ", ".join(f"{k} {v:,}" for k, v in r["episodes"].items()) + " "
                             f"-> {interval}")  # fmt: skip
        fp["validate"] = fingerprint(fp["etl"], "default thresholds")
        runner.run("validate", fp["validate"], [p["validation"]],
                   lambda: _validate(config, interval, sp),
                   lambda r: "; ".join(f"{k} PASSED ({v['evaluated']} checks)"
                                       for k, v in r.items()))  # fmt: skip
        sp.stop()  # the rest needs no Spark: give its memory back to the trainers
        toml = training.TRAIN_CONFIG.read_text()
        for mode in MODES:
            settings = [o for o in training.overrides(config, mode, interval)
                        if not o.startswith(("data.path=", "train.output_dir="))]  # fmt: skip
            fp[mode] = fingerprint(fp["validate"], toml, settings)
            runner.run(f"train-{mode}", fp[mode], [config.run_dir(mode)],
                       lambda mode=mode: training.train_run(config, mode, interval),
                       lambda r: f"{r['nproc']} ranks, meta.mode={r['mode']} -> "
                                 f"{r['run_dir']}")  # fmt: skip
        fp["export"] = fingerprint(fp["meta"], fp["plain"])
        exports = runner.run("export", fp["export"], [p["models"]],
                             lambda: _export(config, interval),
                             lambda r: ", ".join(f"{m} -> {v['path']}" for m, v in r.items()))  # fmt: skip
        fp["evaluate"] = fingerprint(fp["export"])
        cold_file = p["evaluation"] / "cold_start.json"
        runs = {m: json.loads((config.run_dir(m) / "eval.json").read_text())["splits"]
                for m in MODES}  # fmt: skip
        versions = {m: Path(exports[m]["path"]) for m in MODES}
        runner.run("evaluate", fp["evaluate"], [p["evaluation"]],
                   lambda: _evaluation_result(evaluate_exports(versions, interval, runs, cold_file)),
                   lambda r: _describe_eval(r) + f" -> {cold_file}")  # fmt: skip
        fp["gate"] = fingerprint(fp["export"], GATE_METRIC)
        name_dir = p["models"] / exports["meta"]["name"]
        gate = runner.run("gate", fp["gate"], [name_dir / "CHAMPION", name_dir / "HISTORY.jsonl"],
                          lambda: _gate(config, exports),
                          lambda r: f"champion {r['name']}/{r['champion']} "
                                    f"({r['champion_run']} run)")  # fmt: skip
        fp["score"] = fingerprint(fp["gate"], fp["etl"])
        runner.run("score", fp["score"], [p["score"]], lambda: _score(config, interval, gate),
                   lambda r: f"{r['adapted']['rows_scored']:,} events of {r['tasks']} cold "
                             f"campaigns scored by {r['version']} -> "
                             f"{r['adapted']['output']}")  # fmt: skip
        if config.airflow:
            from components.demo.delivery import delivery_config, run_delivery

            fp["delivery"] = fingerprint(fp["generate"], _without(delivery_config(config),
                                                                  "run_root", "raw_root"))  # fmt: skip
            runner.run("delivery", fp["delivery"], [p["delivery"]], lambda: run_delivery(config),
                       lambda r: f"{r['dag']} {r['interval']}: {r['verdict']}, champion "
                                 f"{r['champion']} -> {r['records']}")  # fmt: skip
    finally:
        sp.stop()
    from components.demo.summary import build_summary
    from components.report import write_report

    runner.index += 1
    log.info("[%d/%d] report ...", runner.index, runner.total)
    seconds = {**runner.seconds, "stages": round(sum(runner.seconds.values()), 2),
               "total": round(time.perf_counter() - t0, 2)}  # fmt: skip
    summary = build_summary(config, runner.results, seconds, runner.skipped)
    p["summary"].write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    write_report(summary, p["report"])
    log.info("[%d/%d] report done: %s, %s", runner.index, runner.total, p["summary"], p["report"])
    return {"summary": summary, "stages": runner.results, "seconds": seconds,
            "skipped": runner.skipped}  # fmt: skip


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def _evaluation_result(result: dict[str, Any]) -> dict[str, Any]:
    """What the stage record keeps (the per-task table stays in ``cold_start.json``)."""
    return {k: v for k, v in result.items() if k != "per_task"}


def _describe_eval(r: dict[str, Any]) -> str:
    parts = [f"{m} AUC {v['before']['auc']:.4f} -> {v['after']['auc']:.4f}"
             for m, v in r["models"].items()]  # fmt: skip
    return f"test_cold ({r['tasks']['scored']} tasks): " + ", ".join(parts)
