"""One evaluation: every row a user would compare, at the episode and the task level.

Rows (``result["rows"]``, in this order; ``level`` is ``episode`` or ``task``, see
:mod:`trainer.evaluation.episodes`):

- ``no adaptation``: the shared parameters (one row: the level does not matter);
- ``calibration only``: the model's logits shifted by each task's shrunk support rate
  (:mod:`trainer.evaluation.baselines`);
- ``training setting``: adapted with the run's own inner loop (``meta.inner_steps``,
  ``meta.inner_lr``, ``meta.adapt``); for a plain model, fine-tuning with the meta runs' setting;
- ``grid``: every cell of ``steps x lr x scope`` (a step count of 0 is ``no adaptation``), each
  at the grid's step size (a Meta-SGD model's learned step sizes are its ``training setting``
  row); none for FiLM (it adapts by a forward pass), one scope for MetaEmb (``grid_note``);
- ``tuned on <split>``: the grid cell with the best ``tune_metric`` on ANOTHER split (by default
  ``valid_cold``: cold tasks held out from training and from the evaluated split), reported with
  its metrics on the evaluated split. Without such a split the row says why it is missing.

Each row holds the metrics of :func:`trainer.metrics.split_metrics` on the real query samples
with a known label. An ESMM model (``model.task = "esmm"``) is scored on its CTR head in
``metrics`` (as the trainer's evaluation and the gate score it; the tuning compares these), and
each row adds ``heads``: :func:`trainer.metrics.esmm_metrics` (``ctr``: every query sample;
``cvr``: clicked samples with a known conversion; ``ctcvr``: pCTR x pCVR on every sample with a
known conversion). Its calibration-only row shifts each head by its own task rate: the CTR head
by the support click rate, the CVR head by the conversion rate of the clicked support samples.
Adaptation is :func:`trainer.meta.adapt` (evaluation: no outer graph), scoring
:func:`trainer.meta.predict`, the same calls as the trainer's evaluation and the serving path; so
the episode-level row of the evaluation setting equals the run's ``eval.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.data.batch import FeatureLayout
from trainer.data.contract import load_manifest
from trainer.evaluate import query_labels, support_labels
from trainer.evaluation.baselines import PRIOR_STRENGTH, calibration_offsets, global_rate
from trainer.evaluation.episodes import Level, read_level, split_episodes, task_level
from trainer.evaluation.models import EvaluatedModel
from trainer.meta import ADAPTS, MetaConfig, adapt, predict
from trainer.metrics import esmm_metrics, split_metrics

log = logging.getLogger(__name__)
LEVELS = ("episode", "task")
TUNE_METRICS = {"auc": True, "gauc": True, "episode_gauc": True, "logloss": False, "ne": False}
"""Metrics a tuning may maximise (True) or minimise (False)."""
DEFAULT_TUNE_SPLIT = "valid_cold"


@dataclass(frozen=True)
class Settings:
    """What one evaluation computes. Validated on construction."""

    steps: tuple[int, ...] = (1, 3, 5)
    """Inner steps of the grid (0: no adaptation)."""
    lrs: tuple[float, ...] = (0.03, 0.1, 0.3)
    """Inner learning rates of the grid."""
    scopes: tuple[str, ...] = ()
    """What adapts (``head``, ``dense``, ``dense+emb``); empty: the training run's ``meta.adapt``."""
    levels: tuple[str, ...] = LEVELS
    """``episode`` (each episode on its own support set) and/or ``task`` (once per task)."""
    tune_split: str | None = None
    """Split the tuned row is chosen on (None: ``valid_cold`` when the folder has it)."""
    tune_metric: str = "auc"
    """Metric the tuned row maximises (``logloss``, ``ne``: minimises)."""
    prior_strength: float = PRIOR_STRENGTH
    """Pseudo-samples of the calibration-only baseline's prior."""
    batch_episodes: int = 64
    """Episodes per batch (the episode level)."""
    max_episodes: int = 0
    """The first this many episodes of each split in file order (0: all)."""

    def __post_init__(self) -> None:
        if any(s < 0 for s in self.steps) or not all(lr > 0 for lr in self.lrs):
            raise ValueError(f"--steps must be >= 0 and --lr > 0, got {self.steps}, {self.lrs}")
        bad = [s for s in self.scopes if s not in ADAPTS]
        if bad or not self.levels or any(v not in LEVELS for v in self.levels):
            raise ValueError(
                f"--scope must be among {', '.join(ADAPTS)} and --level among "
                f"{', '.join(LEVELS)}, got {list(self.scopes)} and {list(self.levels)}"
            )
        if self.tune_metric not in TUNE_METRICS:
            raise ValueError(f"--tune-metric must be one of {', '.join(TUNE_METRICS)}")
        if not self.prior_strength > 0 or self.batch_episodes < 1 or self.max_episodes < 0:
            raise ValueError(
                "--prior-strength must be > 0, --batch-episodes >= 1 and --max-episodes >= 0"
            )

    def grid(self, training: MetaConfig) -> list[MetaConfig]:
        """The grid cells with at least one step, as inner-loop settings of ``training``'s mode:
        each at the grid's step size (``learn_inner_lr = "off"``: a Meta-SGD model's learned step
        sizes are its training-setting row only). None for FiLM, one scope for MetaEmb
        (:func:`grid_note`)."""
        if training.mode == "film":
            return []
        own = (training.adapt,)
        scopes = own if training.mode == "metaemb" else self.scopes or own
        return [
            dataclasses.replace(
                training, inner_steps=s, inner_lr=lr, adapt=scope, learn_inner_lr="off"
            )
            for scope in scopes
            for s in self.steps
            if s > 0
            for lr in self.lrs
        ]


