"""Delivery steps of an interval: export the trained run, evaluate challenger and champion on the
SAME episodes, gate, promote atomically; plus rollback and the run report.

    exp = export_step(cfg, interval, train)           # models/<name>/v<N> (immutable, not serving)
    ev = evaluate_step(cfg, interval, exp, etl)       # both models on this interval's episodes
    g = gate_step(cfg, interval, ev)                  # components.promotion.gate.decide
    p = promote_step(cfg, interval, g)                # decided again under the lock; one swap

The challenger is exported before the gate so that both sides are scored by the same serving code
(``trainer.exported.evaluate_exported``); an export is only a candidate until the pointer moves.
Idempotence: export is keyed by the checkpoint's fingerprint (same checkpoint, same version);
evaluation, gate and promotion are recorded per interval and challenger, so rerunning an old
interval returns the decision made then and never moves the pointer again (``force`` re-decides
against the current champion). The promotion is decided under the model's lock, against the
champion it locked (``registry.promote(gate=...)``, as ``metarec promote`` does): the gate step's
decision when that is still the champion it compared, else the gate again against the champion
of now (evaluated on this interval's episodes), so two concurrent promotions never both win
against an older champion. A retried promotion or rollback finds its own change (its key) in the
history and returns it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.promotion.gate import Decision
from components.promotion.registry import ANY
from components.steps.config import DeliveryConfig
from components.steps.data import EtlStepResult
from components.steps.layout import Interval, RunLayout, read_record, write_record
from components.steps.training import TrainStepResult

if TYPE_CHECKING:
    from trainer.exported.evaluation import EpisodeScores

log = logging.getLogger(__name__)
ROC_POINTS = 50


@dataclass
class ExportStepResult:
    model_dir: str
    name: str
    version: str
    created: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class EvaluationResult:
    data_hash: str
    metric: str
    challenger: str
    challenger_value: float | None
    champion: str | None
    champion_value: float | None
    files: dict[str, str]
    """version -> the evaluation JSON (``eval.json`` shape) under ``intervals/<id>/evaluation/``."""
    roc: dict[str, list[float]]
    """The challenger's ROC curve after adaptation (fpr, tpr, thresholds), for KFP's UI."""
    confusion: list[list[int]]
    """The challenger's confusion matrix at p = 0.5 (rows: true 0/1, columns: predicted 0/1)."""
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class GateResult:
    verdict: str
    promote: bool
    reason: str
    metric: str
    challenger: str
    champion: str | None
    challenger_value: float | None = None
    champion_value: float | None = None
    delta: float | None = None
    reused: bool = False

    @classmethod
    def of(cls, d: Decision, challenger: str, champion: str | None) -> GateResult:
        """The step's result of the gate's decision ``d`` between these two versions."""
        return cls(verdict=str(d.verdict), promote=d.promote, reason=d.reason, metric=d.metric,
                   challenger=challenger, champion=champion, challenger_value=d.challenger,
                   champion_value=d.champion, delta=d.delta)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PromotionResult:
    promoted: bool
    champion: str | None
    previous: str | None
    reason: str
    reused: bool = False
    decided_against: str | None = None
    """The champion the promotion was decided against, under the lock (None: there was none)."""
    warning: str | None = None
    """Set when the pointer moved but its history record could not be appended (a full disk):
    ``promoted <version>; history not recorded: <why>`` (the next change writes the record)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_step(
    cfg: DeliveryConfig, interval: Interval, train: TrainStepResult, etl: EtlStepResult
) -> ExportStepResult:
    """Export the run's final checkpoint as ``models/<name>/v<N>`` (the same version again when
    that checkpoint was exported before)."""
    from trainer.exported.export import export_checkpoint

    if not train.checkpoint:
        raise ValueError(f"{interval.id}: the training step produced no checkpoint (a dry run?)")
    models = RunLayout.of(cfg.run_root).models_root
    r = export_checkpoint(train.checkpoint, models, name=cfg.model_name, manifest=etl.episodes_dir)
    log.info(
        "%s: %s %s/%s",
        interval.id,
        "exported" if r.created else "already exported as",
        r.name,
        r.version,
    )
    return ExportStepResult(str(r.path), r.name, r.version, r.created)


def _roc(scores: EpisodeScores | None) -> tuple[dict[str, list[float]], list[list[int]]]:
    """A ROC curve of at most ROC_POINTS thresholds of the scores after adaptation, and the
    confusion matrix at p = 0.5 (both empty of points when there are no scores: no episodes)."""
    import numpy as np

    logits = scores.after if scores is not None else np.zeros(0)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    y = scores.labels.astype(np.int64) if scores is not None else np.zeros(0, dtype=np.int64)
    cuts = np.unique(np.quantile(probs, np.linspace(0, 1, ROC_POINTS))) if len(probs) else []
    pos, neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    roc = {"fpr": [], "tpr": [], "thresholds": []}
    for t in sorted(cuts, reverse=True):
        pred = probs >= t
        roc["tpr"].append(float((pred & (y == 1)).sum() / pos))
        roc["fpr"].append(float((pred & (y == 0)).sum() / neg))
        roc["thresholds"].append(float(t))
    pred = probs >= 0.5
    confusion = [[int(((y == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    return roc, confusion


def evaluate_step(
    cfg: DeliveryConfig,
    interval: Interval,
    exported: ExportStepResult,
    etl: EtlStepResult,
    *,
    force: bool = False,
) -> EvaluationResult:
    """Evaluate the challenger and the current champion on this interval's episodes (the gate
    metric's split), with the same serving code and settings."""
    import json

    from components.promotion import registry
    from components.promotion.gate import metric_value

    layout = RunLayout.of(cfg.run_root)
    metric = cfg.gate.metric
    batch, limit = cfg.gate.batch_episodes, cfg.gate.max_episodes
    inputs = {
        "challenger": exported.version,
        "data": etl.content_hash,
        "metric": metric,
        "batch_episodes": batch,
        "max_episodes": limit,
    }
    if not force and (done := read_record(layout, interval, "evaluate", inputs)):
        return EvaluationResult(**{**done, "reused": True})
    pointer = registry.read_champion(layout.models_root, cfg.model_name)
    versions = [exported.version] + (
        [pointer.version] if pointer and pointer.version != exported.version else []
    )
    files, values, scores = {}, {}, {}
    for version in versions:
        challenger = version == exported.version
        path, evaluation, scores[version] = _evaluate_version(
            cfg, interval, version, etl, challenger
        )
        files[version], values[version] = str(path), metric_value(evaluation, metric)
    roc, confusion = _roc(scores[exported.version])
    champion = pointer.version if pointer else None
    result = EvaluationResult(
        data_hash=etl.content_hash,
        metric=metric,
        challenger=exported.version,
        challenger_value=values[exported.version],
        champion=champion,
        champion_value=values.get(champion) if champion else None,
        files=files,
        roc=roc,
        confusion=confusion,
    )
    write_record(layout, interval, "evaluate", inputs, json.loads(json.dumps(result.to_dict())))
    return result


