"""Meta-IO reader benchmark: our reader (with VSI) vs a raw pyarrow scan and a naive pandas reader.

    python -m bench.reader --out out/bench/reader.json            # ~100k episodes, 3 repeats
    python -m bench.reader --episodes 200000 --repeat 5            # longer, steadier figures

Same data, same process, one run: synthetic episodes (16 single-slot sparse fields over a 1M-row
stacked table, 3 dense features, K = Q = 32, Zipf task sizes, 4096-episode row groups), read as
64-episode batches. Measured (episodes/s and samples/s, medians over ``--repeat`` interleaved
rounds, after one untimed scan and 200 warm-up batches of every reader variant; also the process
CPU time of each run, all threads, whose ratio ``reader_vs_raw_scan_cpu_time`` is the work ratio:
what the wall-clock ratio tends to on a machine whose cores are all busy):

- ``raw_scan``: ``ParquetFile.read_row_group`` of every row group with the same 7 projected columns
  and no conversion at all: the practical limit; ``raw_scan_one_thread`` the same on one thread
  (``use_threads=False``, as the reader's reading thread decodes), for reference;
- ``reader_prefetch2`` / ``reader_prefetch0``: :class:`EpisodeReader` (shuffle on, VSI, one epoch)
  with its two background threads, and inline; ``reader_unshuffled`` and ``reader_task_rows``
  (with task-local rows) for reference; ``reader_cuda`` when CUDA is present (each batch copied
  to the GPU and synchronised). ``pin_memory`` is the reader's default: on when CUDA is present;
- ``naive``: the same samples as flat per-sample rows in pandas; per task ``df[df.task == t]``, per
  episode tensors built in Python (``torch.tensor`` from the rows, padded) and a ``torch.unique``
  per batch. It is quadratic in the number of tasks, so it runs for ``--naive-seconds`` and its rate
  is episodes built / time (its one-off ``read_parquet`` is reported, not charged).

Targets: ``reader_prefetch2`` >= 0.6x ``raw_scan`` (issue 14; 0.5x in issue 3) and >= 20x
``naive``. The data is cached in ``--data`` (regenerated when the configuration differs).

The profile: ``row_group_cpu_ms`` (decoding one row group, raw vs the reader's checked read),
``stage_ms_per_batch`` (an inline epoch's wall and CPU ms per batch: reading, assembling, and the
VSI within assembling) and ``vsi_ms_per_batch`` (the de-duplication methods on the same batches).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainer.data.contract import ContractError, load_manifest
from trainer.data.files import EpisodeFiles
from trainer.data.reader import READ_COLUMNS, EpisodeReader
from trainer.data.synthetic import write_synthetic_episodes
from trainer.data.vsi import UniqueInverse

K = Q = 32
T = 64
FEATURES = [(f"f{i:02d}", 62_500, 1) for i in range(16)]  # 16 x 62,500 = a 1M-row stacked table
DENSE = 3
MAX_EPISODES_PER_TASK = 64
ZIPF = 1.2


def _data(root: Path, episodes: int, seed: int) -> None:
    """Write the benchmark episodes (and the naive reader's flat file) unless cached."""
    mean = np.minimum(np.random.default_rng(0).zipf(ZIPF, 200_000), MAX_EPISODES_PER_TASK).mean()
    num_tasks = max(1, round(episodes / mean))
    try:
        m = load_manifest(str(root))
        if (
            m.producer.get("num_tasks") == num_tasks
            and m.producer.get("seed") == seed
            and (root / "_flat.parquet").exists()
        ):
            return
    except ContractError:
        pass
    t = time.perf_counter()
    write_synthetic_episodes(
        root,
        num_tasks=num_tasks,
        k_support=K,
        q_query=Q,
        features=FEATURES,
        dense_width=DENSE,
        max_episodes_per_task=MAX_EPISODES_PER_TASK,
        zipf_exponent=ZIPF,
        rows_per_group=4096,
        num_buckets=4,
        splits=("train",),
        seed=seed,
    )
    _write_flat(root)
    print(f"generated {root} in {time.perf_counter() - t:.1f} s", file=sys.stderr)


def _write_flat(root: Path) -> None:
    """The same real samples as one flat row per sample (the naive reader's input)."""
    m = load_manifest(str(root))
    N, S = m.samples_per_episode, m.sparse_width
    parts = []
    for f in m.files_of("train"):
        t = pq.read_table(root / f["path"], columns=["task_id", "episode", *READ_COLUMNS[1:]])
        n = t.num_rows
        ns, nq = t["n_support"].to_numpy(), t["n_query"].to_numpy()
        pos = np.arange(N)
        real = np.where(pos < K, pos[None] < ns[:, None], pos[None] - K < nq[:, None]).ravel()
        cols = {
            "task": np.repeat(t["task_id"].to_numpy(), N)[real],
            "episode": np.repeat(t["episode"].to_numpy(), N)[real],
            "pos": np.tile(pos, n)[real].astype(np.int16),
        }
        sparse = t["sparse"].combine_chunks().values.to_numpy().reshape(n * N, S)[real]
        for j in range(S):
            cols[FEATURES[j][0]] = sparse[:, j]
        dense = t["dense"].combine_chunks().values.to_numpy().reshape(n * N, DENSE)[real]
        for j in range(DENSE):
            cols[f"dense_{j}"] = dense[:, j]
        for c in ("click", "conversion"):
            cols[c] = t[c].combine_chunks().values.to_numpy().reshape(n * N)[real]
        parts.append(pa.table(cols))
    pq.write_table(pa.concat_tables(parts), root / "_flat.parquet", compression="zstd")


def _raw_scan(root: Path, use_threads: bool = True) -> dict:
    m = load_manifest(str(root))
    t, c = time.perf_counter(), time.process_time()
    episodes = 0
    for f in m.files_of("train"):
        pf = pq.ParquetFile(root / f["path"])
        for g in range(pf.metadata.num_row_groups):
            table = pf.read_row_group(g, columns=list(READ_COLUMNS), use_threads=use_threads)
            episodes += table.num_rows
    return {
        "seconds": time.perf_counter() - t,
        "cpu_seconds": time.process_time() - c,
        "episodes": episodes,
        "samples": None,
    }


def _ours(root: Path, device: str | None = None, limit: int | None = None, **kw) -> dict:
    t, c = time.perf_counter(), time.process_time()
    episodes = samples = steps = 0
    with EpisodeReader(str(root), "train", T, epochs=1, **kw) as reader:
        for b in reader:
            if device is not None:
                b = b.to(device)
                torch.cuda.synchronize()
            episodes += b.num_real_episodes
            samples += b.num_samples
            steps += 1
            if steps == limit:
                break
    return {
        "seconds": time.perf_counter() - t,
        "cpu_seconds": time.process_time() - c,
        "episodes": episodes,
        "samples": samples,
    }


def _naive(root: Path, seconds: float) -> dict:
    import pandas as pd

    m = load_manifest(str(root))
    offsets = torch.tensor(m.table_offsets())
    fcols, dcols = [f[0] for f in FEATURES], [f"dense_{j}" for j in range(DENSE)]
    t0 = time.perf_counter()
    df = pd.read_parquet(root / "_flat.parquet")
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    episodes = samples = 0
    batch: list[dict] = []
    for task in df["task"].unique():
        sub = df[df.task == task]
        for _, ep in sub.groupby("episode", sort=True):
            sup, qry = ep[ep.pos < K], ep[ep.pos >= K]
            sparse = torch.zeros(K + Q, len(fcols), dtype=torch.int64)
            dense = torch.zeros(K + Q, DENSE)
            click = torch.zeros(K + Q)
            for rows, at in ((sup, 0), (qry, K)):
                n = len(rows)
                sparse[at : at + n] = torch.tensor(rows[fcols].values.tolist()) + offsets
                dense[at : at + n] = torch.tensor(rows[dcols].values.tolist())
                click[at : at + n] = torch.tensor(
                    rows["click"].values.tolist(), dtype=torch.float32
                )
            batch.append(
                {"sparse": sparse, "dense": dense, "click": click, "n": (len(sup), len(qry))}
            )
            samples += len(ep)
            if len(batch) == T:
                torch.unique(torch.stack([b["sparse"] for b in batch]), return_inverse=True)
                torch.stack([b["dense"] for b in batch])
                episodes += len(batch)
                batch = []
        if time.perf_counter() - t0 > seconds:
            break
    return {
        "seconds": time.perf_counter() - t0,
        "episodes": episodes,
        "samples": samples,
        "read_parquet_seconds": load,
    }


def _vsi_micro(root: Path, batches: int = 40) -> dict:
    flats = []
    with EpisodeReader(str(root), "train", T, epochs=1, prefetch=0) as reader:
        for b in reader:
            flats.append(b.ids[b.inverse].numpy().ravel().copy())
            if len(flats) == batches:
                break
    u = UniqueInverse(sum(f[1] for f in FEATURES))
    methods = {
        "table (ours)": lambda f: u(f, "table"),
        "np.unique": lambda f: u(f, "sort"),
        "torch.unique": lambda f: torch.unique(
            torch.from_numpy(f), sorted=True, return_inverse=True
        ),
    }
    out = {}
    for name, fn in methods.items():
        fn(flats[0])
        t = time.perf_counter()
        for f in flats:
            fn(f)
        out[name] = round((time.perf_counter() - t) / len(flats) * 1e3, 3)
    out["ids_per_batch"] = int(flats[0].size)
    out["unique_per_batch"] = int(np.unique(flats[0]).size)
    return out


def _decode_micro(root: Path, groups: int = 12, rounds: int = 3) -> dict:
    """Process CPU ms per row group (median, interleaved): the raw ``read_row_group`` of the 7
    columns (Arrow's threads, and one thread) vs :meth:`EpisodeFiles.read` (the one-thread read
    plus the checks and the numpy views); ``decode_overhead`` is the latter against the raw read
    on one thread."""
    files = EpisodeFiles(str(root), "train", load_manifest(str(root)), verify_checksums=False)
    units = range(min(groups, len(files.units)))

    def raw(use_threads: bool):
        def read(u: int) -> None:
            i, g = files.units[u]
            files._parquet(i).read_row_group(g, columns=list(READ_COLUMNS), use_threads=use_threads)

        return read

    ways = {
        "raw_read_row_group": raw(True),
        "raw_read_row_group_one_thread": raw(False),
        "episode_files_read": files.read,
    }
    spent: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):
        for u in units:
            for name, fn in ways.items():
                c = time.process_time()
                fn(u)
                spent[name].append(time.process_time() - c)
    out = {k: round(statistics.median(v) * 1e3, 3) for k, v in spent.items()}
    out["decode_overhead"] = round(
        out["episode_files_read"] - out["raw_read_row_group_one_thread"], 3
    )
    out["episodes_per_row_group"] = files.sizes[0]
    return out


