"""The training step of an interval: incremental training warm-started from the champion, through a
launcher (``local``: this machine, torchrun for several ranks; ``kubernetes``: a PyTorchJob or
TrainJob rendered from ``manifests/``).

    ws = choose_warm_start(cfg, interval, episodes_dir)   # WarmStart(checkpoint | None, reason)
    result = train_step(cfg, interval, etl_result)        # TrainStepResult (recorded)

The run writes ``<run_root>/train/<interval id>/``. Idempotence: the record of a finished run
holds its inputs (the data's content hash, the trainer config and overrides, the backend); a rerun
with the same inputs returns it, whatever the champion is now (the interval's model was trained
once). A retried attempt with the same inputs resumes the run's own checkpoints; an attempt with
other inputs (new data, another config) starts over in a clean directory.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.steps.config import DeliveryConfig
from components.steps.data import EtlStepResult
from components.steps.layout import (
    Interval,
    RunLayout,
    read_record,
    write_json_atomic,
    write_record,
)
from trainer.config_loader import build

log = logging.getLogger(__name__)
FLOW_KEYS = ("data.path", "train.output_dir", "checkpoint.warm_start")
"""Overrides the flow sets; a configured override of these keys is refused."""


@dataclass
class WarmStart:
    checkpoint: str | None
    """The champion's checkpoint step directory, or None: train from scratch."""
    reason: str
    champion: str | None = None
    """The champion's version (whether or not its checkpoint was used)."""


@dataclass
class TrainStepResult:
    run_dir: str
    checkpoint: str
    """The run's final checkpoint (step directory); empty for a Kubernetes dry run."""
    warm_start: WarmStart
    backend: str
    steps: int
    evaluation: dict[str, Any] = field(default_factory=dict)
    """The run's ``eval.json`` splits (before/after adaptation metrics)."""
    reused: bool = False
    dry_run_manifests: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_warm_start(cfg: DeliveryConfig, interval: Interval, episodes_dir: str) -> WarmStart:
    """The champion's checkpoint if it can seed this interval's run, else None with the reason.

    Refused (cold start) when: warm starts are off; there is no champion; its checkpoint is gone;
    it was trained on data that ends after this interval starts (a backfill must not learn from
    the future); its model shape or feature spec differs from this run's (the trainer's own check,
    :func:`trainer.run_state.checkpoint_problems`, whose words the reason repeats).
    """
    from components.promotion import registry
    from trainer.checkpoint import CheckpointError
    from trainer.config import load_trainer_config
    from trainer.data.contract import load_manifest
    from trainer.exported.artifact import LINEAGE_FILE, read_json
    from trainer.run_state import checkpoint_problems

    if not cfg.warm_start:
        return WarmStart(None, "warm starts are off (warm_start = false)")
    models = RunLayout.of(cfg.run_root).models_root
    pointer = registry.read_champion(models, cfg.model_name)
    if pointer is None:
        return WarmStart(None, f"no champion of {cfg.model_name} yet: training from scratch")
    version = pointer.version
    lineage = read_json(models / cfg.model_name / version / LINEAGE_FILE)
    ckpt = Path(lineage["checkpoint"]["path"])
    trained_end = (lineage["data"].get("interval") or {}).get("end")
    if (
        trained_end
        and Interval(lineage["data"]["interval"]["start"], trained_end).end > interval.start
    ):
        return WarmStart(
            None,
            f"champion {version} was trained on data up to {trained_end}, after "
            f"this interval's start {interval.start:%Y-%m-%dT%H}",
            version,
        )
    trainer_cfg = load_trainer_config(
        cfg.trainer_config, [*cfg.trainer_overrides, f"data.path={episodes_dir}"]
    )
    manifest = load_manifest(episodes_dir)
    try:
        problems = checkpoint_problems(ckpt, trainer_cfg, manifest)
    except (CheckpointError, OSError) as e:
        return WarmStart(None, f"champion {version}'s checkpoint {ckpt} is unusable ({e})", version)
    if problems:
        return WarmStart(
            None, f"champion {version} does not fit this run: " + "; ".join(problems), version
        )
    return WarmStart(str(ckpt), f"warm start from champion {version} ({ckpt.name})", version)


