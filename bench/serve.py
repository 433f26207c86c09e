"""Load test of the KServe model server on loopback: 100 candidates per request, latency and
throughput in steady state, with cached per-task adaptation, and during a hot swap.

    python -m bench.serve                        # default spec model, 4 clients, 20 s per phase
    python -m bench.serve --seconds 5 --clients 2

The model: the default trainer config and the ETL's default feature spec (1.3 M rows x 16, MLP
256-128), trained briefly on synthetic episodes (:mod:`bench.delta_export`'s data): v1 in full,
v2 a delta on it. The server (``python -m components.serve``, one process, as in the image) serves
the registry's champion. ``--clients`` closed-loop clients (a new request when the previous
answer came) send OIP v2 JSON requests of ``--candidates`` candidates for ``--seconds`` per phase:

- ``steady``: unadapted requests (the baseline of the ratios);
- ``adapted``: each request names one of 20 tasks; its first request carries the support events
  (adapted once per task version), later ones are served from the cache;
- ``swap``: unadapted requests while v2 is promoted a few seconds in: every request must succeed,
  and the phase reports when the clients saw v2.

Per phase: requests, failed, requests/s, latency p50/p90/p99/max (ms); ratios against ``steady``.
The machine is shared (2 cores; the clients run on it too): compare the ratios. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench.serve")
NAME = "bench"


def _registry(work: Path) -> Path:
    """``<work>/models/bench`` with v1 (full, champion) and v2 (a delta on v1)."""
    from bench.delta_export import _episodes, _train
    from components.promotion import registry
    from trainer.exported import export_checkpoint

    day, day_episodes = _episodes(work / "day", 4096, seed=0)
    hour, hour_episodes = _episodes(work / "hour", 1024, seed=1)
    day_run, _ = _train(day, work / "run-day", day_episodes, None)
    hour_run, _ = _train(hour, work / "run-hour", hour_episodes, day_run)
    export_checkpoint(day_run, work / "models", name=NAME, delta=True)
    v2 = export_checkpoint(hour_run, work / "models", name=NAME, delta=True)
    assert v2.base == "v1", v2
    registry.promote(work / "models", NAME, "v1", reason="bench")
    return work / "models" / NAME


def _candidates(model_dir: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    spec = json.loads((model_dir / "v1" / "feature_spec.json").read_text())
    buckets = np.asarray([f["buckets"] for f in spec["features"] for _ in range(f["slots"])])
    gen = np.random.default_rng(seed)
    sparse = (gen.random((n, len(buckets))) * buckets).astype(np.int64)
    return sparse, gen.random((n, len(spec["dense_features"]))).astype(np.float32)


def _summary(latencies: list[float], failed: int, seconds: float) -> dict[str, Any]:
    ms = np.asarray(latencies) * 1e3
    pct = {f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 90, 99)}
    return {"requests": len(ms), "failed": failed, "seconds": seconds,
            "requests_per_s": len(ms) / seconds, **pct,
            "max_ms": float(ms.max()) if len(ms) else None}  # fmt: skip


def _phase(server: Any, clients: int, seconds: float, body: Any, during: Any = None) -> dict:
    """``clients`` closed-loop clients for ``seconds``; ``body(client, i)`` -> infer kwargs;
    ``during()`` runs in the main thread meanwhile."""
    import httpx

    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    versions: list[list[tuple[float, str]]] = [[] for _ in range(clients)]
    failures: list[str] = []

    def client(c: int) -> None:
        with httpx.Client() as http:
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    out = server.infer(client=http, **body(c, i))
                except Exception as e:  # counted, reported
                    failures.append(repr(e)[:300])
                else:
                    latencies[c].append(time.perf_counter() - t)
                    versions[c].append((time.perf_counter(), out["version"]))
                i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    extra = during(t0) if during else {}
    remaining = seconds - (time.perf_counter() - t0)
    if remaining > 0:
        time.sleep(remaining)
    stop.set()
    for t in threads:
        t.join()
    out = _summary([x for c in latencies for x in c], len(failures), time.perf_counter() - t0)
    out["failures"] = failures[:5]
    seen = sorted({v for c in versions for _, v in c})
    out["versions_seen"] = seen
    if extra:
        swapped = [min((t for t, v in c if v == extra["to"]), default=None) for c in versions]
        out["swap"] = {**extra, "first_seen_after_promotion_s": [
            None if s is None else s - extra["promoted_at"] for s in swapped]}  # fmt: skip
        out["swap"].pop("promoted_at")
    return out


def run(work: Path, clients: int, seconds: float, candidates: int) -> dict[str, Any]:
    from components.promotion import registry
    from components.serve.loopback import LocalServer

    model_dir = _registry(work)
    sparse, dense = _candidates(model_dir, candidates, seed=0)
    K = json.loads((model_dir / "v1" / "feature_spec.json").read_text())["k_support"]
    s_sparse, s_dense = _candidates(model_dir, K, seed=1)
    support = {"support_sparse": s_sparse, "support_dense": s_dense,
               "support_click": (np.arange(K) % 2).astype(np.float32)}  # fmt: skip
    result: dict[str, Any] = {}
    with LocalServer(model_dir, work / "server.log", name=NAME, poll_seconds=0.5) as server:
        for _ in range(20):  # warm-up
            server.infer(sparse, dense)

        def plain(c: int, i: int) -> dict[str, Any]:
            return {"sparse": sparse, "dense": dense}

        sent: set[str] = set()

        def adapted(c: int, i: int) -> dict[str, Any]:
            task = f"task-{(c * 7 + i) % 20}"
            first = task not in sent
            sent.add(task)
            return {"sparse": sparse, "dense": dense, "task": task, "task_version": "1",
                    **({"support": support} if first else {})}  # fmt: skip

        def swap(t0: float) -> dict[str, Any]:
            time.sleep(min(3.0, seconds / 3))
            registry.promote(model_dir.parent, NAME, "v2", reason="bench")
            return {"from": "v1", "to": "v2", "promoted_at": time.perf_counter(),
                    "promoted_after_s": time.perf_counter() - t0}  # fmt: skip

        result["steady"] = _phase(server, clients, seconds, plain)
        result["adapted"] = _phase(server, clients, seconds, adapted)
        result["swap"] = _phase(server, clients, seconds, plain, during=swap)
    base = result["steady"]
    for phase in ("adapted", "swap"):
        r = result[phase]
        r["ratio_to_steady"] = {
            k: (r[k] / base[k]) if r[k] and base[k] else None
            for k in ("requests_per_s", "p50_ms", "p99_ms")
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent closed-loop clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--candidates", type=int, default=100, help="candidates per request")
    parser.add_argument("--work", default="out/bench/serve", help="scratch directory")
    parser.add_argument("--out", default="out/bench/serve.json", help="JSON result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    import os
    import shutil

    from trainer.durable import write_json_atomic

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    phases = run(work, args.clients, args.seconds, args.candidates)
    result = {"bench": "serve", "candidates_per_request": args.candidates,
              "clients": args.clients, "cpus": os.cpu_count(),
              "load_average_1m": os.getloadavg()[0], "python": platform.python_version(),
              **phases}  # fmt: skip
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))
    return 0 if all(phases[p]["failed"] == 0 for p in phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