def _stages(root: Path, shuffle: bool, task_local_rows: bool = False) -> dict:
    """Where an inline (prefetch 0) epoch spends its time, in wall ms per batch and (``cpu``)
    process CPU ms per batch: reading + decoding row groups vs assembling batches (gather, VSI,
    tensors), and the VSI (batch de-duplication) within assembling."""
    reader = EpisodeReader(
        str(root),
        "train",
        T,
        epochs=1,
        prefetch=0,
        shuffle=shuffle,
        task_local_rows=task_local_rows,
    )
    spent = {"read": 0.0, "assemble": 0.0, "vsi": 0.0}
    cpu = dict.fromkeys(spent, 0.0)

    def timed(stage, fn):
        def wrapper(*args, **kw):
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kw)
            finally:
                spent[stage] += time.perf_counter() - t
                cpu[stage] += time.process_time() - c

        return wrapper

    reader._read_unit = timed("read", reader._read_unit)
    reader._assemble = timed("assemble", reader._assemble)
    reader._unique = timed("vsi", reader._unique)
    t, c = time.perf_counter(), time.process_time()
    steps = sum(1 for _ in reader)
    spent["total"], cpu["total"] = time.perf_counter() - t, time.process_time() - c
    out = {k: round(v / steps * 1e3, 3) for k, v in spent.items()}
    out["cpu"] = {k: round(v / steps * 1e3, 3) for k, v in cpu.items()}
    return out


