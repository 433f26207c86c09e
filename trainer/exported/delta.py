"""Delta exports: a version that holds only the embedding rows changed since its base version.

An hour of training touches a small share of the rows, so after a full export each later export
of the same model writes (:func:`plan_delta`, :func:`write_delta`)::

    model.json              "delta": {"base": "v3", "base_checksums": <sha256 of v3/CHECKSUMS>,
                                      "depth": 2, "rows": "tables/rows.npy", "total_rows": N}
    tables/rows.npy         (C,) int64, sorted unique indices of the rows that changed
    tables/emb.npy          (C, D) float32, those rows (and tables/linear.npy (C, 1))
    dense/...               every dense parameter and the graph, in full (they are small)
    tables/id_map/...       with dynamic tables, each map's change since the base: the ids
                            admitted (or moved) with their rows, and the ids evicted; or the
                            whole map when that is smaller (:mod:`trainer.exported.id_maps`)

and ``CHECKSUMS`` as any version. A row "changed" when any of its bits differ from the base's
materialized row, so applying the chain reproduces the full export's tables (and id maps) bit
for bit.

Loading (:func:`materialize`) follows the ``base`` links down to a full export, verifies every
link's checksums and that each base is the exact version its delta was written on (the sha256 of
its ``CHECKSUMS``), copies the full tables and applies the deltas oldest first, all into fresh
arrays: a missing or altered link raises :class:`ExportError` before any table is returned, so a
server holding the previous model keeps it. A chain is at most ``FULL_EVERY`` versions long: the
export after that is full again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.durable import sha256_file
from trainer.exported.artifact import (
    CHECKSUMS_FILE,
    FEATURES_FILE,
    MODEL_FILE,
    VERSION_RE,
    ExportError,
    list_versions,
    read_json,
    verify_checksums,
)
from trainer.exported.id_maps import IdMap, materialize_id_maps
from trainer.exported.tensors import load_array, save_array

log = logging.getLogger(__name__)
FULL_EVERY = 24
"""A delta chain holds at most this many versions (one full export a day of hourly deltas)."""
ROWS_FILE = "tables/rows.npy"


@dataclass
class Link:
    """One verified version of a chain: its directory, ``model.json`` and checksums."""

    path: Path
    desc: dict[str, Any]
    sums: dict[str, str]

    @property
    def delta(self) -> dict[str, Any] | None:
        return self.desc.get("delta")


def _number(version: str) -> int:
    m = VERSION_RE.match(version)
    if m is None:
        raise ExportError(f"{version!r} is not a version name (v<N>)")
    return int(m.group(1))


def chain(path: Path) -> list[Link]:
    """The verified versions from the full export up to ``path`` (oldest first).

    Raises:
        ExportError: a base that is missing, tampered with, not the version the delta was
            written on, not older than its delta, or of another table shape; the message names
            the link and what to do.
    """
    sums = verify_checksums(path)
    links = [Link(path, read_json(path / MODEL_FILE), sums)]
    while (info := links[-1].delta) is not None:
        child = links[-1].path
        base = child.parent / str(info.get("base"))
        if _number(base.name) >= _number(child.name):
            raise ExportError(f"{child}: its base {base.name} is not an earlier version")
        if not base.is_dir():
            raise ExportError(
                f"{child} is a delta on {base.name}, which is missing: restore {base} or "
                "re-export the checkpoint in full (metarec export without --delta)"
            )
        sums = verify_checksums(base)
        if sha256_file(base / CHECKSUMS_FILE) != info.get("base_checksums"):
            raise ExportError(
                f"{child} is a delta on another {base.name} than the one there (its CHECKSUMS "
                f"differ from the ones the delta was written on); restore the original "
                f"{base.name} or re-export {child.name} in full"
            )
        links.append(Link(base, read_json(base / MODEL_FILE), sums))
    return links[::-1]


def materialize(links: list[Link], mmap: bool) -> dict[str, np.ndarray]:
    """The tables of the newest link: the full export's (memory-mapped when ``mmap`` and the
    chain is one full export), then every delta applied in order, in fresh arrays."""
    full = links[0]
    index = full.desc["tensors"]
    tables = {
        k: load_array(full.path / f, index[f], mmap=mmap and len(links) == 1)
        for k, f in full.desc["tables"].items()
    }
    if len(links) == 1:
        return tables
    tables = {k: np.array(v) for k, v in tables.items()}  # a copy: the base stays untouched
    for link in links[1:]:
        info, index = link.delta or {}, link.desc["tensors"]
        if set(link.desc["tables"]) != set(tables) or info.get("total_rows") != len(tables["emb"]):
            raise ExportError(f"{link.path}: its tables do not fit its base's; re-export in full")
        rows = load_array(link.path / info["rows"], index[info["rows"]])
        if rows.dtype.name != "int64" or rows.ndim != 1:
            raise ExportError(f"{link.path}: {info['rows']} must be (C,) int64; re-export")
        if len(rows) and (
            rows[0] < 0 or rows[-1] >= len(tables["emb"]) or np.any(np.diff(rows) <= 0)
        ):
            raise ExportError(
                f"{link.path}: {info['rows']} holds rows outside the table or unsorted; re-export"
            )
        for key, rel in link.desc["tables"].items():
            values = load_array(link.path / rel, index[rel])
            if values.shape != (len(rows), *tables[key].shape[1:]):
                raise ExportError(f"{link.path}: {rel} does not hold one row per changed row")
            tables[key][rows] = values
    return tables


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _encoding(spec: Any) -> Any:
    """What of a ``feature_spec.json`` decides rows and scores: all but the data interval."""
    return {k: v for k, v in spec.items() if k != "interval"} if isinstance(spec, dict) else spec


def _compatible(base: Link, desc: dict[str, Any], spec: dict[str, Any], base_spec: Any) -> str:
    """Why ``base`` cannot carry a delta of an export described by ``desc`` (empty: it can)."""
    if base.desc.get("model") != _plain(desc["model"]):
        return "the model config changed"
    if _encoding(base_spec) != _encoding(_plain(spec)):
        return "the feature spec changed"
    if set(base.desc.get("tables", {})) != set(desc["tables"]):
        return "the set of tables changed"
    dynamic = {
        f: [d["capacity"], d["fallback_rows"]] for f, d in (base.desc.get("dynamic") or {}).items()
    }
    if dynamic != _plain(desc.get("dynamic") or {}):
        return "the dynamic tables changed"
    return ""


@dataclass
class DeltaPlan:
    """What :func:`write_delta` writes: the changed rows and the base they apply to."""

    base: Path
    base_checksums: str
    depth: int
    rows: np.ndarray
    id_maps: dict[str, IdMap]
    """The base's maps of the dynamic tables (the delta writes their changes)."""


