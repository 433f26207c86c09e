"""Which rank reads which row groups in which order, per epoch: pure functions of counts (torch-free).

The unit of work is one Parquet row group ``(file, row_group)`` with a known episode count (from
the file footers). For epoch ``e`` every rank computes the same plan, without talking to others:

1. order: the units in manifest order, or (``shuffle``) permuted by ``rng(seed, e)``;
2. balance: longest-processing-time first: units by decreasing size (ties in that order) go to the
   currently lightest bin (ties: lowest bin); then the bins are dealt to ranks by a permutation
   of ``rng(seed, e)`` (identity without shuffle); each rank reads its units in the order of step 1.
   The sizes are processed in the same sequence every epoch, so the bin loads, and hence
   ``max load`` and the step count, are the same in every epoch: :func:`steps_per_epoch` needs
   only the sizes;
3. blocks: a rank's units are grouped into consecutive blocks of at least ``shuffle_buffer``
   episodes (a single unit each when 0); with ``shuffle`` each block's episodes are permuted by
   ``rng(seed, e, rank, block)`` (the bounded within-rank shuffle: a block is what is held in memory).

Every episode is in exactly one rank's plan per epoch. Every rank runs
``steps = ceil(max_rank_load / batch)`` steps; a rank whose share is smaller fills the rest with
padding episodes (masked). Example (sizes [5, 5, 3, 3], 2 ranks, batch 4): loads 8 and 8 ->
2 steps each; with 3 ranks: loads 5, 5, 6 -> 2 steps, ranks fill 3, 3 and 2 padding episodes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def unit_order(num_units: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Step 1: the epoch's order of all units (indices)."""
    if not shuffle:
        return np.arange(num_units)
    return _rng(seed, epoch).permutation(num_units)


def _lpt_bins(sizes: Sequence[int], order: np.ndarray, world_size: int) -> list[list[int]]:
    """Step 2 without relabelling: bins of unit indices (each in ``order``'s order)."""
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    by_size = sorted(range(len(sizes)), key=lambda u: (-sizes[u], position[u]))
    heap = [(0, b) for b in range(world_size)]
    bins: list[list[int]] = [[] for _ in range(world_size)]
    for u in by_size:
        load, b = heapq.heappop(heap)
        bins[b].append(u)
        heapq.heappush(heap, (load + sizes[u], b))
    return [sorted(units, key=lambda u: position[u]) for units in bins]


def assign_units(
    sizes: Sequence[int], world_size: int, seed: int, epoch: int, shuffle: bool
) -> list[list[int]]:
    """Steps 1-2: for every rank, its unit indices in reading order."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    order = unit_order(len(sizes), seed, epoch, shuffle)
    bins = _lpt_bins(sizes, order, world_size)
    if shuffle:
        relabel = _rng(seed, epoch, 1).permutation(world_size)
        bins = [bins[relabel[r]] for r in range(world_size)]
    return bins


def rank_loads(sizes: Sequence[int], world_size: int) -> list[int]:
    """Episodes per bin; the same multiset for every epoch and seed."""
    bins = _lpt_bins(sizes, np.arange(len(sizes)), world_size)
    return [sum(sizes[u] for u in b) for b in bins]


def steps_per_epoch(sizes: Sequence[int], world_size: int, batch_episodes: int) -> int:
    """Batches every rank yields per epoch: ``ceil(max rank load / batch_episodes)``."""
    if batch_episodes < 1:
        raise ValueError(f"batch_episodes must be >= 1, got {batch_episodes}")
    return math.ceil(max(rank_loads(sizes, world_size), default=0) / batch_episodes)


def group_blocks(units: Sequence[int], sizes: Sequence[int], min_block: int) -> list[list[int]]:
    """Step 3: consecutive units grouped into blocks of at least ``min_block`` episodes."""
    blocks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for u in units:
        current.append(u)
        total += sizes[u]
        if total >= min_block:
            blocks.append(current)
            current, total = [], 0
    if current:
        blocks.append(current)
    return blocks


def block_permutation(rows: int, seed: int, epoch: int, rank: int, block: int) -> np.ndarray:
    """Step 3: the order in which a shuffled block's episodes are emitted."""
    return _rng(seed, epoch, rank, block, 2).permutation(rows)