def grid_note(training: MetaConfig) -> str | None:
    """Why the grid does not apply (in full) to a model of ``training``'s mode, or None."""
    if training.mode == "film":
        return (
            "meta.mode = 'film' adapts by one forward pass of its support-set encoder: the "
            "steps x lr x scope grid does not apply (no grid or tuned rows)"
        )
    if training.mode == "metaemb":
        return (
            "meta.mode = 'metaemb' adapts the generated id embedding only: the grid's steps x lr "
            f"apply, --scope does not (rows at the training scope {training.adapt!r})"
        )
    return None


def _setting(cfg: MetaConfig | None) -> dict[str, Any] | None:
    """What a row reports of its adaptation: steps, lr, scope; ``learned_lr`` where Meta-SGD's
    learned step sizes replace ``lr``; ``film`` where the support-set encoder adapts."""
    if cfg is None:
        return None
    if cfg.mode == "film":
        return {"film": "support-set encoder"}
    out: dict[str, Any] = {"steps": cfg.inner_steps, "lr": cfg.inner_lr, "scope": cfg.adapt}
    return out if cfg.learn_inner_lr == "off" else {**out, "learned_lr": cfg.learn_inner_lr}


class _Scorer:
    """Scores one level of one split under any adaptation (cached per setting)."""

    def __init__(self, model: EvaluatedModel, level: Level, prior_strength: float) -> None:
        self.model, self.level, self.prior_strength = model.model, level, prior_strength
        self._cache: dict[Any, dict[str, Any]] = {}
        self.esmm = self.model.cfg.task == "esmm"
        self.labels = [query_labels(self.model, b) for b in level.batches]
        self.tasks = [b.task_ids[:, None].expand(-1, b.q_query) for b in level.batches]

    def metrics(self, cfg: MetaConfig | None = None, calibrate: bool = False) -> dict[str, Any]:
        key = "calibration" if calibrate else repr(cfg)
        if key not in self._cache:
            self._cache[key] = self._score(cfg, calibrate)
        return self._cache[key]

    def _score(self, cfg: MetaConfig | None, calibrate: bool) -> dict[str, Any]:
        """The metrics of one setting (ESMM: of the CTR head, plus ``heads``)."""
        offsets = self._offsets() if calibrate else None
        keys = ("y", "logit", "task", "episode") + (("conversion", "cvr") if self.esmm else ())
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for i, batch in enumerate(self.level.batches):
            sparse = self.model.embeddings.read(batch)
            adapted = None if cfg is None else adapt(self.model, sparse, batch, cfg)
            logits = predict(self.model, sparse, batch, adapted).double()
            if offsets is not None:  # (T,) or, per ESMM head, (T, 2)
                logits = logits + offsets[i][:, None]
            y, mask = self.labels[i]
            columns = {"y": y, "logit": logits, "task": self.tasks[i],
                       "episode": self.level.query_episode[i]}  # fmt: skip
            if self.esmm:  # [ctr, cvr] logits: the CTR head is the primary score
                columns.update(logit=logits[..., 0], cvr=logits[..., 1],
                               conversion=batch.conversion[:, batch.k_support :])  # fmt: skip
            for k, v in columns.items():
                parts[k].append(v[mask].numpy())
        cat = {k: np.concatenate(v) for k, v in parts.items()}
        out: dict[str, Any] = split_metrics(cat["y"], cat["logit"], cat["task"], cat["episode"])
        if self.esmm:
            out["heads"] = esmm_metrics(cat["y"], cat["conversion"], cat["logit"], cat["cvr"],
                                        cat["task"], cat["episode"])  # fmt: skip
        return out

    def _offsets(self) -> list[torch.Tensor]:
        """Per batch, the calibration-only logit offsets ``(T,)``; ESMM: ``(T, 2)``, the CTR
        head's from the support clicks, the CVR head's from the clicked support samples'
        conversions."""
        ctr = self._head_offsets(support_labels)
        if not self.esmm:
            return ctr
        cvr = self._head_offsets(lambda _, batch: clicked_conversions(batch))
        return [torch.stack(pair, -1) for pair in zip(ctr, cvr, strict=True)]

    def _head_offsets(self, labels: Any) -> list[torch.Tensor]:
        """Per batch ``(T,)``: :func:`calibration_offsets` of the support ``labels(model,
        batch) -> (y, mask)``, shrunk toward their rate over the whole level."""
        counts = []
        for batch in self.level.batches:
            y, mask = labels(self.model, batch)
            counts.append(((y * mask).sum(1), mask.sum(1)))
        rate = global_rate(float(sum(k.sum() for k, _ in counts)),
                           float(sum(n.sum() for _, n in counts)))  # fmt: skip
        return [calibration_offsets(k, n, rate, self.prior_strength) for k, n in counts]


