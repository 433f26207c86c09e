"""The demo flow: the step functions of ``components/steps`` (those the ``continuous_delivery``
DAG's tasks call, in the DAG's order) on one data interval, plus the demo's own stages: the data
it generates first, a plain baseline for comparison, a per-task cold-start evaluation, scoring of
raw events, and the summary and report.

    result = run_demo(DemoConfig.preset("out/demo", quick=False))
    result["summary"]["cold_start"]["meta"]["after"]["auc"]

Stage by stage (the run root is ``--out``; the baseline's is ``--out``/baseline):

    generate            components.generate (the demo's own)       raw/ (JSONL, 0.5 % corrupt)
    validate-raw        data.check_raw, data.validate_raw_step     intervals/<id>/raw_validation/
    etl                 data.etl_step (Spark local[2])             episodes/<id>/ + _quarantine/
    validate-episodes   data.validate_episodes_step               episodes/<id>/_validation/
    train-meta          training.train_step (torchrun, 2 ranks)    train/<id>/
    export, evaluate,   delivery.export_step, evaluate_step,       models/ctr-demo/v<N>,
    gate, promote       gate_step, promote_step                    CHAMPION, intervals/<id>/*.json
    train-plain,        training.train_step, delivery.export_step  baseline/train/<id>/,
    export-plain        (meta.mode = "plain", run root baseline/)  baseline/models/...
    cold-start          demo: per-task AUC of both exports         evaluation/cold_start.json
    compare             demo: both exports beside the baselines    evaluation/comparison.json
                        (metarec evaluate), which model to ship
    score               demo: components.score on cold campaigns   score/predictions*.parquet
    airflow             the continuous_delivery DAG, last hour     delivery/ (not --quick)
    report              demo: summary + components.report          summary.json, report.html

Reruns: each step decides from its own record, exactly as in a DAG rerun (the same inputs: the
record is reused; other inputs: the step runs again, and so does what depends on it); the demo's
own stages keep records of the same kind. ``fresh`` is the DAG's ``force``: recompute everything.
"""

from __future__ import annotations

import logging
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from components.demo.progress import DemoStopped, Progress, TrainOutput, recorded
from components.demo.settings import CONFIG_FILE, MODES, DemoConfig

log = logging.getLogger("metarec.demo")
STAGES = ("generate", "validate-raw", "etl", "validate-episodes", "train-meta", "export", "evaluate",
          "gate", "promote", "train-plain", "export-plain", "cold-start", "compare", "score", "airflow",
          "report")  # fmt: skip