def _overrides(cfg: DeliveryConfig, episodes_dir: str, run_dir: Path, ws: WarmStart) -> list[str]:
    for o in cfg.trainer_overrides:
        if o.split("=", 1)[0].strip() in FLOW_KEYS:
            raise ValueError(f"delivery config: trainer override {o!r} is set by the flow; drop it")
    # Bare values (the trainer reads a value that is not a TOML literal as a string): the
    # Kubernetes renderer checks data.path as written and does not unquote it.
    # The flow decides the warm start, always: the champion's checkpoint, or none (empty), so a
    # trainer config file's own checkpoint.warm_start never applies (warm_start = false wins).
    flow = [f"data.path={episodes_dir}", f"train.output_dir={run_dir}",
            f"checkpoint.warm_start={ws.checkpoint or ''}"]  # fmt: skip
    return [*cfg.trainer_overrides, *flow]


def train_step(
    cfg: DeliveryConfig,
    interval: Interval,
    etl: EtlStepResult,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> TrainStepResult:
    """Train the interval's model on ``etl``'s episodes with ``cfg.backend``.

    Args:
        dry_run: kubernetes only: render and check the job's objects, write them to
            ``intervals/<id>/train.k8s.yaml`` and return without a cluster.

    Raises:
        ValueError: a bad config or override. components.launchers.local.LaunchError: the local
            job failed. RuntimeError: the Kubernetes job failed or timed out.
    """
    layout = RunLayout.of(cfg.run_root)
    run_dir = layout.train(interval)
    inputs = {
        "data": etl.content_hash,
        "config": cfg.trainer_config,
        "overrides": list(cfg.trainer_overrides),
        "backend": cfg.backend,
        "warm_start_enabled": cfg.warm_start,
    }
    if not force and not dry_run and (done := read_record(layout, interval, "train", inputs)):
        log.info("%s already trained (%s): reusing it", interval.id, done["run_dir"])
        return build(TrainStepResult, {**done, "reused": True})
    attempt = layout.record_path(interval, "train.attempt")
    previous = json.loads(attempt.read_text()) if attempt.is_file() else None
    if run_dir.exists() and (force or previous != json.loads(json.dumps(inputs))):
        log.info("%s: clearing %s (a run of other inputs)", interval.id, run_dir)
        shutil.rmtree(run_dir)
    ws = choose_warm_start(cfg, interval, etl.episodes_dir)
    log.info("%s: %s", interval.id, ws.reason)
    overrides = _overrides(cfg, etl.episodes_dir, run_dir, ws)
    write_json_atomic(attempt, inputs)
    if cfg.backend == "kubernetes":
        manifests = _train_on_kubernetes(cfg, interval, overrides, dry_run, layout)
        if dry_run:
            return TrainStepResult(str(run_dir), "", ws, cfg.backend, 0, {}, False, manifests)
    elif cfg.train_in_process:
        from components.train.in_process import train_in_process

        train_in_process(cfg.trainer_config, overrides)
    else:
        from components.launchers.local import train_locally

        train_locally(cfg.trainer_config, overrides, cfg.nproc)
    result = _finished(run_dir, ws, cfg.backend)
    write_record(layout, interval, "train", inputs, result.to_dict())
    return result


def _finished(run_dir: Path, ws: WarmStart, backend: str) -> TrainStepResult:
    from trainer.exported.export import resolve_checkpoint

    ckpt = resolve_checkpoint(run_dir)
    evaluation = (
        json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").is_file() else {}
    )
    step = int(json.loads((ckpt / "meta.json").read_text()).get("step", 0))
    return TrainStepResult(str(run_dir), str(ckpt), ws, backend, step, evaluation.get("splits", {}))


def _train_on_kubernetes(
    cfg: DeliveryConfig,
    interval: Interval,
    overrides: list[str],
    dry_run: bool,
    layout: RunLayout,
) -> str:
    """Submit the run as a PyTorchJob/TrainJob and wait for it (:func:`.dispatch.run_job`; named
    after the interval and the model, so a retry re-attaches); the run root must be mounted at the
    same path in the pods."""
    from components.launchers.render import render_run
    from components.steps.dispatch import job_run_id, keep, run_job
    from trainer.config import resolve_config_path

    params = cfg.kubernetes.train_params(
        run_id=job_run_id(interval, cfg.model_name),
        config_toml=resolve_config_path(cfg.trainer_config).read_text(),
        overrides=tuple(overrides),
        labels={"metarec.io/interval": interval.slug},
    )
    objs = render_run(params)
    record = layout.record_path(interval, "train.k8s").with_suffix(".yaml")
    if dry_run:
        return str(keep(objs, record))
    return str(run_job(cfg, objs, record, f"training {interval.id}"))