def _evaluate_version(
    cfg: DeliveryConfig, interval: Interval, version: str, etl: EtlStepResult, challenger: bool
) -> tuple[Path, dict[str, Any], EpisodeScores | None]:
    """Evaluate ``version`` on this interval's episodes (the gate metric's split, the gate's
    settings) into ``intervals/<id>/evaluation/<version>.json``: its path, its content and the
    scores the metrics were computed from (None when it could not be scored). A champion that
    cannot be evaluated here (another feature spec) gets an evaluation with its ``error``, which
    the gate refuses to compare with; a challenger's failure raises."""
    from trainer.durable import write_json_atomic
    from trainer.exported import load_exported
    from trainer.exported.evaluation import evaluate_scored

    layout = RunLayout.of(cfg.run_root)
    split = cfg.gate.metric.split(".")[0]
    scores = None
    try:
        model = load_exported(layout.models_root / cfg.model_name / version)
        evaluation, scored = evaluate_scored(
            model, etl.episodes_dir, (split,), cfg.gate.batch_episodes, cfg.gate.max_episodes
        )
        scores = scored.get(split)
    except ValueError as e:  # ExportError, another feature spec: the gate refuses it
        if challenger:
            raise
        log.warning("%s: champion %s cannot be evaluated on this data: %s", interval.id, version, e)
        evaluation = {"data": {"content_hash": etl.content_hash}, "splits": {}, "error": str(e)}
    path = layout.records(interval) / "evaluation" / f"{version}.json"
    write_json_atomic(path, evaluation)
    return path, evaluation, scores


