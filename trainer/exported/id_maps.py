"""Dynamic tables in an export: each dynamic feature's id -> row map, written and read without
pickle, and the translation of ids to the rows of the exported (physical) tables.

A run with ``parallel.dynamic`` trains a small physical table per dynamic feature (null row,
fallback rows, one row per admitted id: :mod:`trainer.dynamic`). Its export holds that physical
table in ``tables/emb.npy`` (and ``linear.npy``) and, per dynamic feature, the map of
:func:`trainer.dynamic.exported_id_map`::

    model.json    "dynamic": {"<feature>": {"capacity": C, "fallback_rows": F,
                                            "ids": "tables/id_map/<feature>.ids.npy",
                                            "rows": "tables/id_map/<feature>.rows.npy"}}
    tables/id_map/<feature>.ids.npy    (A,) int64, the admitted local ids, sorted
    tables/id_map/<feature>.rows.npy   (A,) int64, the row of each in the feature's physical table

Both are ``.npy`` files listed in ``CHECKSUMS`` like every tensor. Scoring translates a global id
of the LOGICAL layout (the ids the encoder produces) to a row of the physical table exactly as the
trainer's evaluation does (:meth:`IdMaps.rows_of`): local id 0 -> the null row, an admitted id ->
its row, any other id -> the fallback row ``1 + id % fallback_rows``; one ``np.searchsorted`` per
dynamic feature. A delta export carries the map changes (:mod:`trainer.exported.delta`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.batch import FeatureLayout
from trainer.dynamic import DynamicTableConfig, physical_layout
from trainer.exported.artifact import ExportError
from trainer.exported.tensors import load_array, save_array

MAP_DIR = "tables/id_map"
_FEATURE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def map_files(feature: str) -> tuple[str, str]:
    """The ``ids`` and ``rows`` files of ``feature``'s map, relative to the version directory."""
    if not _FEATURE_RE.match(feature):
        raise ExportError(f"dynamic feature name {feature!r} cannot name a file of the export")
    return f"{MAP_DIR}/{feature}.ids.npy", f"{MAP_DIR}/{feature}.rows.npy"


@dataclass(frozen=True)
class IdMap:
    """One dynamic feature's exported map (admitted ids sorted, their physical rows)."""

    ids: np.ndarray
    rows: np.ndarray
    capacity: int
    fallback_rows: int

    def check(self, buckets: int, where: str) -> None:
        """Refuse a map that the trainer cannot have written (``where`` names it)."""
        ids, rows, first = self.ids, self.rows, 1 + self.fallback_rows
        problem = ""
        if (
            ids.dtype != np.int64
            or rows.dtype != np.int64
            or ids.ndim != 1
            or ids.shape != rows.shape
        ):
            problem = "ids and rows must be two (A,) int64 arrays"
        elif len(ids) > self.capacity:
            problem = f"{len(ids)} admitted ids, more than the capacity {self.capacity}"
        elif len(ids) and (ids[0] < 1 or ids[-1] >= buckets or np.any(np.diff(ids) <= 0)):
            problem = f"ids must be sorted, unique and in [1, {buckets})"
        elif len(rows) and (rows.min() < first or rows.max() >= first + self.capacity):
            problem = f"rows must be in [{first}, {first + self.capacity})"
        elif len(np.unique(rows)) != len(rows):
            problem = "two ids hold one row"
        if problem:
            raise ExportError(f"{where}: the id map is invalid ({problem}); re-export the model")

    def local_rows(self, local: np.ndarray) -> np.ndarray:
        """The physical-table row of each local id (0 -> 0; admitted -> its row; else fallback)."""
        out = 1 + local % self.fallback_rows
        if len(self.ids):
            pos = np.searchsorted(self.ids, local).clip(max=len(self.ids) - 1)
            hit = self.ids[pos] == local
            out = np.where(hit, self.rows[pos], out)
        return np.where(local == 0, 0, out)


class IdMaps:
    """Every dynamic feature's map over a logical layout: logical global ids -> physical rows."""

    def __init__(self, layout: FeatureLayout, maps: dict[str, IdMap]) -> None:
        tables = [
            DynamicTableConfig(feature=f, capacity=m.capacity, fallback_rows=m.fallback_rows)
            for f, m in maps.items()
        ]
        phys = physical_layout(layout, tables)
        names = list(layout.feature_names)
        self.maps = {names.index(f): m for f, m in maps.items()}
        self.offsets = np.asarray(layout.table_offsets, dtype=np.int64)
        self.phys_offsets = np.asarray(phys.table_offsets, dtype=np.int64)
        self.physical_rows = int(phys.total_rows)
        for fi, m in self.maps.items():
            m.check(int(layout.feature_buckets[fi]), f"dynamic feature {names[fi]!r}")

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The physical row of each global id of the logical layout (any shape, int64)."""
        ids = np.asarray(ids, dtype=np.int64)
        f = np.searchsorted(self.offsets, ids, side="right") - 1
        local = ids - self.offsets[f]
        out = self.phys_offsets[f] + local
        for fi, m in self.maps.items():
            sel = np.flatnonzero(f == fi)
            if len(sel):
                out.flat[sel] = self.phys_offsets[fi] + m.local_rows(local.flat[sel])
        return out


def _change(old: IdMap, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What turns ``old`` into the map ``(ids, rows)``: the positions in ``ids`` of the ids that
    are new or hold another row (upserts), and the ids of ``old`` that are gone (evicted)."""
    _, at_old, at_new = np.intersect1d(old.ids, ids, assume_unique=True, return_indices=True)
    kept = np.zeros(len(ids), dtype=bool)
    kept[at_new[old.rows[at_old] == rows[at_new]]] = True
    return np.flatnonzero(~kept), np.setdiff1d(old.ids, ids, assume_unique=True)


