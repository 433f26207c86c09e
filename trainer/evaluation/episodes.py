"""A split's episodes, read once, at two levels of adaptation.

- **episode** level: the reader's batches as the trainer evaluates them (the first
  ``max_episodes`` of the split in file order); each episode adapts on its own support set.
- **task** level (as production adapts): one pseudo-episode per task whose support set is the
  support samples of ALL the task's evaluated episodes (in file order, i.e. oldest first) and whose
  query set is all their query samples. Each task adapts once, and every query sample of the task
  is scored with that adaptation. Query samples are never used to adapt, at either level.

Example: task ``a`` with episodes 0 (support s0, query q0) and 3 (s3, q3), K = Q = 2 -> one
task episode with support ``[s0, s3]`` (K' = 4) and query ``[q0, q3]`` (Q' = 4); its query
samples keep their episode positions ``[0, 0, 3, 3]`` for ``episode_gauc``.

Each level is a list of :class:`~trainer.data.batch.EpisodeBatch` plus, per query position, the
position of the episode the sample came from (-1 for padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.data.batch import EpisodeBatch
from trainer.data.contract import load_manifest
from trainer.data.reader import EpisodeReader
from trainer.data.vsi import UniqueInverse
from trainer.evaluate import limit_episodes

COLUMNS = ("ids", "dense", "click", "conversion")
"""Per-sample columns carried into task batches (``ids``: the global ids of every slot)."""
TASK_QUERY_SAMPLES = 16_384
"""A task batch holds at most this many padded query samples (and at least one task)."""


@dataclass
class Level:
    """Batches of one level and the episode position of every query sample ``(T, Q)``."""

    batches: list[EpisodeBatch]
    query_episode: list[torch.Tensor]


def split_episodes(root: str, split: str) -> int:
    """Episodes of ``split`` in ``root``; a clear error when it has none."""
    splits = load_manifest(root).splits
    n = int(splits.get(split, {}).get("episodes", 0))
    if not n:
        have = ", ".join(f"{s} ({v.get('episodes', 0)})" for s, v in splits.items()) or "none"
        raise ValueError(
            f"{root} has no episodes in split {split!r} (its splits and episodes: {have}); "
            "choose one with --split"
        )
    return n


def read_level(root: str, split: str, batch_episodes: int, max_episodes: int) -> Level:
    """The episode level: the first ``max_episodes`` (0: all) episodes of ``split``."""
    limit = max_episodes or split_episodes(root, split)
    batches, positions, done = [], [], 0
    with EpisodeReader(root, split, batch_episodes, shuffle=False, epochs=1, prefetch=1) as reader:
        for batch in reader:
            if done >= limit:
                break
            batch = limit_episodes(batch, limit - done)
            kept = batch.num_real_episodes  # kept episodes come first in a batch
            pos = torch.full((batch.num_episodes,), -1, dtype=torch.int64)
            pos[:kept] = torch.arange(done, done + kept)
            batches.append(batch)
            positions.append(pos[:, None].expand(-1, batch.q_query))
            done += kept
    return Level(batches, positions)


def task_level(episodes: Level, slot_offsets: torch.Tensor, total_rows: int) -> Level:
    """The task level of ``episodes`` (module docstring). ``slot_offsets``: each slot's padding
    row (``FeatureLayout.slot_offsets``); ``total_rows``: rows of the stacked table."""
    tasks: dict[int, dict[str, list[torch.Tensor]]] = {}
    for batch, query_episode in zip(episodes.batches, episodes.query_episode, strict=True):
        K = batch.k_support
        cols = {"ids": batch.ids[batch.inverse], "dense": batch.dense, "click": batch.click,
                "conversion": batch.conversion}  # fmt: skip
        for t in torch.nonzero(batch.episode_mask).flatten().tolist():
            ns, nq = int(batch.n_support[t]), int(batch.n_query[t])
            task = tasks.setdefault(int(batch.task_ids[t]), {"pos": []})
            for name, col in cols.items():
                task.setdefault(f"s_{name}", []).append(col[t, :ns])
                task.setdefault(f"q_{name}", []).append(col[t, K : K + nq])
            task["pos"].append(query_episode[t, :nq])
    joined = [(tid, {k: torch.cat(v) for k, v in parts.items()}) for tid, parts in tasks.items()]
    joined.sort(key=lambda item: -len(item[1]["pos"]))  # similar sizes together: less padding
    level = Level([], [])
    start = 0
    while start < len(joined):
        widest = max(len(joined[start][1]["pos"]), 1)
        count = max(1, TASK_QUERY_SAMPLES // widest)
        chunk = joined[start : start + count]
        batch, query_episode = _task_batch(chunk, slot_offsets, total_rows)
        level.batches.append(batch)
        level.query_episode.append(query_episode)
        start += count
    return level


def _task_batch(
    chunk: list[tuple[int, dict[str, torch.Tensor]]], slot_offsets: torch.Tensor, total_rows: int
) -> tuple[EpisodeBatch, torch.Tensor]:
    """One batch of task episodes: support first (K' = the longest support), then query."""
    T = len(chunk)
    K = max(len(t["s_click"]) for _, t in chunk)
    Q = max(len(t["pos"]) for _, t in chunk)
    first = chunk[0][1]
    ids = slot_offsets.expand(T, K + Q, -1).clone()  # padding: each slot's null row
    dense = first["s_dense"].new_zeros(T, K + Q, first["s_dense"].shape[-1])
    click = first["s_click"].new_zeros(T, K + Q)
    conversion = first["s_conversion"].new_zeros(T, K + Q)
    query_episode = torch.full((T, Q), -1, dtype=torch.int64)
    n_support, n_query = torch.zeros(T, dtype=torch.int64), torch.zeros(T, dtype=torch.int64)
    for t, (_, task) in enumerate(chunk):
        ns, nq = len(task["s_click"]), len(task["pos"])
        for name, out in (("ids", ids), ("dense", dense), ("click", click),
                          ("conversion", conversion)):  # fmt: skip
            out[t, :ns] = task[f"s_{name}"]
            out[t, K : K + nq] = task[f"q_{name}"]
        query_episode[t, :nq] = task["pos"]
        n_support[t], n_query[t] = ns, nq
    unique, inverse = UniqueInverse(total_rows)(ids.numpy())
    batch = EpisodeBatch(
        ids=torch.from_numpy(unique),
        inverse=torch.from_numpy(inverse),
        dense=dense,
        click=click,
        conversion=conversion,
        n_support=n_support,
        n_query=n_query,
        task_ids=torch.tensor([tid for tid, _ in chunk], dtype=torch.int64),
        episode_mask=torch.ones(T, dtype=torch.bool),
        k_support=K,
    )
    return batch, query_episode
