"""Virtual Sparse Ids (ScaleFreeCTR): de-duplicate a batch's ids so each row is looked up once.

``UniqueInverse(total_rows)(global_ids)`` returns the sorted unique ids and, for every input
position, its index into them (``ids[inverse] == global_ids``). Two methods:

- ``table`` (default while ``total_rows <= 2**28``, so ids fit in int32): sort the ids as int32
  (numpy's SIMD sort), keep the first of each run, write each unique id's rank into a reusable
  position table of ``total_rows`` entries (uint16 while a batch has at most 65,536 ids, else
  int32) and gather the inverse from it. No argsort and no scan of the table: only the U unique
  entries are written, and stale entries are never read;
- ``sort``: ``np.unique(return_inverse=True)`` (argsort-based), for id spaces beyond that.

Measured on batches of the benchmark shape (64 x 64 samples x 16 slots = 65,536 ids, ~32k
unique, 1M-row table; ``bench/reader.py`` -> ``vsi_ms_per_batch``, H100 host): ``table`` 1.0-1.1 ms,
``np.unique`` 3.0 ms, ``torch.unique`` 1.3 ms with 16 threads and 2.6 ms on 2 cores; on the
2-core dev VM also: sorting packed ``id << 17 | position`` keys ~1.5 ms, bitmap + ``flatnonzero``
~4 ms. Since then, on the 2-core dev VM, CPU per batch inside the reader (``stage_ms_per_batch``
``cpu.vsi``): 0.27-0.29 ms, of which the sort ~0.13, finding the unique ids ~0.045, the rank
scatter + inverse gather + widening ~0.085 and the narrowing copy ~0.02 (0.36 ms before int64
gather/scatter indices and ``flatnonzero`` replaced ``np.compress``). Time such steps on a new
batch each round: on one batch repeated, branch prediction learns its pattern (a boolean mask
then looks 4x cheaper than it is).

:class:`TaskLocalRows` then gives each episode its own distinct rows (for inner-loop adaptation
of task-local copies of embedding rows) the same way, without a loop over episodes.
"""

from __future__ import annotations

import numpy as np

TABLE_MAX_ROWS = 1 << 28
"""Largest id space served by the position table (1 GiB of int32)."""