def _decide(
    cfg: DeliveryConfig, interval: Interval, files: dict[str, str], challenger: str,
    champion: str | None,
) -> GateResult:  # fmt: skip
    """The gate (``gate.decide``, checksums verified) between two versions from their
    evaluation files (``files``: version -> path)."""
    import json

    from components.promotion.gate import decide, load_candidate

    mdir = RunLayout.of(cfg.run_root).models_root / cfg.model_name

    def candidate(version: str):
        return load_candidate(mdir / version, json.loads(Path(files[version]).read_text()))

    d = decide(candidate(challenger), candidate(champion) if champion else None, cfg.gate.policy())
    log.info("%s gate (%s against %s): %s", interval.id, challenger, champion or "none", d.reason)
    return GateResult.of(d, challenger, champion)


def _decide_against(cfg: DeliveryConfig, interval: Interval, challenger: str,
                    champion: str | None) -> GateResult:  # fmt: skip
    """The gate between ``challenger`` and ``champion`` (the one the lock holds, not the one the
    gate step compared) on this interval's episodes. The champion's evaluation there is reused
    when one was written on the challenger's data with its settings; else it is evaluated now.

    Raises:
        ValueError: the interval has no ETL record to evaluate the champion on.
    """
    import json

    from trainer.config_loader import build

    folder = RunLayout.of(cfg.run_root).records(interval) / "evaluation"
    files = {v: str(folder / f"{v}.json") for v in (challenger, champion) if v}
    if champion:
        ours = json.loads(Path(files[challenger]).read_text())
        try:
            theirs = json.loads(Path(files[champion]).read_text())
        except (OSError, ValueError):
            theirs = {}
        if (theirs.get("data"), theirs.get("settings")) != (ours.get("data"), ours.get("settings")):
            etl = read_record(RunLayout.of(cfg.run_root), interval, "etl")
            if etl is None:
                raise ValueError(
                    f"{interval.id}: the champion is now {champion} and must be evaluated on this "
                    "interval's episodes, but the interval has no ETL record: rerun the interval"
                )
            _evaluate_version(cfg, interval, champion, build(EtlStepResult, etl), False)
    return _decide(cfg, interval, files, challenger, champion)


def gate_step(
    cfg: DeliveryConfig, interval: Interval, evaluation: EvaluationResult, *, force: bool = False
) -> GateResult:
    """Decide: promote the challenger or keep the champion (``gate.decide``; checksums verified)."""
    layout = RunLayout.of(cfg.run_root)
    inputs = {
        "challenger": evaluation.challenger,
        "data": evaluation.data_hash,
        "policy": asdict(cfg.gate.policy()),
    }
    if not force and (done := read_record(layout, interval, "gate", inputs)):
        return GateResult(**{**done, "reused": True})
    result = _decide(cfg, interval, evaluation.files, evaluation.challenger, evaluation.champion)
    write_record(layout, interval, "gate", inputs, result.to_dict())
    return result


