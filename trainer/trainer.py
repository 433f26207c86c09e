"""The trainer: wires the parts from the config and runs the outer loop, on one process or on every
rank of a job (the same code; one process is the trivial job).

    env = context_from_env(cfg)                      # trainer/context.py: torchrun, PyTorchJob, none
    trainer = Trainer(cfg, env).build()              # model, optimizers, reader, checkpointer
    try:
        results = trainer.fit()                      # train, checkpoint, evaluate (every rank)
    finally:
        trainer.close()
        env.close()

:meth:`Trainer.fit` is the whole loop on one screen: every cadence (log, eval, checkpoint) is an
``if`` in it; there are no callbacks. :meth:`Trainer.train_step` is one meta step on each rank::

    sparse = model.embeddings.lookup(batch)          # one lookup, support + query (VSI), pooled;
                                                     # sharded: one AlltoAll of ids, one of rows
    embeddings.prefetch(next_batch)                  # MixCache: stage the next step's misses
    loss, stats = outer_loss(model, sparse, batch, meta, normalizer=env.normalizer(valid))
    loss.backward()                                  # inner loop had no communication; DES's
                                                     # return trip to the owners runs here
    env.reduce_dense_grads(model.parameters())       # bucketed AllReduce (identity for one process)
    optimizers.step()                                # Adam; row grads to owners, row-wise Adagrad

The same five lines run every configuration: the collection (``trainer.sparse``) hides sharding,
MixCache and DES. Model placement (``trainer.parallel.apply``): with ``W > 1`` ranks, MixCache or
DES the embedding rows live in the sharded collection (world size 1 is a valid plan) and the dense
layers are replicated; one process without either keeps the plain collection. Each
rank reads its own row groups (equal steps on every rank), so a step of W ranks with T episodes
each equals a single-process step over the union of their 2T episodes (same loss scaling).

Outputs under ``train.output_dir`` (rank 0): ``config.json`` (the resolved config),
``sharding_plan.json`` (where every table's rows live), ``metrics.jsonl`` (one record per log step
with the communication per step, and per evaluation), ``eval.json`` (final evaluation) and
``checkpoints/`` (one shard per rank; :mod:`trainer.run_state`: resume, reshard, warm start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainer.cache import COUNTERS as CACHE_COUNTERS
from trainer.checkpoint import Checkpointer, writing
from trainer.config import TrainerConfig
from trainer.context import set_determinism
from trainer.data.batch import EpisodeBatch, FeatureLayout
from trainer.data.contract import load_manifest
from trainer.data.reader import EpisodeReader
from trainer.durable import write_json_atomic
from trainer.evaluate import evaluate_splits
from trainer.logging_utils import JsonlLog, Progress
from trainer.meta import StepStats, outer_loss
from trainer.models import RecModel, build_model
from trainer.models.build import build_embeddings
from trainer.optim import build_optimizers
from trainer.parallel.apply import build_dynamic_model, build_parallel_model
from trainer.parallel.comm import CommMeter
from trainer.parallel.env import ParallelEnv, init_parallel
from trainer.parallel.plan import ShardingPlan, build_sharding_plan
from trainer.paths import output_file, safe_join
from trainer.run_state import RunCheckpoints, RunIdentity, RunParts

log = logging.getLogger(__name__)


class Trainer:
    """One training run (see the module docstring).

    Args:
        cfg: the resolved config.
        env: this process's place in the job (None: a single process on ``train.device``).
    """

    def __init__(self, cfg: TrainerConfig, env: ParallelEnv | None = None) -> None:
        self.cfg = cfg
        self.env = env if env is not None else init_parallel({}, device=cfg.train.device)
        self.device = self.env.device
        self.out = Path(cfg.train.output_dir)
        self.step = 0
        self._saved_step = -1

    # --------------------------------------------------------------------------------- wiring
    def build(self) -> Trainer:
        """Read the manifest, build model, optimizers and reader, restore their state (resume
        this run, or warm start from another), then write the run's start-up files."""
        cfg = self.cfg
        set_determinism(cfg.train.deterministic, cfg.train.threads, self.device)
        self.manifest = load_manifest(cfg.data.path)
        self.layout = FeatureLayout.from_manifest(self.manifest)
        self.model, plan = self._build_model()
        self.optimizers = build_optimizers(cfg.optim, self.model)
        self.reader = self._open_reader()
        self.checkpoints = self._checkpoints(plan)
        self.step = self.checkpoints.restore()
        self._saved_step = self.step if self.step > 0 else -1  # a resumed step is on disk already
        self.reader_state = self.reader.state_dict()  # where the next step's batch comes from
        self.metrics = self._start_outputs(plan)
        self._log_start()
        return self

    def _open_reader(self) -> EpisodeReader:
        """This rank's reader of the training split (``[data]``)."""
        cfg, env = self.cfg, self.env
        return EpisodeReader(
            cfg.data.path,
            cfg.data.train_split,
            cfg.data.batch_episodes,
            rank=env.rank,
            world_size=env.world_size,
            seed=cfg.data.seed,
            shuffle=cfg.data.shuffle,
            prefetch=cfg.data.prefetch,
            pin_memory=self.device.type == "cuda",
            task_local_rows=cfg.wants_task_local_rows(),
            shuffle_buffer=cfg.data.shuffle_buffer,
            verify_checksums=cfg.data.verify_checksums,
        )

    def _checkpoints(self, plan: ShardingPlan) -> RunCheckpoints:
        """The run's checkpoints (``<output_dir>/checkpoints``) of the model, optimizers and
        reader; the embedding rows are placed by ``plan`` where they are sharded."""
        cfg, env = self.cfg, self.env
        checkpointer = Checkpointer(
            safe_join(self.out, "checkpoints", "the run's checkpoints directory"),
            rank=env.rank,
            world_size=env.world_size,
            keep=cfg.checkpoint.keep,
            barrier=env.barrier_fn(),
        )
        placement = plan.fingerprint if self.sharded else None
        return RunCheckpoints(
            checkpointer,
            RunParts(self.model, self.optimizers, self.reader, self.device),
            RunIdentity(cfg, self.manifest, env.world_size, placement),
        )

    def _start_outputs(self, plan: ShardingPlan) -> JsonlLog | None:
        """Rank 0: write ``config.json`` and ``sharding_plan.json``, open ``metrics.jsonl`` (cut
        back to the restored step); other ranks write nothing (None)."""
        if not self.env.is_main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        # A link planted at an output's name is refused (trainer.paths); a full disk or a
        # read-only run directory is one error line naming the file (checkpoint.writing).
        records = {"config.json": self.cfg.to_dict(),
                   "sharding_plan.json": {"fingerprint": plan.fingerprint, **plan.to_dict()}}  # fmt: skip
        for name, record in records.items():
            path = output_file(self.out, name, f"the run's {name}")
            with writing(f"the run's {name}", path, ValueError):
                write_json_atomic(path, record)
        for name in ("eval.json", "report.png"):  # written at the end: refuse a link now
            output_file(self.out, name, f"the run's {name}")
        path = output_file(self.out, "metrics.jsonl", "the run's metrics log")
        with writing("the run's metrics log", path, ValueError):
            return JsonlLog(path, self.step)

    def _log_start(self) -> None:
        """One line: the model, the data, the placement and where the run starts."""
        cfg, env = self.cfg, self.env
        n_dense = sum(p.numel() for p in self.model.parameters())
        log.info(
            "%s, meta %s (adapt %s, %d inner step(s)), %d dense parameters, %d embedding rows x %d "
            "(%s over %d rank(s)); %s: %d train episodes, %d steps/epoch of %d x %d episodes; "
            "device %s, backend %s; starting at step %d of %d",
            cfg.model.arch, cfg.meta.mode, cfg.meta.adapt, cfg.meta.inner_steps, n_dense,
            self.layout.total_rows, cfg.model.embedding_dim,
            "sharded" if self.sharded else "one table", env.world_size, cfg.data.path,
            self.reader.num_episodes, self.reader.steps_per_epoch, env.world_size,
            cfg.data.batch_episodes, self.device, env.backend, self.step, cfg.train.steps,
        )  # fmt: skip

    def _build_model(self) -> tuple[RecModel, ShardingPlan]:
        """One rule: the plain collection for one process without MixCache or DES, else the
        sharded collection (world size 1 included) with replicated dense layers; sets
        ``self.sharded``. The plan is logged either way (rank 0)."""
        cfg, env, seed = self.cfg, self.env, self.cfg.train.seed
        self.sharded = env.world_size > 1 or cfg.parallel.cache.enabled or cfg.parallel.des != "off"
        if cfg.parallel.dynamic:  # dynamic tables in front of either collection
            return build_dynamic_model(
                cfg.model, self.layout, env, cfg.parallel, sharded=self.sharded, seed=seed,
                device=self.device, meta=cfg.meta,
            )  # fmt: skip
        if self.sharded:
            return build_parallel_model(
                cfg.model, self.layout, env, cfg.parallel, seed=seed, meta=cfg.meta
            )
        plan = build_sharding_plan(self.layout, 1, cfg.model, cfg.parallel)
        log.info("embedding placement:\n%s", plan)
        embeddings = build_embeddings(cfg.model, self.layout, seed=seed + 1, device=self.device)
        model = build_model(
            cfg.model, self.layout, embeddings, seed=seed, device=self.device, meta=cfg.meta
        )
        return model, plan

    # ----------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        """Train up to ``train.steps``, checkpointing and evaluating on their cadences; then save,
        evaluate ``eval.splits`` and write ``eval.json``. Returns the final evaluation."""
        cfg = self.cfg.train
        every_ckpt = self.cfg.checkpoint.every
        progress = Progress(cfg.steps, self.step)
        sums: dict[str, Any] = {}
        self.env.comm_stats(reset=True)  # start-up broadcasts are not step traffic
        batches = iter(self.reader)
        batch = next(batches) if self.step < cfg.steps else None
        while self.step < cfg.steps:
            self.reader_state = self.reader.state_dict()  # a checkpoint of this step resumes here
            step = self.step + 1
            eval_now = bool(cfg.eval_every) and step % cfg.eval_every == 0 and step < cfg.steps
            save_now = bool(every_ckpt) and step % every_ckpt == 0 and step < cfg.steps
            upcoming = next(batches) if step < cfg.steps else None
            # The cache prefetch of the next step runs during this one; an evaluation or a
            # checkpoint in between needs the collection without a pending exchange.
            stats = self.train_step(batch, None if eval_now or save_now else upcoming)
            self.step = step
            _accumulate(sums, stats, batch.num_samples)
            if step % cfg.log_every == 0 or step == cfg.steps:
                self._log_train(sums, progress)
                sums = {}
            if eval_now:
                self._log_eval(self.evaluate())
            if save_now:
                self.save()
            batch = upcoming
        if self._saved_step != self.step:
            self.save()
        results = self.evaluate()
        self._log_eval(results)
        if self.env.is_main:
            path = output_file(self.out, "eval.json", "the run's evaluation")
            with writing("the run's evaluation", path, ValueError):
                write_json_atomic(path, {"step": self.step, "splits": results})
        return results

    def train_step(self, batch: EpisodeBatch, next_batch: EpisodeBatch | None = None) -> StepStats:
        """One outer step on ``batch`` (a CPU batch from the reader; moved to the device here);
        ``next_batch``: the next step's batch, whose rows the cache may stage meanwhile."""
        env, embeddings = self.env, self.model.embeddings
        batch = batch.to(self.device)
        sparse = embeddings.lookup(batch)
        if next_batch is not None:  # a collective with a sharded cache: every rank, same place
            embeddings.prefetch(next_batch)
        normalizer = env.normalizer(batch.episode_mask.sum())
        loss, stats = outer_loss(self.model, sparse, batch, self.cfg.meta, normalizer)
        loss.backward()  # under DES this also takes the owners' gradients to them
        env.reduce_dense_grads(self.model.parameters())
        self.optimizers.step()
        return stats

    def evaluate(self) -> dict[str, Any]:
        """Evaluate ``eval.splits`` at the current parameters on every rank (each scores its share,
        the metrics are over all ranks' samples; every rank gets them). Its traffic is kept out
        of the per-step communication counters."""
        with _separate_meter(self.env):
            return evaluate_splits(self.model, self.cfg, self.manifest, self.env)

    # ------------------------------------------------------------------------ state and files
    def save(self) -> Path:
        """Checkpoint the current step, one shard per rank (idempotent: re-saving replaces it)."""
        t0 = time.perf_counter()
        path = self.checkpoints.save(self.step, self.reader_state)
        self._saved_step = self.step
        log.info("checkpoint step %d -> %s (%.2fs)", self.step, path, time.perf_counter() - t0)
        return path

    def _log_train(self, sums: dict[str, Any], progress: Progress) -> None:
        """One all-reduce of the counters of every rank, then the record (rank 0 writes it):
        losses, throughput, per collective the calls per rank and the bytes of all ranks per step
        (``comm.<name>.calls`` / ``.bytes``), ``comm.bytes_per_sample``, and with MixCache its
        counters per step (``cache.hits``, ``cache.h2d_bytes``, ...) and ``cache.hit_rate``."""
        env, steps = self.env, sums.pop("steps")
        comm = env.comm_stats(reset=True)
        cache = {}
        if self.cfg.parallel.cache.enabled:  # every rank sends the same keys, rows or not
            cache = {f"cache.{k}": 0.0 for k in CACHE_COUNTERS}
        if self.cfg.parallel.cache.enabled or self.cfg.parallel.dynamic:
            cache.update(self.model.embeddings.cache_stats(reset=True))
            cache.pop("cache.hit_rate", None)  # a ratio: recomputed from the summed counters
        total = env.reduce_sums({**{k: float(v) for k, v in sums.items()}, **comm, **cache})
        episodes = max(total["episodes"], 1.0)
        record: dict[str, float] = {
            "loss": total["loss"] / steps,  # each rank's loss is its share of the global loss
            "support_loss": total["support_loss"] / episodes,
            "query_loss": total["query_loss"] / episodes,
            "episodes_per_step": total["episodes"] / steps,
        }
        for key in comm:
            per = steps * env.world_size if key.endswith(".calls") else steps
            record[key] = total[key] / per
        record["comm.bytes_per_sample"] = total["comm.bytes"] / max(total["samples"], 1.0)
        if cache:  # MixCache (and dynamic tables') counters of all ranks per step, hit rate
            record.update({k: total[k] / steps for k in cache})
        if self.cfg.parallel.cache.enabled:
            record["cache.hit_rate"] = total["cache.hits"] / max(total["cache.lookups"], 1.0)
        if self.cfg.parallel.dynamic:  # rows held now (summed over the ranks' id shards)
            record["dynamic.rows_used"] = total["dynamic.rows_used"]
        progress.add_samples(int(total["samples"]))
        rates = progress.update(self.step)
        log.info(
            "%s | loss %.4f | comm %.0f B/sample",
            progress.line(self.step, rates), record["loss"], record["comm.bytes_per_sample"],
        )  # fmt: skip
        if self.metrics is not None:
            self.metrics.write({"kind": "train", "step": self.step, **record, **rates})

    def _log_eval(self, results: dict[str, Any]) -> None:
        if self.metrics is not None and results:
            self.metrics.write({"kind": "eval", "step": self.step, "splits": results})

    def close(self) -> None:
        """Stop the reader's and the cache's threads (idempotent). The env is closed by whoever
        created it."""
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()
        model = getattr(self, "model", None)
        if model is not None:
            model.embeddings.close()


def _accumulate(sums: dict[str, Any], stats: StepStats, samples: int) -> None:
    """Add one step's statistics to the running sums, as tensors (no device sync until a log
    step); the per-episode means are weighted by episodes so that ranks combine exactly."""
    episodes = stats.episodes.detach().double()
    values = {
        "loss": stats.loss.detach().double(),
        "support_loss": stats.support_loss.detach().double() * episodes,
        "query_loss": stats.query_loss.detach().double() * episodes,
        "episodes": episodes,
    }
    for key, value in values.items():
        sums[key] = sums[key] + value if key in sums else value
    sums["samples"] = sums.get("samples", 0) + samples
    sums["steps"] = sums.get("steps", 0) + 1


@contextmanager
def _separate_meter(env: ParallelEnv) -> Iterator[None]:
    """Count the collectives of the block on a meter of their own (then dropped)."""
    meter, env.comm.meter = env.comm.meter, CommMeter()
    try:
        yield
    finally:
        env.comm.meter = meter
