"""Meta-IO online reader: Parquet row groups of episodes -> :class:`EpisodeBatch` streams.

    from trainer.data.reader import EpisodeReader
    with EpisodeReader("out/episodes/interval=...", "train", batch_episodes=64,
                       rank=rank, world_size=world) as reader:
        for batch in reader:                      # infinite by default (epochs=None)
            batch = batch.to("cuda")              # pinned when CUDA is present: async copy
            ...
            ckpt["reader"] = reader.state_dict()  # {"epoch", "step_in_epoch", "seed", "world_size"}

Pipeline (``prefetch`` > 0: two daemon threads; ``prefetch=0``: everything inline):

1. reading thread, one block ahead: ``ParquetFile.read_row_group(i, columns=...)`` of the row
   groups this rank owns this epoch (plan: :mod:`trainer.data.sharding`), projecting only the 7
   columns the trainer needs, through any ``pyarrow.fs`` URI (local path, ``file://``, ``s3://``),
   on this thread alone (Arrow's pool would add CPU, not overlap: the assembling thread is the
   other busy one);
   decoded without per-row Python (:mod:`trainer.data.files`: list column -> offsets checked
   vectorised -> flat values -> numpy ``reshape(rows, K + Q, width)``, zero copy);
2. assembling thread, ``prefetch`` batches ahead: cut the blocks into batches of T episodes
   (a slice, or one ``np.take`` of the block's permutation when shuffled), stack ids into the global
   id space (``+ slot offset``) and de-duplicate them (VSI, :mod:`trainer.data.vsi`), optionally
   with per-episode rows (``task_local_rows``), and write everything straight into new torch
   tensors, page-locked when ``pin_memory`` (no extra copy). Work arrays are reused between
   batches: fresh ones cost ~450 page faults per 64-episode batch, more than the work itself.
   The ids are gathered as int64 (numpy's index type) and offset in place; VSI narrows them
   once for its sort (``tests/trainer/data/test_assembly.py``: equal to a plain reference).

Memory: about three blocks (one being read, one queued, one being cut; a block is one row group,
or ``shuffle_buffer`` episodes) plus ``prefetch`` batches. Measured by ``bench/reader.py`` (H100
host; 64 x (32 + 32) samples x 16 fields, 1M-row table; 16 cores / pinned to 2): 35.7k / 33.4k
episodes/s (2.3M / 2.1M samples/s), 0.58x / 0.52x a raw ``pyarrow`` scan of the same row groups,
161x / 133x a pandas per-task reader; the assembling stage (1.4-1.7 ms per batch, VSI ~1 ms of
it) is the bottleneck, reading takes 0.9-1.1 ms per batch. On the 2-core dev VM (issue 14), CPU
per batch: reading 0.52-0.66 ms (decoding, ~72% of it the ``sparse`` column), assembling
0.35-0.41 ms (VSI 0.27-0.29 of it); the process does ~2x the raw scan's CPU work.

Validation up front (ContractError naming the file and what to do): the manifest (schema
version), every file of the split exists and is Parquet, has the needed columns with the contract's
types (:mod:`trainer.data.schema`), its row/row-group counts match the manifest, and the footer's
value counts of every list column equal ``rows * (K + Q) * width`` per row group. The exact
per-episode list lengths are checked (vectorised on the offsets) as each row group is read.

Equal steps: every rank yields :attr:`steps_per_epoch` batches of exactly ``batch_episodes``
episodes per epoch; where a rank's share runs out, the batch is filled with padding episodes
(``episode_mask`` False, ``n_support = n_query = 0``, padding ids, zero labels) and a rank may get
whole padding batches. Across the ranks, every episode of the split appears exactly once per epoch.

Resume: :meth:`state_dict` is the position of the next batch the consumer will get;
:meth:`load_state_dict` continues the same stream, skipping whole row groups by their counts
without reading them (a shuffled block that is partly consumed is read and its permutation replayed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from trainer.data import sharding
from trainer.data.batch import EpisodeBatch, FeatureLayout
from trainer.data.contract import Manifest, load_manifest
from trainer.data.files import READ_COLUMNS, Chunk, EpisodeFiles
from trainer.data.prefetch import Prefetcher
from trainer.data.vsi import TaskLocalRows, UniqueInverse

__all__ = ["READ_COLUMNS", "EpisodeReader"]
STATE_KEYS = ("epoch", "step_in_epoch", "seed", "world_size")


class EpisodeReader:
    """Stream ``split`` of an ETL output as :class:`EpisodeBatch` es (see the module docstring).

    Args:
        root: the ETL output directory of one interval (local path or ``pyarrow.fs`` URI).
        split: ``train``, ``valid`` or ``test_cold``.
        batch_episodes: T, episodes per batch (always exactly T, padded).
        rank, world_size: this process's data-parallel rank and the number of ranks (plain ints).
        seed: seed of the per-epoch shuffles; all ranks must pass the same.
        shuffle: shuffle row groups across ranks and episodes within blocks, per epoch.
        prefetch: batches prepared ahead by the assembling thread (0: no threads, all inline).
        pin_memory: page-lock the batch tensors (None: when CUDA is available).
        task_local_rows: also fill ``task_rows``/``task_rows_mask``/``task_inverse``.
        epochs: number of epochs to iterate (None: forever; 1 for evaluation).
        shuffle_buffer: with ``shuffle``, episodes are permuted within blocks of consecutive row
            groups holding at least this many episodes (0: within each row group); bounds memory.
        verify_checksums: also compare every file's sha256 with the manifest (reads all bytes).
    """

    def __init__(
        self,
        root: str,
        split: str,
        batch_episodes: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        prefetch: int = 2,
        pin_memory: bool | None = None,
        task_local_rows: bool = False,
        epochs: int | None = None,
        shuffle_buffer: int = 0,
        verify_checksums: bool = False,
    ) -> None:
        if batch_episodes < 1:
            raise ValueError(f"batch_episodes must be >= 1, got {batch_episodes}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if prefetch < 0 or shuffle_buffer < 0 or (epochs is not None and epochs < 0):
            raise ValueError("prefetch, shuffle_buffer and epochs must be >= 0")
        self.root, self.split = root, split
        self.batch_episodes, self.rank, self.world_size = batch_episodes, rank, world_size
        self.seed, self.shuffle, self.prefetch = seed, shuffle, prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.task_local_rows = task_local_rows
        self.epochs, self.shuffle_buffer = epochs, shuffle_buffer

        self.manifest: Manifest = load_manifest(root)
        self.layout = FeatureLayout.from_manifest(self.manifest)
        self._files = EpisodeFiles(root, split, self.manifest, verify_checksums)
        self._sizes = self._files.sizes
        self.steps_per_epoch = sharding.steps_per_epoch(self._sizes, world_size, batch_episodes)
        if self.steps_per_epoch == 0 and epochs is None:
            raise ValueError(f"{root}: split {split!r} has no episodes; nothing to stream forever")

        m = self.manifest
        self._N, self._S, self._Dn = m.samples_per_episode, m.sparse_width, m.dense_width
        # each sample's slot offsets, tiled over its N samples: the add's inner loop runs over
        # N * S contiguous values instead of S (broadcasting (T, N, S) + (S,) is ~7x slower)
        self._sample_offsets = np.tile(self.layout.slot_offsets.numpy(), (self._N, 1))
        self._unique = UniqueInverse(self.layout.total_rows)
        self._task_rows = TaskLocalRows()
        self._keys = np.zeros((batch_episodes, self._N, self._S), np.int64)  # gathered ids
        self._epoch, self._step = 0, 0
        self._stream: Iterator[tuple[int, int, EpisodeBatch]] | None = None

    # --- properties --------------------------------------------------------------------------
    @property
    def unit_sizes(self) -> list[int]:
        """Episodes per sharding unit (row group), in file order: what the rank plan is built from."""
        return list(self._sizes)

    @property
    def num_episodes(self) -> int:
        """Episodes of the split (all ranks together)."""
        return sum(self._sizes)

    def rank_episodes(self, epoch: int = 0) -> int:
        """Real episodes this rank yields in ``epoch``."""
        units = sharding.assign_units(self._sizes, self.world_size, self.seed, epoch, self.shuffle)
        return sum(self._sizes[u] for u in units[self.rank])

    # --- reading and converting --------------------------------------------------------------
    def _read_unit(self, unit: int) -> Chunk:
        return self._files.read(unit)

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
        """A new output tensor (pinned when configured: written in place, no extra copy) and its
        numpy view."""
        t = torch.empty(shape, dtype=dtype, pin_memory=self.pin_memory)
        return t, t.numpy()

    def _assemble(self, parts: list[tuple[Chunk, Any]]) -> EpisodeBatch:
        """One batch from ``(chunk, rows)`` parts (``rows``: a slice or an index array), padded to T.

        The gather target and the VSI work arrays are reused between batches (fresh large arrays
        per batch cost more in page faults than the work); the outputs are new tensors. The local
        ids are gathered into int64 keys and offset in place: VSI narrows them once for its sort
        and gathers with them as they are (numpy's index type).
        """
        T, N, S, Dn = self.batch_episodes, self._N, self._S, self._Dn
        keys = self._keys
        dense_t, dense = self._empty((T, N, Dn), torch.float32)
        click_t, click = self._empty((T, N), torch.float32)
        conv_t, conv = self._empty((T, N), torch.float32)
        small = [self._empty((T,), torch.int64) for _ in range(3)]  # task_id, n_support, n_query
        at = 0
        for chunk, rows in parts:
            if isinstance(rows, slice):
                n = rows.stop - rows.start
                keys[at : at + n] = chunk.sparse[rows]
                dense[at : at + n] = chunk.dense[rows]
            else:
                n = len(rows)
                np.take(chunk.sparse, rows, axis=0, out=keys[at : at + n], mode="clip")
                np.take(chunk.dense, rows, axis=0, out=dense[at : at + n], mode="clip")
            click[at : at + n] = chunk.click[rows]
            conv[at : at + n] = chunk.conversion[rows]
            for (_, out), src in zip(
                small, (chunk.task_id, chunk.n_support, chunk.n_query), strict=True
            ):
                out[at : at + n] = src[rows]
            at += n
        # padding episodes: local id 0 everywhere (each feature's padding row), zeros elsewhere
        for arr in (keys, dense, click, conv, *(v for _, v in small)):
            arr[at:] = 0
        np.add(keys, self._sample_offsets, out=keys)  # local -> stacked global ids
        inverse_t, inverse = self._empty((T, N, S), torch.int64)
        ids, _ = self._unique(keys, inverse_out=inverse)
        mask_t, mask = self._empty((T,), torch.bool)
        mask[:] = np.arange(T) < at
        extra: dict[str, torch.Tensor] = {}
        if self.task_local_rows:
            rows_, rows_mask, tinv = self._task_rows(inverse, ids.size)
            rows_mask &= mask[:, None]
            extra = {"task_rows": rows_, "task_rows_mask": rows_mask, "task_inverse": tinv}
            extra = {k: self._tensor(v) for k, v in extra.items()}
        return EpisodeBatch(
            ids=self._tensor(ids),
            inverse=inverse_t,
            dense=dense_t,
            click=click_t,
            conversion=conv_t,
            task_ids=small[0][0],
            n_support=small[1][0],
            n_query=small[2][0],
            episode_mask=mask_t,
            k_support=self.manifest.k_support,
            **extra,
        )

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return t.pin_memory() if self.pin_memory else t

    def _epoch_blocks(self, epoch: int, start_step: int) -> Iterator[tuple]:
        """This rank's blocks of ``epoch`` from ``start_step`` on, decoded, as
        ``("block", chunk, order, start, stop)``: emit ``order[start:stop]`` (or rows
        ``start:stop`` when ``order`` is None) of ``chunk``."""
        units = sharding.assign_units(self._sizes, self.world_size, self.seed, epoch, self.shuffle)
        min_block = max(self.shuffle_buffer, 1) if self.shuffle else 1
        blocks = sharding.group_blocks(units[self.rank], self._sizes, min_block)
        skip = start_step * self.batch_episodes
        for b, block in enumerate(blocks):
            rows = sum(self._sizes[u] for u in block)
            if skip >= rows:  # resume: whole row groups skipped by their counts, unread
                skip -= rows
                continue
            if self.shuffle:
                chunk = Chunk.concat([self._read_unit(u) for u in block])
                order = sharding.block_permutation(rows, self.seed, epoch, self.rank, b)
                yield "block", chunk, order, skip, rows
            else:  # blocks are single units, read in file order
                yield "block", self._read_unit(block[0]), None, skip, rows
            skip = 0

    def _blocks(self, epoch: int, step: int) -> Iterator[tuple]:
        """Stage 1 (reading thread): ``("epoch", epoch, first_step)`` then that epoch's blocks."""
        while self.epochs is None or epoch < self.epochs:
            yield "epoch", epoch, step
            yield from self._epoch_blocks(epoch, step)
            epoch, step = epoch + 1, 0

    def _batches(self, items: Iterator[tuple]) -> Iterator[tuple[int, int, EpisodeBatch]]:
        """Stage 2 (assembling thread): cut blocks into batches of T; end every epoch with its
        partial batch and all-padding batches up to ``steps_per_epoch``."""
        T = self.batch_episodes
        epoch, step, pending, have = -1, 0, [], 0

        def finish() -> Iterator[tuple[int, int, EpisodeBatch]]:
            first_padding = step + 1 if pending else step
            if pending:
                yield epoch, step, self._assemble(pending)
            for s in range(first_padding, self.steps_per_epoch):
                yield epoch, s, self._assemble([])

        try:
            for item in items:
                if item[0] == "epoch":
                    if epoch >= 0:
                        yield from finish()
                    _, epoch, step = item
                    pending, have = [], 0
                    continue
                _, chunk, order, start, stop = item
                while start < stop:
                    take = min(T - have, stop - start)
                    part = (
                        slice(start, start + take) if order is None else order[start : start + take]
                    )
                    pending.append((chunk, part))
                    have, start = have + take, start + take
                    if have == T:
                        yield epoch, step, self._assemble(pending)
                        pending, have, step = [], 0, step + 1
            if epoch >= 0:
                yield from finish()
        finally:
            items.close()

    def _start(self) -> Iterator[tuple[int, int, EpisodeBatch]]:
        """The batch stream from the current position: inline (prefetch 0), or two threads: one
        reads and decodes row groups (one block ahead), one assembles batches (VSI, tensors)."""
        items = self._blocks(self._epoch, self._step)
        if not self.prefetch:
            return self._batches(items)
        reading = Prefetcher(items, 1, "metarec-reader-read")
        return Prefetcher(self._batches(reading), self.prefetch, "metarec-reader-assemble")

    # --- iteration, resume, shutdown ---------------------------------------------------------
    def __iter__(self) -> Iterator[EpisodeBatch]:
        while True:
            if self._stream is None:
                self._stream = self._start()
            try:
                epoch, step, batch = next(self._stream)
            except StopIteration:
                return
            step += 1
            self._epoch, self._step = (
                (epoch + 1, 0) if step >= self.steps_per_epoch else (epoch, step)
            )
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Position of the next batch: ``{"epoch", "step_in_epoch", "seed", "world_size"}``."""
        return {
            "epoch": self._epoch,
            "step_in_epoch": self._step,
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the stream at ``state`` (from :meth:`state_dict` of a reader with the same data,
        seed and world size; the batch size and shuffle settings must also be the same)."""
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"reader state lacks {', '.join(missing)}: got {sorted(state)}")
        for key, mine in (("seed", self.seed), ("world_size", self.world_size)):
            if int(state[key]) != mine:
                raise ValueError(
                    f"reader state was saved with {key}={state[key]}, this reader has {key}={mine}; "
                    f"resuming would not continue the same sample stream: restart with {key}={state[key]} "
                    "or start the data stream afresh (do not load the reader state)"
                )
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        if epoch < 0 or not 0 <= step < max(self.steps_per_epoch, 1):
            raise ValueError(
                f"reader state position epoch={epoch}, step={step} is out of range "
                f"(steps_per_epoch={self.steps_per_epoch})"
            )
        self.close()
        self._epoch, self._step = epoch, step

    def close(self) -> None:
        """Stop the prefetch thread (idempotent); a later iteration restarts from the position."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        self._files.close()

    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
