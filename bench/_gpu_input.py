"""``bench/gpu.py`` part 3: the input pipeline against the step alone.

Synthetic episodes written as the ETL writes them (``trainer.data.synthetic``: ``fields``
single-slot fields, K + Q samples per episode, Zipf ids) are read by the trainer's reader
(``EpisodeReader``: a reading thread and an assembling thread, ``prefetch`` batches ahead, VSI,
batches page-locked when CUDA is present), and each batch goes through ``Trainer.train_step``'s
FOMAML step (moved to the device there, non-blocking from pinned memory). Three figures, in one
process, one after the other:

- ``reader_only``: batches/s of the reader alone (``next()`` as fast as it yields);
- ``step_alone``: the same step on batches already on the device;
- ``pipeline``: reader -> device -> step, as the trainer's loop runs it; ``input_wait_fraction``
  is the share of the wall time the loop spent blocked in ``next()`` (the step waiting on input),
  and ``pipeline_vs_step_alone`` the throughput ratio (1.0: input costs nothing).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from typing import Any

import torch

from bench._gpu_common import Shape, Timer, summarize
from bench._gpu_steps import OPTIM, meta_config
from trainer.data.batch import EpisodeBatch, FeatureLayout
from trainer.data.reader import EpisodeReader
from trainer.data.synthetic import write_synthetic_episodes
from trainer.meta import outer_loss
from trainer.models import ModelConfig, build_model
from trainer.optim import build_optimizers

MODE = "fomaml"
PREFETCH = 2  # the trainer's default ``data.prefetch``


def write_data(shape: Shape, root: str, batches: int) -> FeatureLayout:
    """``batches`` batches' worth of training episodes under ``root``; the feature layout."""
    per_task = 8
    tasks = -(-batches * shape.episodes // per_task)
    manifest = write_synthetic_episodes(
        root,
        num_tasks=tasks,
        k_support=shape.support,
        q_query=shape.query,
        features=[(f"f{i:02d}", shape.buckets, 1) for i in range(shape.fields)],
        dense_width=0,
        episodes_per_task=per_task,
        zipf_exponent=shape.zipf,
        rows_per_group=min(shape.episodes, 4096),
        splits=("train",),
        cold_fraction=0.0,
        valid_fraction=0.0,
        partial_fraction=0.0,
    )
    return FeatureLayout.from_manifest(manifest)


def run_input(
    shape: Shape, device: torch.device, timer: Timer, *, steps: int, warmup: int, work_dir: str
) -> dict[str, Any]:
    """Part 3 (see the module docstring); the data is written under ``work_dir`` and removed."""
    root = tempfile.mkdtemp(prefix="metarec-gpu-bench-", dir=work_dir or None)
    try:
        t0 = time.perf_counter()
        lay = write_data(shape, root, batches=8)
        write_s = time.perf_counter() - t0
        cfg = ModelConfig(arch="melu", embedding_dim=shape.dim, mlp=shape.mlp)
        model = build_model(cfg, lay, seed=0, device=device)
        opt, meta = build_optimizers(OPTIM, model), meta_config(MODE)

        def train_step(batch: EpisodeBatch) -> None:
            batch = batch.to(device)  # Trainer.train_step: non-blocking from pinned memory
            sparse = model.embeddings.lookup(batch)
            loss, _ = outer_loss(model, sparse, batch, meta)
            loss.backward()
            opt.step()

        reader = EpisodeReader(
            root, "train", shape.episodes, seed=0, shuffle=True, prefetch=PREFETCH,
            pin_memory=device.type == "cuda",
        )  # fmt: skip
        try:
            batches = iter(reader)
            waits = []
            for _ in range(warmup + steps):
                w0 = time.perf_counter()
                next(batches)
                waits.append(time.perf_counter() - w0)
            reader_only = summarize(waits[warmup:], shape.samples)

            on_device = [next(batches).to(device) for _ in range(2)]
            alone = timer.run(lambda i: train_step(on_device[i % 2]), warmup, steps)
            step_alone = summarize(alone, shape.samples)

            for _ in range(warmup):
                train_step(next(batches))
            timer.sync()
            pipeline_waits, t0 = [], time.perf_counter()
            for _ in range(steps):
                w0 = time.perf_counter()
                batch = next(batches)
                pipeline_waits.append(time.perf_counter() - w0)
                train_step(batch)
            timer.sync()
            wall = time.perf_counter() - t0
        finally:
            reader.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    pipeline_rate = steps * shape.samples / wall
    return {
        "status": "ok",
        "mode": MODE,
        "reader_prefetch": PREFETCH,
        "pinned_batches": device.type == "cuda",
        "data_write_s": round(write_s, 2),
        "reader_only": reader_only,
        "step_alone": step_alone,
        "pipeline": {
            "samples_per_s": round(pipeline_rate, 1),
            "mean_step_ms": round(wall / steps * 1e3, 3),
            "steps_timed": steps,
            "input_wait_fraction": round(sum(pipeline_waits) / wall, 4),
            "median_wait_ms": round(statistics.median(pipeline_waits) * 1e3, 3),
            "max_wait_ms": round(max(pipeline_waits) * 1e3, 3),
        },
        "pipeline_vs_step_alone": round(pipeline_rate / step_alone["samples_per_s"], 4),
        "reader_vs_step_alone": round(
            reader_only["samples_per_s"] / step_alone["samples_per_s"], 4
        ),
    }