def _summary(runs: list[dict]) -> dict:
    secs = statistics.median(r["seconds"] for r in runs)
    first = runs[0]
    out = {"seconds_median": round(secs, 4), "seconds_all": [round(r["seconds"], 4) for r in runs]}
    if "cpu_seconds" in runs[0]:
        out["cpu_seconds_median"] = round(statistics.median(r["cpu_seconds"] for r in runs), 4)
    out["episodes"] = first["episodes"]
    out["episodes_per_s"] = round(first["episodes"] / secs, 1)
    if first.get("samples") is not None:
        out["samples"] = first["samples"]
        out["samples_per_s"] = round(first["samples"] / secs, 1)
    return out


def run(out: Path, data: Path, episodes: int, repeat: int, naive_seconds: float, seed: int) -> dict:
    _data(data, episodes, seed)
    m = load_manifest(str(data))
    variants = {
        "raw_scan": lambda **w: _raw_scan(data),
        "raw_scan_one_thread": lambda **w: _raw_scan(data, use_threads=False),
        "reader_prefetch2": lambda **w: _ours(data, prefetch=2, shuffle=True, **w),
        "reader_prefetch0": lambda **w: _ours(data, prefetch=0, shuffle=True, **w),
        "reader_unshuffled": lambda **w: _ours(data, prefetch=2, shuffle=False, **w),
        "reader_task_rows": lambda **w: _ours(data, prefetch=2, task_local_rows=True, **w),
    }
    if torch.cuda.is_available():
        variants["reader_cuda"] = lambda **w: _ours(data, device="cuda", prefetch=2, **w)
    load_before = os.getloadavg()
    _raw_scan(data)  # warm the page cache
    for name, fn in variants.items():  # warm allocators, thread arenas, the pinned-memory cache
        if not name.startswith("raw_scan"):
            fn(limit=200)
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in range(repeat):  # interleaved, so load changes hit every variant alike
        for name, fn in variants.items():
            runs[name].append(fn())
    results = {k: _summary(v) for k, v in runs.items()}
    naive_run = _naive(data, naive_seconds)
    results["naive"] = _summary([naive_run])
    results["naive"]["read_parquet_seconds_not_charged"] = round(
        naive_run["read_parquet_seconds"], 3
    )
    ours, raw, naive = (
        results[k]["episodes_per_s"] for k in ("reader_prefetch2", "raw_scan", "naive")
    )
    ratios = {
        "reader_vs_raw_scan": round(ours / raw, 3),
        "reader_vs_naive": round(ours / naive, 1),
        "reader_prefetch0_vs_raw_scan": round(
            results["reader_prefetch0"]["episodes_per_s"] / raw, 3
        ),
        "reader_prefetch0_vs_naive": round(
            results["reader_prefetch0"]["episodes_per_s"] / naive, 1
        ),
        "prefetch2_vs_prefetch0": round(ours / results["reader_prefetch0"]["episodes_per_s"], 3),
        # work per episode, all threads of the process (raw's pyarrow pool included): the ratio
        # the wall-clock one tends to when every core is busy (a shared, loaded machine)
        "reader_vs_raw_scan_cpu_time": round(
            results["raw_scan"]["cpu_seconds_median"]
            / results["reader_prefetch2"]["cpu_seconds_median"],
            3,
        ),
        # against the scan on one thread (how the reader's reading thread decodes)
        "reader_vs_raw_scan_one_thread": round(
            ours / results["raw_scan_one_thread"]["episodes_per_s"], 3
        ),
        "reader_vs_raw_scan_one_thread_cpu_time": round(
            results["raw_scan_one_thread"]["cpu_seconds_median"]
            / results["reader_prefetch2"]["cpu_seconds_median"],
            3,
        ),
    }
    report = {
        "benchmark": "reader",
        "command": " ".join(["python -m bench.reader", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "versions": {
                "torch": torch.__version__,
                "pyarrow": pa.__version__,
                "numpy": np.__version__,
            },
        },
        "shape": {
            "episodes_per_batch": T,
            "k_support": K,
            "q_query": Q,
            "sparse_fields": len(FEATURES),
            "stacked_table_rows": sum(f[1] for f in FEATURES),
            "dense_width": DENSE,
            "episodes": m.splits["train"]["episodes"],
            "samples": m.splits["train"]["samples"],
            "files": len(m.files),
            "row_groups": sum(f["row_groups"] for f in m.files),
            "bytes": sum(f["bytes"] for f in m.files),
        },
        "repeat": repeat,
        "results": results,
        "ratios": ratios,
        "targets": {
            "reader_vs_raw_scan": {"target": 0.6, "met": ratios["reader_vs_raw_scan"] >= 0.6},
            "reader_vs_naive": {"target": 20, "met": ratios["reader_vs_naive"] >= 20},
        },
        "vsi_ms_per_batch": _vsi_micro(data),
        "row_group_cpu_ms": _decode_micro(data),
        "stage_ms_per_batch": {
            "shuffled": _stages(data, shuffle=True),
            "unshuffled": _stages(data, shuffle=False),
            "shuffled_task_rows": _stages(data, shuffle=True, task_local_rows=True),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reader", description=__doc__.split("\n")[0])
    p.add_argument(
        "--out",
        default="out/bench/reader.json",
        help="JSON result path, or a directory (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        default="out/bench/reader_data",
        help="cached benchmark episodes (default: %(default)s)",
    )
    p.add_argument(
        "--episodes",
        type=int,
        default=100_000,
        help="approximate episodes to generate (default: %(default)s)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="interleaved rounds; medians are reported (default: %(default)s)",
    )
    p.add_argument(
        "--naive-seconds",
        type=float,
        default=10.0,
        help="time budget of the naive reader (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.suffix != ".json":
        out = out / "reader.json"
    report = run(out, Path(a.data), a.episodes, a.repeat, a.naive_seconds, a.seed)
    r = report["results"]
    for name, v in r.items():
        print(
            f"{name:20s} {v['episodes_per_s']:>12,.0f} episodes/s  {v.get('samples_per_s', 0):>14,.0f} samples/s"
        )
    print(json.dumps(report["ratios"]), f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
