"""Tiny episode and raw-log datasets written with pyarrow, exactly per the contracts, for the DQ tests.

The ETL is not needed: :func:`write_episodes` lays out ``split=/bucket=`` Parquet files and a
``_manifest.json`` the way ``trainer/data/contract.py`` describes, and a ``defect`` callback may
corrupt the episodes (or the manifest) before they are written, so each test injects exactly one
kind of problem into an otherwise clean dataset.

Example:
    >>> root = write_episodes(tmp_path / "interval=a")                     # doctest: +SKIP
    >>> root = write_episodes(tmp_path / "b", defect=lambda eps, m: ...)   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from components.raw_schema import RAW_FIELDS, arrow_schema
from trainer.data.contract import (
    EPISODE_COLUMNS,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SPLITS,
    DenseSpec,
    FeatureSpec,
    Manifest,
)
from trainer.data.hashing import HASH_CONTRACT, feature_id, signed_hash
from trainer.data.schema import episode_schema

K, Q = 4, 2
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
END = START + dt.timedelta(hours=6)

# name, source, kind, buckets, slots: a small slice of the ETL's default spec.
_FEATURES = [
    ("user_id", "user_id", "categorical", 101, 1),
    ("campaign_id", "campaign_id", "categorical", 53, 1),
    ("user_interests", "user_interests", "multi", 37, 3),
    ("hour_of_day", "event_time", "categorical", 29, 1),
]
_DENSE = [("bid_price", "bid_price", "log1p"), ("user_hist_ctr", "user_hist_ctr", "identity")]


def feature_spec() -> list[FeatureSpec]:
    specs, offset = [], 0
    for name, source, kind, buckets, slots in _FEATURES:
        specs.append(FeatureSpec(name, source, kind, buckets, slots, offset))
        offset += slots
    return specs


def dense_spec() -> list[DenseSpec]:
    return [DenseSpec(n, s, t, i) for i, (n, s, t) in enumerate(_DENSE)]


EPISODE_ARROW_SCHEMA = episode_schema()  # the shared writer/reader definition
assert tuple(EPISODE_ARROW_SCHEMA.names) == EPISODE_COLUMNS


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def make_episodes(
    *, num_tasks: int = 12, cold_every: int = 4, seed: int = 0, start: dt.datetime = START
) -> list[dict[str, Any]]:
    """Clean episodes: each task gets 1-4 episodes (the last one partial), ordered in time.

    Task ``i`` is cold when ``i % cold_every == 0``; a warm task's last full episode goes to
    ``valid`` when it has more than one. Times step one minute per sample from ``start + i min``.
    """
    rng = random.Random(seed)
    feats, width = feature_spec(), sum(s for *_, s in _FEATURES)
    episodes = []
    for t in range(num_tasks):
        key = f"c-{t}"
        n_eps = 1 + t % 4
        clock = start + dt.timedelta(minutes=t)
        for e in range(n_eps):
            n_s, n_q = (K, Q) if e < n_eps - 1 or n_eps == 1 else (2, 1)
            sparse, dense, click, conv, times = [], [], [], [], []
            for pos in range(K + Q):
                real = pos < n_s or K <= pos < K + n_q
                if not real:
                    sparse += [0] * width
                    dense += [0.0] * len(_DENSE)
                    click.append(0)
                    conv.append(0)
                    times.append(0)
                    continue
                clock += dt.timedelta(minutes=1)
                values = {
                    "user_id": f"u-{rng.randrange(50)}",
                    "campaign_id": key,
                    "user_interests": [f"t-{rng.randrange(9)}" for _ in range(rng.randrange(4))],
                    "hour_of_day": str(clock.hour),
                }
                for f in feats:
                    v = values[f.name]
                    if f.kind == "multi":
                        ids = [feature_id(f.name, x, f.buckets) for x in v[: f.slots]]
                        sparse += ids + [0] * (f.slots - len(ids))
                    else:
                        sparse.append(feature_id(f.name, v, f.buckets))
                dense += [round(rng.random(), 3), round(rng.random() * 0.1, 3)]
                c = 1 if rng.random() < 0.25 else 0
                click.append(c)
                conv.append(-1 if rng.random() < 0.2 else (c if rng.random() < 0.3 else 0))
                times.append(_ms(clock))
            if t % cold_every == 0:
                split = "test_cold"
            else:
                split = "valid" if (n_eps > 1 and e == n_eps - 2) else "train"
            episodes.append(
                {
                    "split": split,
                    "task_key": key,
                    "task_id": signed_hash("task", key),
                    "episode": e,
                    "n_support": n_s,
                    "n_query": n_q,
                    "sparse": sparse,
                    "dense": dense,
                    "click": click,
                    "conversion": conv,
                    "event_time_ms": times,
                }
            )
    return episodes


def bucket_of(task_key: str, num_buckets: int) -> int:
    return 0 if task_key is None else signed_hash("bucket", task_key) % num_buckets


def _real(e: dict[str, Any], col: str) -> list:
    """Values of the real samples (support, then query) of a per-sample list column."""
    ns, nq = (min(max(e[n] or 0, 0), m) for n, m in (("n_support", K), ("n_query", Q)))
    values = e[col] or []
    return values[:ns] + values[K : K + nq]


def _counts(episodes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out = {}
    for split in SPLITS:
        eps = [e for e in episodes if e["split"] == split]
        out[split] = {
            "episodes": len(eps),
            "tasks": len({e["task_key"] for e in eps}),
            "samples": sum((e["n_support"] or 0) + (e["n_query"] or 0) for e in eps),
            "support_samples": sum(e["n_support"] or 0 for e in eps),
            "query_samples": sum(e["n_query"] or 0 for e in eps),
            "clicks": sum(1 for e in eps for c in _real(e, "click") if c == 1),
            "conversions": sum(1 for e in eps for c in _real(e, "conversion") if c == 1),
        }
    return out


Defect = Callable[[list[dict[str, Any]]], None]
ManifestDefect = Callable[[dict[str, Any]], None]


def write_episodes(
    root: Path,
    *,
    episodes: list[dict[str, Any]] | None = None,
    defect: Defect | None = None,
    manifest_defect: ManifestDefect | None = None,
    start: dt.datetime = START,
    end: dt.datetime = END,
    num_buckets: int = 2,
    manifest: bool = True,
) -> Path:
    """Write an ETL-shaped output directory.

    ``defect(episodes)`` corrupts the episodes before the manifest counts are taken (so the
    manifest agrees with the data and only the defect itself is wrong); ``manifest_defect(m)``
    edits the manifest dict just before it is written.
    """
    root = Path(root)
    episodes = episodes if episodes is not None else make_episodes(start=start)
    if defect is not None:
        defect(episodes)
    counts = _counts(episodes)
    m: dict[str, Any] = {
        "format": "metarec.episodes",
        "schema_version": SCHEMA_VERSION,
        "interval": {
            "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "task_key": "campaign_id",
        "k_support": K,
        "q_query": Q,
        "min_support": 1,
        "min_query": 1,
        "hash": dict(HASH_CONTRACT),
        "features": [asdict(f) for f in feature_spec()],
        "dense_features": [asdict(d) for d in dense_spec()],
        "splits": counts,
        "files": [],
        "content_hash": "",
        "time_range": {},
        "accounting": {"rows_read": 0, "rows_kept": 0, "rows_quarantined": 0},
        "split_rule": {"cold_fraction": 0.25},
        "validation": None,
        "producer": {"name": "tests.components.validation.builders"},
    }
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for e in episodes:
        groups.setdefault((e["split"], bucket_of(e["task_key"], num_buckets)), []).append(e)
    digest = hashlib.sha256()
    for (split, bucket), rows in sorted(groups.items()):
        rel = f"split={split}/bucket={bucket:05d}/part-00000.parquet"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(
            [{c: r[c] for c in EPISODE_COLUMNS} for r in rows], schema=EPISODE_ARROW_SCHEMA
        )
        pq.write_table(table, path, compression="zstd")
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{rel}:{sha}\n".encode())
        m["files"].append(
            {
                "path": rel,
                "split": split,
                "bucket": bucket,
                "rows": len(rows),
                "row_groups": 1,
                "bytes": path.stat().st_size,
                "sha256": sha,
            }
        )
    m["content_hash"] = digest.hexdigest()
    if manifest_defect is not None:
        manifest_defect(m)
    if manifest:
        Manifest.from_dict(json.loads(json.dumps(m)))  # the fixture itself honours the contract
        (root / MANIFEST_NAME).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    return root


# ---------------------------------------------------------------------------------------------
# Raw logs


def make_raw_rows(
    n: int = 400, *, start: dt.datetime = START, hours: int = 2, seed: int = 0, ctr: float = 0.05
) -> list[dict[str, Any]]:
    """Clean raw impressions spread evenly over ``hours`` hourly partitions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = start + dt.timedelta(seconds=(i * hours * 3600) // n + rng.random())
        click = 1 if rng.random() < ctr else 0
        rows.append(
            {
                "event_id": f"e-{i:08d}",
                "event_time": t,
                "user_id": f"u-{rng.randrange(80)}",
                "ad_id": f"a-{rng.randrange(30)}",
                "campaign_id": f"c-{rng.randrange(10)}",
                "advertiser_id": f"adv-{rng.randrange(4)}",
                "scene_id": rng.choice(["feed", "search"]),
                "user_gender": rng.choice(["f", "m", None]),
                "user_age_bucket": "25-34",
                "user_segment": f"s-{rng.randrange(5)}",
                "device_type": rng.choice(["ios", "android"]),
                "region": f"r-{rng.randrange(7)}",
                "ad_category": f"cat-{rng.randrange(5)}",
                "ad_brand": f"b-{rng.randrange(9)}",
                "creative_type": "video",
                "user_interests": [f"t-{rng.randrange(9)}" for _ in range(rng.randrange(4))],
                "ad_tags": ["sale"],
                "bid_price": round(rng.random(), 4),
                "item_price": round(rng.random() * 100, 2),
                "user_hist_ctr": round(rng.random() * 0.1, 4),
                "click": click,
                "conversion": click if rng.random() < 0.1 else 0,
            }
        )
    return rows


def _hour_dir(root: Path, t: dt.datetime) -> Path:
    return root / f"dt={t:%Y-%m-%d}" / f"hr={t:%H}"


def write_raw(root: Path, rows: list[dict[str, Any]], fmt: str = "jsonl") -> Path:
    """Write rows into hourly partitions of their event_time (``jsonl`` or ``parquet``)."""
    root = Path(root)
    by_hour: dict[dt.datetime, list[dict[str, Any]]] = {}
    for r in rows:
        t = r["event_time"]
        key = t.replace(minute=0, second=0, microsecond=0) if isinstance(t, dt.datetime) else START
        by_hour.setdefault(key, []).append(r)
    for hour, group in sorted(by_hour.items()):
        d = _hour_dir(root, hour)
        d.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            pq.write_table(
                pa.Table.from_pylist(group, schema=arrow_schema()), d / "part-00000.parquet"
            )
        else:
            with open(d / "part-00000.jsonl", "w") as f:
                for r in group:
                    rec = dict(r)
                    if isinstance(rec["event_time"], dt.datetime):
                        rec["event_time"] = (
                            rec["event_time"].strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
                        )
                    f.write(json.dumps(rec) + "\n")
    (root / "_generation.json").write_text("{}\n")  # readers must skip underscore files
    return root


RAW_NAMES = [f.name for f in RAW_FIELDS]