def write_id_maps(
    tmp: Path,
    maps: dict[str, tuple[np.ndarray, np.ndarray]],
    tables: list[DynamicTableConfig],
    index: dict[str, Any],
    base: dict[str, IdMap] | None = None,
) -> dict[str, Any]:
    """Write every map under ``tmp`` (entries added to ``index``); returns ``model.json``'s
    ``dynamic`` entry.

    With ``base`` (the maps of a delta's base version) a map is written as its change: ``ids`` and
    ``rows`` hold the ids admitted (or moved) since the base and ``evicted`` the ids gone, unless
    the whole map is smaller."""
    entry = {}
    for t in tables:
        ids_file, rows_file = map_files(t.feature)
        ids, rows = maps[t.feature]
        info: dict[str, Any] = {"capacity": t.capacity, "fallback_rows": t.fallback_rows,
                                "ids": ids_file, "rows": rows_file}  # fmt: skip
        if base is not None:
            upserts, evicted = _change(base[t.feature], ids, rows)
            if 2 * len(upserts) + len(evicted) < 2 * len(ids):
                ids, rows = ids[upserts], rows[upserts]
                info["evicted"] = f"{MAP_DIR}/{t.feature}.evicted.npy"
                index[info["evicted"]] = save_array(tmp / info["evicted"], evicted)
        index[ids_file] = save_array(tmp / ids_file, ids)
        index[rows_file] = save_array(tmp / rows_file, rows)
        entry[t.feature] = info
    return entry


def _apply(old: IdMap, ids: np.ndarray, rows: np.ndarray, evicted: np.ndarray) -> IdMap:
    """``old`` with the ``evicted`` ids removed and ``(ids, rows)`` upserted (sorted by id)."""
    keep = ~np.isin(old.ids, evicted) & ~np.isin(old.ids, ids)
    all_ids, all_rows = np.concatenate([old.ids[keep], ids]), np.concatenate([old.rows[keep], rows])
    order = np.argsort(all_ids, kind="stable")
    return IdMap(all_ids[order], all_rows[order], old.capacity, old.fallback_rows)


def read_id_maps(
    path: Path, desc: dict[str, Any], base: dict[str, IdMap] | None = None
) -> dict[str, IdMap]:
    """The maps of the version at ``path`` (``model.json`` ``desc``; empty without dynamic
    tables), a delta's map changes applied to ``base`` (its base version's maps). Checksums are
    verified by the caller; shapes and dtypes against the index here, the maps' content by
    :class:`IdMaps`."""
    index, out = desc["tensors"], {}
    entries = desc.get("dynamic") or {}
    if base is not None and set(base) != set(entries):
        raise ExportError(f"{path}: its dynamic tables are not its base's; re-export in full")
    for feature, info in entries.items():
        ids_file, rows_file = map_files(feature)
        evicted_file = info.get("evicted")
        if (info.get("ids"), info.get("rows")) != (ids_file, rows_file) or evicted_file not in (
            None,
            f"{MAP_DIR}/{feature}.evicted.npy",
        ):
            raise ExportError(f"{path}: the id map of {feature!r} names unexpected files")
        ids = np.array(load_array(path / ids_file, index[ids_file]))
        rows = np.array(load_array(path / rows_file, index[rows_file]))
        capacity, fallback = int(info["capacity"]), int(info["fallback_rows"])
        if evicted_file is None:
            out[feature] = IdMap(ids, rows, capacity, fallback)
            continue
        if base is None:
            raise ExportError(f"{path}: the map of {feature!r} is a change but has no base")
        old = base[feature]
        if (old.capacity, old.fallback_rows) != (capacity, fallback):
            raise ExportError(f"{path}: the table {feature!r} is not its base's; re-export")
        evicted = np.array(load_array(path / evicted_file, index[evicted_file]))
        out[feature] = _apply(old, ids, rows, evicted)
    return out


def materialize_id_maps(links: Sequence[Any]) -> dict[str, IdMap]:
    """The maps of the newest version of a chain (:func:`trainer.exported.delta.chain`): the
    full export's, then every delta's changes applied in order."""
    maps = read_id_maps(links[0].path, links[0].desc)
    for link in links[1:]:
        maps = read_id_maps(link.path, link.desc, maps)
    return maps