def generator_config(config: DemoConfig):  # -> components.generate.GeneratorConfig
    from components.generate import GeneratorConfig

    return GeneratorConfig(
        out=str(config.paths()["raw"]), rows=config.rows, start=config.start, hours=config.hours,
        seed=config.seed, format="jsonl", corrupt=config.corrupt, num_users=config.users,
        num_campaigns=config.campaigns, num_advertisers=max(10, config.campaigns // 4), ctr=0.1,
        overwrite=True,
    )  # fmt: skip


def load_configs(config: DemoConfig) -> dict[str, Any]:
    """Each run root's delivery config: written as the file a DAG would be given, and loaded by
    the delivery config's own loader (``components.steps.config.load_delivery_config``)."""
    from components.steps.config import load_delivery_config
    from trainer.durable import write_json_atomic

    out = {}
    for mode in MODES:
        path = config.run_root(mode) / CONFIG_FILE
        write_json_atomic(path, config.delivery_config(mode))
        out[mode] = load_delivery_config(path)
    return out


def _settings(generator) -> dict[str, Any]:
    """The generator's settings but its output folder: the same settings give the same data."""
    return {k: v for k, v in generator.to_dict().items() if k != "out"}


def _generate(config: DemoConfig) -> dict[str, Any]:
    from components.generate import generate

    s = generate(generator_config(config))
    return {"rows_written": s.rows_written, "clean_rows": s.clean_rows, "files": len(s.files),
            "corrupted_rows": sum(s.corruption.values()), "ctr": s.ctr}  # fmt: skip


def _stop_spark() -> None:
    """Stop the SparkSession the data steps started, if they started one (a step whose record
    is reused needs none): the trainers that come next get its memory."""
    import sys

    if "pyspark" in sys.modules:
        from pyspark.sql import SparkSession

        session = SparkSession.getActiveSession()
        if session is not None:
            session.stop()


def _train(cfg, interval, etl, config: DemoConfig, mode: str, force: bool):
    """The training step, its output relayed by :class:`TrainOutput` (``logs/train-<mode>.log``)."""
    from components.steps import training

    log_file = config.paths()["logs"] / f"train-{mode}.log"
    with TrainOutput(log_file, mode, config.steps, config.log_every) as out, redirect_stdout(out):
        log.info("  %s run: %d rank(s), full output in %s", mode, config.nproc, log_file)
        return training.train_step(cfg, interval, etl, force=force)


def _score(config: DemoConfig, episodes: Path, model_dir: Path) -> dict[str, Any]:
    from components.demo.scoring import cold_tasks, score_cold, write_cold_events

    out = config.paths()["score"]
    tasks = cold_tasks(episodes)
    events = write_cold_events(config.paths()["raw"], tasks, "campaign_id", out)
    return {"model": str(model_dir), **events, **score_cold(model_dir, out, "campaign_id")}


def run_demo(config: DemoConfig, spark=None, fresh: bool = False) -> dict[str, Any]:
    """Run (or rerun) every stage, then write ``summary.json`` and ``report.html``.

    Args:
        config: the run.
        spark: a SparkSession for the data steps (tests pass theirs); default: the steps' own
            (``components.steps.data.shared_spark``), stopped before training.
        fresh: recompute every step instead of reusing records (the DAG's ``force``).

    Returns:
        ``{"summary": ..., "results": {stage: result dict}, "seconds": {stage: s},
        "reused": [stage, ...]}``.

    Raises:
        components.steps.data.ValidationFailed: a data-quality suite failed (fails closed).
        DemoStopped: no model was promoted, so there is nothing to score.
        components.launchers.local.LaunchError: a training job failed.
        ValueError, FileNotFoundError: bad settings or inputs (the message says what to do).
    """
    from components.demo.evaluation import compare_models, evaluate_exports
    from components.demo.summary import DESCRIBE, build_summary
    from components.report import write_report
    from components.steps import data, delivery
    from components.steps.layout import Interval, RunLayout
    from trainer.durable import write_json_atomic

    for noisy in ("great_expectations", "py4j"):  # GX logs its internals at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    t0 = time.perf_counter()
    p = config.paths()
    cfgs = load_configs(config)
    cfg, layout = cfgs["meta"], RunLayout.of(cfgs["meta"].run_root)
    interval = Interval(config.start, config.end)
    progress = Progress(total=len(STAGES) - (not config.airflow))
    run = progress.run
    r: dict[str, Any] = {}  # each stage's result, as JSON (step results: to_dict())

    def generate():
        settings, marker = _settings(generator_config(config)), p["raw"] / "_generation.json"
        return recorded(layout, interval, "demo_generate", settings, lambda: _generate(config),
                        force=fresh, outputs=(marker,))  # fmt: skip

    r["generate"] = run("generate", generate, DESCRIBE["generate"])

    def validate_raw():
        status = data.check_raw(cfg, interval)
        if not status.ready:
            raise ValueError(f"{interval.id}: raw data not ready under {p['raw']}: {status.reason}")
        return data.validate_raw_step(cfg, interval, spark, force=fresh)

    try:
        r["raw_validation"] = run("validate-raw", validate_raw, DESCRIBE["validation"]).to_dict()
        etl = run("etl", lambda: data.etl_step(cfg, interval, spark, force=fresh), DESCRIBE["etl"])
        r["etl"] = etl.to_dict()
        r["validate_episodes"] = run(
            "validate-episodes",
            lambda: data.validate_episodes_step(cfg, interval, force=fresh),
            DESCRIBE["validation"],
        ).to_dict()
    finally:
        if spark is None:
            _stop_spark()

    # The meta model: the DAG's chain, in the DAG's order.
    train = {"meta": run("train-meta", lambda: _train(cfg, interval, etl, config, "meta", fresh),
                         DESCRIBE["train"])}  # fmt: skip
    exports = {"meta": run("export", lambda: delivery.export_step(cfg, interval, train["meta"], etl),
                           DESCRIBE["export"])}  # fmt: skip
    evaluation = run(
        "evaluate",
        lambda: delivery.evaluate_step(cfg, interval, exports["meta"], etl, force=fresh),
        DESCRIBE["evaluate"],
    )
    gate = run("gate", lambda: delivery.gate_step(cfg, interval, evaluation, force=fresh),
               DESCRIBE["gate"])  # fmt: skip
    promoted = run("promote", lambda: delivery.promote_step(cfg, interval, gate),
                   DESCRIBE["promote"])  # fmt: skip
    r.update(evaluate=evaluation.to_dict(), gate=gate.to_dict(), promote=promoted.to_dict())

    # The plain baseline: the same training and export steps, in its own run root.
    base = cfgs["plain"]
    train["plain"] = run("train-plain",
                         lambda: _train(base, interval, etl, config, "plain", fresh),
                         DESCRIBE["train"])  # fmt: skip
    exports["plain"] = run("export-plain",
                           lambda: delivery.export_step(base, interval, train["plain"], etl),
                           DESCRIBE["export"])  # fmt: skip
    r["train"] = {m: t.to_dict() for m, t in train.items()}
    r["export"] = {m: e.to_dict() for m, e in exports.items()}

    def cold_start():
        out, models = p["evaluation"] / "cold_start.json", {m: exports[m].model_dir for m in MODES}
        evals = {m: train[m].evaluation for m in MODES}
        return recorded(
            layout, interval, "demo_cold_start", {"models": models, "data": etl.content_hash},
            lambda: evaluate_exports({m: Path(d) for m, d in models.items()},
                                     Path(etl.episodes_dir), evals, out),
            force=fresh, outputs=(out,),
        )  # fmt: skip

    r["cold_start"] = run("cold-start", cold_start, DESCRIBE["cold_start"])

    def compare():
        out, models = p["evaluation"] / "comparison.json", {m: exports[m].model_dir for m in MODES}
        return recorded(
            layout, interval, "demo_comparison", {"models": models, "data": etl.content_hash},
            lambda: compare_models({m: Path(d) for m, d in models.items()},
                                   Path(etl.episodes_dir), out),
            force=fresh, outputs=(out,),
        )  # fmt: skip

    r["comparison"] = run("compare", compare, DESCRIBE["comparison"])
    if promoted.champion is None:
        raise DemoStopped(f"the gate promoted no model, so nothing is scored: {gate.reason}")
    champion = layout.models_root / cfg.model_name / promoted.champion

    def score():
        inputs = {"model": str(champion), "data": etl.content_hash}
        return recorded(layout, interval, "demo_score", inputs,
                        lambda: _score(config, Path(etl.episodes_dir), champion), force=fresh,
                        outputs=(p["score"] / "predictions.parquet",))  # fmt: skip

    r["score"] = run("score", score, DESCRIBE["score"])

    r["delivery"] = None
    if config.airflow:
        from components.demo.delivery import run_delivery

        r["delivery"] = run("airflow", lambda: run_delivery(config), DESCRIBE["delivery"])

    progress.index += 1
    log.info("[%d/%d] report ...", progress.index, progress.total)
    seconds = {**progress.seconds, "total": round(time.perf_counter() - t0, 2)}
    summary = build_summary(config, r, seconds, progress.reused)
    write_json_atomic(p["summary"], summary)
    write_report(summary, p["report"])
    log.info("[%d/%d] report done: %s, %s", progress.index, progress.total, p["summary"],
             p["report"])  # fmt: skip
    return {"summary": summary, "results": r, "seconds": seconds, "reused": progress.reused}