class UniqueInverse:
    """Unique + inverse over a fixed id space ``[0, total_rows)``.

    Keeps its scratch (the position table and per-batch work arrays) between calls: fresh
    multi-hundred-KB arrays per batch cost hundreds of page faults each time (measured: ~450
    faults, ~1-3 ms per 64-episode batch in a VM), more than the work itself. Not thread-safe:
    one instance per thread.
    """

    def __init__(self, total_rows: int) -> None:
        self.total_rows = int(total_rows)
        self.method = "table" if self.total_rows <= TABLE_MAX_ROWS else "sort"
        self._pos: dict[
            type, np.ndarray
        ] = {}  # rank tables, uint16 while n <= 2**16 (half the cache)
        self._scratch: dict[tuple[str, type], np.ndarray] = {}

    def _buf(self, name: str, n: int, dtype: type) -> np.ndarray:
        buf = self._scratch.get((name, dtype))
        if buf is None or buf.size < n:
            buf = self._scratch[(name, dtype)] = np.empty(max(n, 1), dtype=dtype)
        return buf[:n]

    def __call__(
        self,
        flat: np.ndarray,
        method: str | None = None,
        inverse_out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique ``ids`` (int64) and ``inverse`` (int64, shape of ``flat``) of global ids.

        Args:
            flat: ids in ``[0, total_rows)``, any integer dtype and shape (int64, numpy's index
                type, spares the gather an index conversion).
            method: ``table`` or ``sort`` (default: :attr:`method`).
            inverse_out: optional int64 array of ``flat``'s shape to write the inverse into.
        """
        method = method or self.method
        n = flat.size
        inverse = np.empty(flat.shape, np.int64) if inverse_out is None else inverse_out
        if method == "sort" or n == 0:
            ids, inv = np.unique(flat, return_inverse=True)
            inverse[...] = inv.reshape(flat.shape)
            return ids.astype(np.int64, copy=False), inverse
        if method != "table" or self.total_rows > TABLE_MAX_ROWS:
            raise ValueError(
                f"unknown or unusable VSI method {method!r} for {self.total_rows} rows"
            )
        keys = flat.reshape(-1)
        s = self._buf("sorted", n, np.int32)
        np.copyto(s, keys, casting="unsafe")  # the one copy (and narrowing) before the sort
        s.sort(kind="quicksort")  # SIMD-accelerated for 32-bit ints in numpy >= 2
        first = self._buf("first", n, np.bool_)
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        # the run starts' positions, then their ids: ~1.4x faster than np.compress and ~3x faster
        # than boolean indexing, whose branches mispredict on a new pattern every batch
        uniq = s.take(np.flatnonzero(first))
        U = uniq.size
        ids = uniq.astype(np.int64)  # also the scatter index: numpy converts any other to intp
        rank_type = np.uint16 if n <= 1 << 16 else np.int32
        pos = self._pos.get(rank_type)
        if pos is None:
            pos = self._pos[rank_type] = np.empty(self.total_rows, dtype=rank_type)
        ranks = self._scratch.get(("ranks", rank_type))
        if ranks is None or ranks.size < U:
            ranks = self._scratch[("ranks", rank_type)] = np.arange(max(n, 1), dtype=rank_type)
        pos[ids] = ranks[:U]
        gathered = self._buf("gathered", n, rank_type)
        np.take(pos, keys, out=gathered, mode="clip")  # ids are in range: clip avoids buffering
        np.copyto(inverse.reshape(-1), gathered)
        return ids, inverse


class TaskLocalRows:
    """Distinct rows per episode, as indices into the batch's unique ids (keeps its scratch
    between calls, like :class:`UniqueInverse`; not thread-safe).

    It is VSI once more, on the keys ``episode * U + row``: their sorted unique values are
    grouped by episode and ascending within it, so an episode's rows are a contiguous range
    ``[start_t, start_t + count_t)`` of them and ``task_inverse = inverse_of_keys - start_t``.

    Example:
        inverse [[[0, 2], [2, 2]], [[1, 1], [0, 1]]] (T=2, N=2, S=2), U=3 ->
        task_rows [[0, 2], [0, 1]], mask all True, task_inverse [[[0, 1], [1, 1]], [[1, 1], [0, 1]]].
    """

    def __init__(self) -> None:
        self._unique: UniqueInverse | None = None
        self._keys: np.ndarray | None = None
        self._idx: np.ndarray | None = None

    def __call__(
        self, inverse: np.ndarray, num_unique: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Args:
            inverse: (T, N, S) int64 batch inverse (index into the batch's ``ids``).
            num_unique: U, the number of batch ids.

        Returns:
            ``task_rows`` (T, M) int64, ascending per episode and 0-padded; ``mask`` (T, M) bool;
            ``task_inverse`` (T, N, S) int64 with ``task_rows[t][task_inverse[t]] == inverse[t]``;
            M is the largest number of distinct rows of one episode.
        """
        T = inverse.shape[0]
        L = inverse[0].size if T else 0
        if T == 0 or L == 0:
            return (
                np.zeros((T, 0), np.int64),
                np.zeros((T, 0), np.bool_),
                np.zeros(inverse.shape, np.int64),
            )
        space = T * num_unique
        if self._unique is None or self._unique.total_rows < space:
            self._unique = UniqueInverse(
                max(space, 2 * (self._unique.total_rows if self._unique else 0))
            )
        key_type = np.int32 if self._unique.total_rows < 2**31 else np.int64
        if self._keys is None or self._keys.size < T * L or self._keys.dtype != key_type:
            self._keys = np.empty(T * L, dtype=key_type)
        keys = self._keys[: T * L].reshape(T, L)
        np.add(
            inverse.reshape(T, L),
            (np.arange(T, dtype=np.int64) * num_unique)[:, None],
            out=keys,
            casting="unsafe",
        )
        task_inverse = np.empty((T, L), dtype=np.int64)
        uk, _ = self._unique(keys, inverse_out=task_inverse)
        bounds = np.searchsorted(uk, np.arange(T + 1, dtype=uk.dtype) * num_unique)
        start, counts = bounds[:-1], np.diff(bounds)
        task_inverse -= start[:, None]
        M = int(counts.max())
        cols = np.arange(M, dtype=np.int64)
        mask = cols[None, :] < counts[:, None]
        if self._idx is None or self._idx.size < T * M:
            self._idx = np.empty(T * M, dtype=np.int64)
        idx = self._idx[: T * M].reshape(T, M)
        np.add(start[:, None], cols[None, :], out=idx)
        np.minimum(idx, uk.size - 1, out=idx)
        task_rows = np.empty((T, M), dtype=np.int64)
        np.take(uk, idx, out=task_rows, mode="clip")
        task_rows -= (np.arange(T, dtype=np.int64) * num_unique)[:, None]
        task_rows *= mask
        return task_rows, mask, task_inverse.reshape(inverse.shape)


def task_local_rows(
    inverse: np.ndarray, num_unique: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:class:`TaskLocalRows` without kept scratch: ``(task_rows, mask, task_inverse)``."""
    return TaskLocalRows()(inverse, num_unique)
