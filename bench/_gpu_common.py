"""Shared pieces of ``bench/gpu.py``: the shape, the timer, the time budget, Zipf batches and the
accounting of model FLOPs and embedding bytes (torch, numpy and the project only)."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from trainer.data.batch import EpisodeBatch, FeatureLayout


@dataclass(frozen=True)
class Shape:
    """The benchmarked step: ``episodes`` x (``support`` + ``query``) samples of ``fields``
    single-slot fields (``buckets`` rows each, one stacked table), MeLU concat-MLP ``mlp``-1."""

    fields: int
    buckets: int
    dim: int
    mlp: tuple[int, ...]
    episodes: int
    support: int
    query: int
    zipf: float

    @property
    def samples(self) -> int:
        return self.episodes * (self.support + self.query)

    @property
    def rows(self) -> int:
        return self.fields * self.buckets

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mlp": [*self.mlp, 1], "samples_per_step": self.samples}


class Budget:
    """The run's wall-clock budget: parts ask :meth:`allows` before they start."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, need_s: float) -> bool:
        return self.left() >= need_s

    def skip_reason(self, need_s: float) -> str:
        return (
            f"skipped: {self.left():.0f} s of the {self.seconds:.0f} s budget left, "
            f"this part needs about {need_s:.0f} s (--budget-s)"
        )


class Timer:
    """Times one call of a function: CUDA events on a GPU (after the device's queued work), the
    performance counter on the CPU. :meth:`run` warms up first and returns per-call seconds."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def run(self, fn: Callable[[int], Any], warmup: int, iters: int) -> list[float]:
        """``fn(i)`` for ``warmup`` untimed then ``iters`` timed calls; seconds per call."""
        for i in range(warmup):
            fn(i)
        self.sync()
        if not self.cuda:
            out = []
            for i in range(iters):
                t0 = time.perf_counter()
                fn(warmup + i)
                out.append(time.perf_counter() - t0)
            return out
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(iters)
        ]
        for i, (start, end) in enumerate(events):
            start.record()
            fn(warmup + i)
            end.record()
        self.sync()
        return [start.elapsed_time(end) / 1e3 for start, end in events]


def summarize(seconds: list[float], samples: int) -> dict[str, float]:
    """Median / min / max step time (ms) and samples/s at the median."""
    med = statistics.median(seconds)
    return {
        "samples_per_s": round(samples / med, 1),
        "median_step_ms": round(med * 1e3, 3),
        "min_step_ms": round(min(seconds) * 1e3, 3),
        "max_step_ms": round(max(seconds) * 1e3, 3),
        "steps_timed": len(seconds),
    }


def layout(shape: Shape, k_support: int = 0, q_query: int = 0) -> FeatureLayout:
    """One stacked table of ``shape.fields`` tables of ``shape.buckets`` rows, no dense features."""
    offsets = [f * shape.buckets for f in range(shape.fields)]
    return FeatureLayout(
        feature_names=tuple(f"f{i}" for i in range(shape.fields)),
        feature_slots=(1,) * shape.fields,
        feature_buckets=(shape.buckets,) * shape.fields,
        table_offsets=tuple(offsets),
        total_rows=shape.rows,
        slot_feature=torch.arange(shape.fields),
        slot_offsets=torch.tensor(offsets),
        dense_names=(),
        k_support=k_support,
        q_query=q_query,
    )


class ZipfBatches:
    """Episode batches whose ids are Zipf(``shape.zipf``) per field, the popular ids scattered
    over each table, de-duplicated (VSI) as the reader does; labels Bernoulli(0.3)."""

    def __init__(self, shape: Shape, seed: int) -> None:
        self.shape, self.rng = shape, np.random.default_rng(seed)
        ranks = np.arange(1, shape.buckets, dtype=np.float64)
        self.cdf = np.cumsum(ranks**-shape.zipf)
        self.cdf /= self.cdf[-1]
        self.perm = np.random.default_rng(7).permutation(shape.buckets - 1) + 1
        self.offsets = np.arange(shape.fields, dtype=np.int64) * shape.buckets

    def next(self) -> EpisodeBatch:
        s = self.shape
        T, N, K = s.episodes, s.support + s.query, s.support
        local = np.searchsorted(self.cdf, self.rng.random((T, N, s.fields)))
        ids = self.perm[np.minimum(local, s.buckets - 2)] + self.offsets
        uniq, inverse = np.unique(ids, return_inverse=True)
        return EpisodeBatch(
            ids=torch.from_numpy(uniq),
            inverse=torch.from_numpy(inverse.reshape(T, N, s.fields)),
            dense=torch.zeros(T, N, 0),
            click=torch.from_numpy((self.rng.random((T, N)) < 0.3).astype(np.float32)),
            conversion=torch.zeros(T, N),
            n_support=torch.full((T,), K),
            n_query=torch.full((T,), s.query),
            task_ids=torch.arange(T),
            episode_mask=torch.ones(T, dtype=torch.bool),
            k_support=K,
        )


def mlp_macs_per_sample(shape: Shape) -> int:
    """Multiply-adds of one forward of the MLP over the concatenated fields (256-128-1: 98,432)."""
    widths = [shape.fields * shape.dim, *shape.mlp, 1]
    return sum(a * b for a, b in itertools.pairwise(widths))


def model_flops(shape: Shape) -> int:
    """The useful FLOPs of one step: forward + backward (2 + 4 FLOPs per multiply-add) of the MLP
    on every sample once. A meta step does this too (support, then query at the adapted
    parameters) plus the low-rank adaptation (and MAML's second order): a lower bound there."""
    return 6 * mlp_macs_per_sample(shape) * shape.samples


def embedding_bytes(shape: Shape, unique_rows: int, row_floats: int) -> int:
    """The fewest bytes the embedding work of one step moves through device memory (fp32): read
    the step's unique rows, write the pooled fields, read their gradient, write the rows'
    gradient, read and write the rows and their Adagrad state (``row_floats`` per row)."""
    per_field = shape.samples * shape.fields * shape.dim * 4
    return unique_rows * shape.dim * 4 * 2 + 2 * per_field + unique_rows * row_floats * 4 * 2