def plan_delta(
    model_dir: Path, tables: dict[str, np.ndarray], desc: dict[str, Any], spec: dict[str, Any]
) -> DeltaPlan | None:
    """A delta on the newest version of ``model_dir``, or None (then export in full) when there
    is no version, it cannot be loaded, it does not fit, or its chain is ``FULL_EVERY`` long.

    Args:
        tables: the new export's full tables (``emb`` and possibly ``linear``).
        desc: the new export's ``model`` config, ``tables`` names (as in ``model.json``) and
            ``dynamic`` tables (feature -> ``[capacity, fallback_rows]``).
        spec: the new export's ``feature_spec.json``.
    """
    versions = list_versions(model_dir)
    if not versions:
        return None
    try:
        links = chain(model_dir / versions[-1])
        base = links[-1]
        why = _compatible(base, desc, spec, read_json(base.path / FEATURES_FILE))
        if not why and len(links) >= FULL_EVERY:
            why = f"its chain is {len(links)} versions long (FULL_EVERY={FULL_EVERY})"
        if not why:
            old = materialize(links, mmap=True)
            old_maps = materialize_id_maps(links)
            if any(old[k].shape != v.shape for k, v in tables.items()):
                why = "the table shapes changed"
    except (ExportError, KeyError, TypeError, ValueError) as e:
        why = f"it cannot be loaded ({e})"
    if why:
        log.info("%s/%s cannot be a delta's base (%s): exporting in full", model_dir,
                 versions[-1], why)  # fmt: skip
        return None
    changed = np.zeros(len(tables["emb"]), dtype=bool)
    for key, new in tables.items():
        flat_new, flat_old = new.reshape(len(new), -1), np.asarray(old[key]).reshape(len(new), -1)
        changed |= np.any(flat_new.view(np.uint32) != flat_old.view(np.uint32), axis=1)
    return DeltaPlan(
        base=base.path,
        base_checksums=sha256_file(base.path / CHECKSUMS_FILE),
        depth=len(links),
        rows=np.flatnonzero(changed).astype(np.int64),
        id_maps=old_maps,
    )


def write_delta(
    tmp: Path, plan: DeltaPlan, tables: dict[str, np.ndarray], index: dict[str, Any]
) -> dict[str, Any]:
    """Write the changed rows of ``tables`` under ``tmp`` (entries added to ``index``); returns
    the ``delta`` entry of ``model.json`` and the table names (key -> file)."""
    index[ROWS_FILE] = save_array(tmp / ROWS_FILE, plan.rows)
    for key, table in tables.items():
        rel = f"tables/{key}.npy"
        index[rel] = save_array(tmp / rel, table[plan.rows])
    return {
        "base": plan.base.name,
        "base_checksums": plan.base_checksums,
        "depth": plan.depth,
        "rows": ROWS_FILE,
        "total_rows": len(tables["emb"]),
    }