def promote_step(cfg: DeliveryConfig, interval: Interval, gate: GateResult) -> PromotionResult:
    """Move the CHAMPION pointer to the challenger if the gate, decided under the model's lock
    against the champion it locked, says so (``registry.promote(gate=...)``: one ``os.replace``).

    Under the lock, the gate step's decision stands when its champion (``gate.champion``) is still
    the champion; when another promotion or a rollback changed it meanwhile, the challenger is
    gated again against the champion of now, on this interval's episodes, and that decision is
    recorded. Done once per interval: a recorded promotion, or the registry's record of this
    change (key: interval, challenger and the gate step's champion; a crash fell between the swap
    and the step record), is returned without acting again.

    Raises:
        ValueError: the champion changed and cannot be evaluated (no ETL record), or the pointer
            cannot be written (``registry.PointerNotWritten``: the champion is unchanged).
    """
    from components.promotion import registry

    layout = RunLayout.of(cfg.run_root)
    models, name = layout.models_root, cfg.model_name
    inputs = {"challenger": gate.challenger, "verdict": gate.verdict}
    if done := read_record(layout, interval, "promote", inputs):
        return PromotionResult(**{**done, "reused": True})
    decided: list[GateResult] = []

    def decide_locked(locked: registry.Pointer | None) -> tuple[str, dict[str, Any]] | None:
        champion = locked.version if locked else None
        same = champion == gate.champion
        decided.append(gate if same else _decide_against(cfg, interval, gate.challenger, champion))
        if not decided[-1].promote:
            return None
        return decided[-1].reason, {"interval": interval.id, "gate": decided[-1].to_dict()}

    key = f"{interval.id} {gate.challenger} over {gate.champion or 'none'}"
    after = registry.promote(models, name, gate.challenger, key=key, gate=decide_locked)
    now, previous = (after.version, after.previous) if after else (None, None)
    if after is not None and after.replayed:
        why = "promoted already by an earlier attempt"
        result = PromotionResult(True, now, after.replayed["from"], why, reused=True,
                                 decided_against=after.replayed["from"])  # fmt: skip
    elif after is not None and decided and decided[-1].promote and now == gate.challenger:
        d = decided[-1]
        result = PromotionResult(True, now, previous, d.reason, decided_against=d.champion)
        if after.history_error:
            result.warning = f"promoted {now}; history not recorded: {after.history_error}"
            log.warning("%s: %s", interval.id, result.warning)
    else:
        d = decided[-1] if decided else gate
        result = PromotionResult(False, now, previous, f"gate: {d.reason}",
                                 decided_against=d.champion)  # fmt: skip
    write_record(layout, interval, "promote", inputs, result.to_dict())
    return result


def read_champion_version(cfg: DeliveryConfig) -> str | None:
    """The champion of ``cfg.model_name`` now (None before the first promotion)."""
    from components.promotion import registry

    pointer = registry.read_champion(RunLayout.of(cfg.run_root).models_root, cfg.model_name)
    return pointer.version if pointer else None


def rollback_step(
    cfg: DeliveryConfig, reason: str, *, expect: str | None = ANY, key: str | None = None
) -> PromotionResult:
    """Make the previous champion the champion again (``registry.rollback``), if ``expect`` is
    still the champion; a rollback with a ``key`` already recorded (a retried Airflow task: the
    run id) returns that record instead of rolling back again (``reused``).

    Raises:
        registry.ChampionChanged: the champion is not ``expect``.
        ValueError: there is no previous champion.
    """
    from components.promotion import registry

    models = RunLayout.of(cfg.run_root).models_root
    reason = reason or "manual rollback"
    new = registry.rollback(models, cfg.model_name, expect=expect, key=key, reason=reason)
    if new.replayed:
        done = new.replayed
        return PromotionResult(True, done["to"], done["from"], done["reason"], reused=True)
    return PromotionResult(True, new.version, new.last["from"], reason)


def champion_status(cfg: DeliveryConfig) -> dict[str, Any]:
    """The champion, its stack and the promotion history of ``cfg.model_name``."""
    from components.promotion import registry

    models = RunLayout.of(cfg.run_root).models_root
    p = registry.read_champion(models, cfg.model_name)
    return {
        "champion": p.version if p else None,
        "stack": p.stack if p else [],
        "history": registry.read_history(models, cfg.model_name),
    }


def export_recorded_run(cfg: DeliveryConfig, interval: Interval) -> ExportStepResult:
    """Export the run that the flow trained for ``interval`` (from its step records).

    Raises:
        ValueError: the interval was never trained (no train or ETL record).
    """
    from trainer.config_loader import build

    layout = RunLayout.of(cfg.run_root)
    train, etl = read_record(layout, interval, "train"), read_record(layout, interval, "etl")
    if not train or not etl:
        raise ValueError(
            f"{interval.id} has no finished training under {layout.root}: run continuous_delivery "
            "for it first (or `python -m components.steps deliver --interval ...`)"
        )
    return export_step(cfg, interval, build(TrainStepResult, train), build(EtlStepResult, etl))