def clicked_conversions(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Support conversions ``(T, K)`` and the mask of the real support samples that were clicked
    and have a known conversion (what ESMM's CVR head is judged on)."""
    side = slice(0, batch.k_support)
    conv, click = batch.conversion[:, side], batch.click[:, side]
    mask = batch.support_mask & batch.episode_mask[:, None] & (click > 0) & (conv >= 0)
    return conv.clamp_min(0), mask


def _levels(root: str, split: str, settings: Settings) -> tuple[dict[str, Level], int]:
    """The requested levels of ``split`` and its evaluated episodes."""
    episodes = read_level(root, split, settings.batch_episodes, settings.max_episodes)
    out = {"episode": episodes} if "episode" in settings.levels else {}
    if "task" in settings.levels:
        layout = FeatureLayout.from_manifest(load_manifest(root))
        out["task"] = task_level(episodes, layout.slot_offsets, layout.total_rows)
    return out, sum(b.num_real_episodes for b in episodes.batches)


def _tune_split(root: str, split: str, settings: Settings) -> tuple[str | None, str | None]:
    """The tuning split, or None and why there is none."""
    if settings.tune_split == split:
        raise ValueError(
            f"--tune-split {split} is the evaluated split: tuning on the data it reports is no "
            "baseline; tune on held-out cold tasks (valid_cold) or another split"
        )
    if settings.tune_split:
        split_episodes(root, settings.tune_split)  # a clear error when it has none
        return settings.tune_split, None
    default = load_manifest(root).splits.get(DEFAULT_TUNE_SPLIT, {})
    if split != DEFAULT_TUNE_SPLIT and default.get("episodes"):
        return DEFAULT_TUNE_SPLIT, None
    return None, (
        f"{root} has no {DEFAULT_TUNE_SPLIT} split (cold tasks held out for tuning); pass "
        "--tune-split <split> to tune on another one"
    )


def evaluate_model(
    model: EvaluatedModel, root: str, split: str, settings: Settings
) -> dict[str, Any]:
    """Every row of the module docstring for ``model`` on ``split`` of the ETL output ``root``.

    Returns ``{"model", "data", "settings", "rows", "tuning"}`` (JSON-ready): ``rows`` is a list
    of ``{"row", "level", "setting", "metrics"}`` (``setting``: ``steps``, ``lr``, ``scope``, or
    ``prior_strength``, or None), plus ``heads`` for an ESMM model; ``tuning`` maps each level to the tuning grid and the chosen
    cell, or to why there was none.

    Raises:
        ValueError: the split (or the tuning split) has no episodes, or bad settings.
    """
    t0 = time.perf_counter()
    split_episodes(root, split)
    tune_split, no_tuning = _tune_split(root, split, settings)
    grid = settings.grid(model.training)
    note = grid_note(model.training)
    levels, episodes = _levels(root, split, settings)
    tune_levels = _levels(root, tune_split, settings)[0] if tune_split and grid else {}
    rows: list[dict[str, Any]] = []
    tuning: dict[str, Any] = {}

    def row(name: str, level: str, setting: Any, metrics: dict[str, Any]) -> None:
        heads = {"heads": metrics["heads"]} if "heads" in metrics else {}
        metrics = {k: v for k, v in metrics.items() if k != "heads"}
        rows.append({"row": name, "level": level, "setting": setting, "metrics": metrics, **heads})

    scorers = {lv: _Scorer(model, level, settings.prior_strength) for lv, level in levels.items()}
    first = next(iter(scorers.values()))
    row("no adaptation", "-", None, first.metrics())
    for lv, scorer in scorers.items():
        row("calibration only", lv, {"prior_strength": settings.prior_strength},
            scorer.metrics(calibrate=True))  # fmt: skip
        row("training setting", lv, _setting(model.training), scorer.metrics(model.training))
        for cfg in grid:
            row("grid", lv, _setting(cfg), scorer.metrics(cfg))
        if not tune_levels:
            empty = note if not grid and note else "the grid is empty (every --steps is 0)"
            tuning[lv] = {"skipped": no_tuning if grid else empty}
            continue
        tuner = _Scorer(model, tune_levels[lv], settings.prior_strength)
        tried = [{**_setting(c), settings.tune_metric: tuner.metrics(c)[settings.tune_metric]}
                 for c in grid]  # fmt: skip
        best = _best(grid, tried, settings.tune_metric)
        tuning[lv] = {"split": tune_split, "metric": settings.tune_metric, "grid": tried,
                      "chosen": _setting(best)}  # fmt: skip
        row(f"tuned on {tune_split}", lv, _setting(best), scorer.metrics(best))
    manifest = load_manifest(root)
    base = rows[0]["metrics"]
    log.info("evaluated %s on %s/%s: %d rows in %.1f s", model.path, root, split, len(rows),
             time.perf_counter() - t0)  # fmt: skip
    return {
        "model": {
            "source": model.source,
            "path": model.path,
            **model.info,
            "training_setting": _setting(model.training),
        },
        "data": {
            "path": root,
            "content_hash": manifest.content_hash,
            "interval": manifest.interval,
            "split": split,
            "episodes": episodes,
            "tasks": base["tasks"] + base["tasks_skipped"],
            "query_samples": base["samples"],
        },
        "settings": {**dataclasses.asdict(settings), "tune_split": tune_split},
        "grid_note": note,
        "rows": rows,
        "tuning": tuning,
    }


def _best(grid: list[MetaConfig], tried: list[dict[str, Any]], metric: str) -> MetaConfig:
    """The cell with the best finite value (the first on ties; the first cell if none is finite)."""
    sign = 1.0 if TUNE_METRICS[metric] else -1.0
    values = [sign * t[metric] if math.isfinite(t[metric]) else -math.inf for t in tried]
    return grid[int(np.argmax(values))]
