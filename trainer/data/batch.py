"""What the reader hands the trainer: an :class:`EpisodeBatch` and the :class:`FeatureLayout`.

Worked example (K=2 support, Q=1 query, so N=3; two features ``user`` (buckets 10, 1 slot) and
``tags`` (buckets 5, 2 slots), so S=3 slots and stacked table offsets [0, 10], 15 rows in all)::

    one episode's sparse column (local ids)  [[4, 1, 0],      support sample 0: user 4, tags 1
                                              [7, 2, 3],      support sample 1: user 7, tags 2, 3
                                              [4, 3, 0]]      query sample 0
    stacked global ids (+ offset of slot)    [[4, 11, 10], [7, 12, 13], [4, 13, 10]]
    ids      = [4, 7, 10, 11, 12, 13]        sorted unique global ids of the whole batch (VSI)
    inverse  = [[0, 3, 2], [1, 4, 5], [0, 5, 2]]        ids[inverse] == stacked global ids
    task_rows[t] = [0, 1, 2, 3, 4, 5]  (this episode uses all 6 rows); task_inverse[t] = inverse

Row 10 is ``tags``' padding row (local id 0): every feature's row 0 is its null/padding row.
With ``n_support = [2]`` and ``n_query = [1]``: ``support_mask = [[True, True]]``,
``query_mask = [[True]]``. A batch always has ``T = batch_episodes`` episodes; episodes that only
fill the batch up (the end of a rank's share of an epoch) have ``episode_mask`` False,
``n_support = n_query = 0`` (so every sample mask is False), ``task_ids = 0``, padding ids and
zero labels: they contribute nothing to any masked loss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from trainer.data.contract import Manifest


@dataclass(frozen=True)
class FeatureLayout:
    """How the ``S`` slots of a sample map onto features and the stacked embedding table.

    Built from the manifest (:meth:`from_manifest`); models pool slots into fields with
    ``slot_feature`` (e.g. ``index_add`` / ``scatter`` over the slot axis) and size tables with
    ``feature_buckets`` / ``total_rows``.
    """

    feature_names: tuple[str, ...]
    """Sparse features in slot order (F of them)."""
    feature_slots: tuple[int, ...]
    """Slots of each feature (1 for categorical, >1 for multi-valued)."""
    feature_buckets: tuple[int, ...]
    """Rows of each feature's table, row 0 (padding) included."""
    table_offsets: tuple[int, ...]
    """First row of each feature's table in the stacked id space."""
    total_rows: int
    """Rows of the stacked table (sum of ``feature_buckets``)."""
    slot_feature: torch.Tensor
    """(S,) int64: feature index of each slot."""
    slot_offsets: torch.Tensor
    """(S,) int64: stacked-table offset of each slot (``table_offsets[slot_feature]``)."""
    dense_names: tuple[str, ...]
    """Dense features in column order (``dense_width`` of them)."""
    k_support: int
    q_query: int

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def sparse_width(self) -> int:
        return int(self.slot_feature.numel())

    @property
    def dense_width(self) -> int:
        return len(self.dense_names)

    @property
    def padding_rows(self) -> torch.Tensor:
        """(F,) int64: the global id of each feature's padding row (its local id 0)."""
        return torch.tensor(self.table_offsets, dtype=torch.int64)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> FeatureLayout:
        slot_feature = [i for i, f in enumerate(manifest.features) for _ in range(f.slots)]
        offsets = manifest.table_offsets()
        return cls(
            feature_names=tuple(f.name for f in manifest.features),
            feature_slots=tuple(f.slots for f in manifest.features),
            feature_buckets=tuple(f.buckets for f in manifest.features),
            table_offsets=tuple(offsets),
            total_rows=sum(f.buckets for f in manifest.features),
            slot_feature=torch.tensor(slot_feature, dtype=torch.int64),
            slot_offsets=torch.tensor([offsets[i] for i in slot_feature], dtype=torch.int64),
            dense_names=tuple(
                d.name for d in sorted(manifest.dense_features, key=lambda d: d.index)
            ),
            k_support=manifest.k_support,
            q_query=manifest.q_query,
        )


@dataclass
class EpisodeBatch:
    """T episodes of N = K + Q samples each; S sparse slots, Dn dense features (see module doc)."""

    ids: torch.Tensor
    """(U,) int64 sorted unique ids in the stacked id space (global = table offset + local id)."""
    inverse: torch.Tensor
    """(T, N, S) int64 index into ``ids`` for every slot: ``ids[inverse]`` = global ids."""
    dense: torch.Tensor
    """(T, N, Dn) float32."""
    click: torch.Tensor
    """(T, N) float32 0/1 (0 on padding)."""
    conversion: torch.Tensor
    """(T, N) float32 0/1, -1 = unknown (0 on padding)."""
    n_support: torch.Tensor
    """(T,) int64 real support samples: positions [0, n_support)."""
    n_query: torch.Tensor
    """(T,) int64 real query samples: positions [K, K + n_query)."""
    task_ids: torch.Tensor
    """(T,) int64 (0 for padding episodes)."""
    episode_mask: torch.Tensor
    """(T,) bool: False for padding episodes."""
    k_support: int
    """K: support positions are [0, K), query positions [K, N)."""
    task_rows: torch.Tensor | None = None
    """(T, M) int64 index into ``ids`` of the distinct rows episode t uses (0-padded to M)."""
    task_rows_mask: torch.Tensor | None = None
    """(T, M) bool: True where ``task_rows`` holds a real row (all False for padding episodes)."""
    task_inverse: torch.Tensor | None = None
    """(T, N, S) int64 index into ``task_rows[t]``: ``task_rows[t][task_inverse[t]] == inverse[t]``."""

    @property
    def num_episodes(self) -> int:
        """T, padding episodes included."""
        return int(self.episode_mask.shape[0])

    @property
    def q_query(self) -> int:
        return int(self.inverse.shape[1]) - self.k_support

    @property
    def support_mask(self) -> torch.Tensor:
        """(T, K) bool: True for real support samples."""
        k = torch.arange(self.k_support, device=self.n_support.device)
        return k[None, :] < self.n_support[:, None]

    @property
    def query_mask(self) -> torch.Tensor:
        """(T, Q) bool: True for real query samples."""
        q = torch.arange(self.q_query, device=self.n_query.device)
        return q[None, :] < self.n_query[:, None]

    @property
    def sample_mask(self) -> torch.Tensor:
        """(T, N) bool: support mask then query mask."""
        return torch.cat([self.support_mask, self.query_mask], dim=1)

    @property
    def num_samples(self) -> int:
        """Real samples (support + query) in the batch."""
        return int((self.n_support + self.n_query).sum())

    @property
    def num_real_episodes(self) -> int:
        return int(self.episode_mask.sum())

    def _map(self, fn) -> EpisodeBatch:
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(value)
        return replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> EpisodeBatch:
        """A copy on ``device`` (asynchronous from pinned memory when ``non_blocking``)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> EpisodeBatch:
        """A copy in page-locked host memory (for asynchronous host-to-device copies)."""
        return self._map(lambda t: t.pin_memory())
