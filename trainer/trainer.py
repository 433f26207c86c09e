"""The trainer: wires the parts from the config and runs the outer loop.

    trainer = Trainer(cfg, ParallelContext()).build()   # model, optimizers, reader, checkpointer
    try:
        results = trainer.fit()                         # train, checkpoint, evaluate
    finally:
        trainer.close()

:meth:`Trainer.fit` is the whole loop on one screen: every cadence (log, eval, checkpoint) is an
``if`` in it; there are no callbacks. :meth:`Trainer.train_step` is one meta step::

    rows = model.embeddings.lookup(batch.ids)            # one lookup, support + query (VSI)
    loss, stats = outer_loss(model, rows, batch, meta, normalizer=ctx.normalizer(...))
    loss.backward()
    ctx.reduce_dense_grads(model.parameters())           # identity for one process
    optimizers.step(batch.ids, rows)                     # Adam (dense) + row-wise Adagrad (rows)

Outputs under ``train.output_dir``: ``config.json`` (the resolved config), ``metrics.jsonl`` (one
record per log step and per evaluation), ``eval.json`` (final evaluation) and ``checkpoints/``
(:mod:`trainer.run_state`: resume, warm start).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from trainer import run_state
from trainer.checkpoint import Checkpointer
from trainer.config import TrainerConfig
from trainer.context import ParallelContext, resolve_device, set_determinism
from trainer.data.batch import EpisodeBatch, FeatureLayout
from trainer.data.contract import load_manifest
from trainer.data.reader import EpisodeReader
from trainer.evaluate import evaluate_splits
from trainer.logging_utils import JsonlLog, Progress, write_json_atomic
from trainer.meta import StepStats, outer_loss
from trainer.models import build_model
from trainer.optim import build_optimizers

log = logging.getLogger(__name__)


class Trainer:
    """One training run (see the module docstring).

    Args:
        cfg: the resolved config.
        context: rank, world size and communication hooks (None: a single process).
    """

    def __init__(self, cfg: TrainerConfig, context: ParallelContext | None = None) -> None:
        self.cfg = cfg
        self.ctx = context or ParallelContext()
        self.out = Path(cfg.train.output_dir)
        self.step = 0
        self._saved_step = -1

    # --------------------------------------------------------------------------------- wiring
    def build(self) -> Trainer:
        """Read the manifest, build model, optimizers, reader and checkpointer, then restore
        (resume this run, or warm start from another) and open ``metrics.jsonl``."""
        cfg, ctx = self.cfg, self.ctx
        self.device = resolve_device(cfg.train.device, ctx.local_rank)
        set_determinism(cfg.train.deterministic, cfg.train.threads, self.device)
        self.manifest = load_manifest(cfg.data.path)
        self.layout = FeatureLayout.from_manifest(self.manifest)
        seed = cfg.train.seed
        embeddings = ctx.build_embeddings(cfg.model, self.layout, seed=seed + 1, device=self.device)
        self.model = build_model(cfg.model, self.layout, embeddings, seed=seed, device=self.device)
        self.optimizers = build_optimizers(cfg.optim, self.model)
        self.reader = EpisodeReader(
            cfg.data.path,
            cfg.data.train_split,
            cfg.data.batch_episodes,
            rank=ctx.rank,
            world_size=ctx.world_size,
            seed=cfg.data.seed,
            shuffle=cfg.data.shuffle,
            prefetch=cfg.data.prefetch,
            pin_memory=self.device.type == "cuda",
            task_local_rows=cfg.wants_task_local_rows(),
            shuffle_buffer=cfg.data.shuffle_buffer,
            verify_checksums=cfg.data.verify_checksums,
        )
        self.checkpointer = Checkpointer(
            self.out / "checkpoints",
            rank=ctx.rank,
            world_size=ctx.world_size,
            keep=cfg.checkpoint.keep,
            barrier=ctx.barrier_fn(),
        )
        self.step = run_state.restore(self)
        self._saved_step = self.step if self.step > 0 else -1  # a resumed step is on disk already
        self.metrics = None
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "config.json", cfg.to_dict())
            self.metrics = JsonlLog(self.out / "metrics.jsonl", resume_step=self.step)
        n_dense = sum(p.numel() for p in self.model.parameters())
        log.info(
            "%s, meta %s (adapt %s, %d inner step(s)), %d dense parameters, %d embedding rows x %d; "
            "%s: %d train episodes, %d steps/epoch; device %s; starting at step %d of %d",
            cfg.model.arch, cfg.meta.mode, cfg.meta.adapt, cfg.meta.inner_steps, n_dense,
            self.layout.total_rows, cfg.model.embedding_dim, cfg.data.path,
            self.reader.num_episodes, self.reader.steps_per_epoch, self.device, self.step,
            cfg.train.steps,
        )  # fmt: skip
        return self

    # ----------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        """Train up to ``train.steps``, checkpointing and evaluating on their cadences; then save,
        evaluate ``eval.splits`` and write ``eval.json``. Returns the final evaluation."""
        cfg = self.cfg.train
        every_ckpt = self.cfg.checkpoint.every
        progress = Progress(cfg.steps, self.step)
        sums: dict[str, Any] = {}
        batches = iter(self.reader)
        while self.step < cfg.steps:
            batch = next(batches)
            progress.add_samples(batch.num_samples)
            stats = self.train_step(batch)
            self.step += 1
            _accumulate(sums, stats)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log_train(sums, progress)
                sums = {}
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self._log_eval(self.evaluate())
            if every_ckpt and self.step % every_ckpt == 0 and self.step < cfg.steps:
                self.save()
        if self._saved_step != self.step:
            self.save()
        results = self.evaluate()
        self._log_eval(results)
        if self.ctx.is_main:
            write_json_atomic(self.out / "eval.json", {"step": self.step, "splits": results})
        return results

    def train_step(self, batch: EpisodeBatch) -> StepStats:
        """One outer step on ``batch`` (a CPU batch from the reader; moved to the device here)."""
        batch = batch.to(self.device)
        rows = self.model.embeddings.lookup(batch.ids)
        normalizer = self.ctx.normalizer(batch.episode_mask.sum())
        loss, stats = outer_loss(self.model, rows, batch, self.cfg.meta, normalizer)
        loss.backward()
        self.ctx.reduce_dense_grads(self.model.parameters())
        self.optimizers.step(batch.ids, rows)
        return stats

    def evaluate(self) -> dict[str, Any]:
        """Evaluate ``eval.splits`` at the current parameters (rank 0; others return {})."""
        if not self.ctx.is_main:
            return {}
        return evaluate_splits(self.model, self.cfg, self.manifest)

    # ------------------------------------------------------------------------ state and files
    def save(self) -> Path:
        """Checkpoint the current step (idempotent: re-saving a step replaces it)."""
        t0 = time.perf_counter()
        path = self.checkpointer.save(
            self.step, run_state.state_dict(self), meta=run_state.checkpoint_meta(self)
        )
        self._saved_step = self.step
        log.info("checkpoint step %d -> %s (%.2fs)", self.step, path, time.perf_counter() - t0)
        return path

    def _log_train(self, sums: dict[str, Any], progress: Progress) -> None:
        sums = self.ctx.reduce_sums({k: float(v) for k, v in sums.items()})
        n = max(sums.pop("steps"), 1.0)
        record = {k: v / n for k, v in sums.items()}
        rates = progress.update(self.step)
        log.info("%s | loss %.4f", progress.line(self.step, rates), record["loss"])
        if self.metrics is not None:
            self.metrics.write({"kind": "train", "step": self.step, **record, **rates})

    def _log_eval(self, results: dict[str, Any]) -> None:
        if self.metrics is not None and results:
            self.metrics.write({"kind": "eval", "step": self.step, "splits": results})

    def close(self) -> None:
        """Stop the reader's threads (idempotent)."""
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()


def _accumulate(sums: dict[str, torch.Tensor], stats: StepStats) -> None:
    """Add one step's statistics to the running sums, as tensors: no device sync until a log step."""
    for key in ("loss", "support_loss", "query_loss", "episodes"):
        value = getattr(stats, key).detach().double()
        sums[key] = sums[key] + value if key in sums else value
    sums["steps"] = sums.get("steps", 0) + 1
