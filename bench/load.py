"""Load: the ETL on 10M generated rows and the trainer on a 10^8-row embedding table, on this
machine, with peak memory reported next to the throughput.

    python -m bench.load --out out/bench/load.json                      # both (tens of minutes)
    python -m bench.load --only trainer --table-rows 100000000          # the trainer part
    python -m bench.load --only etl --etl-rows 2000000                  # a smaller ETL run

ETL (``components.etl`` at Spark ``--master``, Parquet input from ``components.generate``, 1 %
corrupted rows): ``bench.etl_throughput.measure`` at ``--etl-rows`` and at a tenth of it, each in
a fresh Spark session with a ``--driver-memory`` heap (default 1g, the ETL's own), with its
parse-only baseline in the same session (``etl_over_baseline``) and the peak RSS of the driver's
process tree (Python + the JVM). Memory is bounded when the peak RSS does not grow with the input:
``peak_rss_growth`` = peak RSS at the full size / at a tenth. A run that fails (e.g. the heap is
exhausted) is reported as ``failed`` with its cause; each invocation appends to ``etl``.

Trainer (``trainer.trainer.Trainer``, one process, debug config, FOMAML, DLRM): synthetic episodes
whose ``user`` feature has ``--table-rows`` rows (dim ``--dim``), the rows and their Adagrad sums
in a memory-mapped store (``parallel.cache.mmap_dir``) behind a MixCache of ``--cache-rows`` device
rows; ``--steps`` steps, a checkpoint at the end (the whole table is saved), then evaluation. The
same run on a table of ``--baseline-rows`` rows without a cache is the baseline (same process).
Reported: samples/s (from ``metrics.jsonl``), peak RSS and peak anonymous RSS (``RssAnon`` of
``/proc/self/status``: the memory the process itself holds; file-backed pages of the store are
page cache the kernel can evict), against the bytes of the table.

Both parts note the load average before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.load")


class ProcMemory:
    """Peak ``VmRSS`` and ``RssAnon`` of this process (``/proc/self/status``), sampled in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.peak_rss = self.peak_anon = 0
        self.phase = "start"
        self.anon_by_phase: dict[str, int] = {}
        """Peak ``RssAnon`` per phase (the caller sets ``phase``)."""
        self._interval, self._stop = interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) * 1024
        anon = fields.get("RssAnon", 0)
        self.peak_rss = max(self.peak_rss, fields.get("VmRSS", 0))
        self.peak_anon = max(self.peak_anon, anon)
        self.anon_by_phase[self.phase] = max(self.anon_by_phase.get(self.phase, 0), anon)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> ProcMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _mb(n: float) -> int:
    return round(n / 2**20)


# ----------------------------------------------------------------------------------------- ETL
def run_etl_load(
    rows: int, master: str, work: Path, seed: int, driver_memory: str
) -> dict[str, Any]:
    """Two ETL runs (rows / 10 and rows), each against its parse-only baseline, each in a fresh
    Spark session (a run that fails, e.g. out of heap, is reported and does not taint the next)."""
    from bench.etl_throughput import generate, machine, measure
    from components.etl.session import build_spark

    report: dict[str, Any] = {"machine": machine(), "master": master,
                              "driver_memory": driver_memory, "runs": []}  # fmt: skip
    sizes = [rows // 10, rows]
    data = {n: generate(work, n, "parquet", seed) for n in sizes}
    warm = generate(work, 20_000, "parquet", seed)
    for n in sizes:
        conf = {"spark.ui.enabled": "true", "spark.driver.memory": driver_memory}
        spark = build_spark("metarec-bench-load", master=master, conf=conf)
        out = work / f"out-parquet-{n}"
        try:
            measure(spark, warm, work / "out-warmup", "parquet", 20_000)  # JIT warm-up
            shutil.rmtree(out, ignore_errors=True)
            run = measure(spark, data[n], out, "parquet", n)
            run.pop("spark_stages", None)  # per-stage detail: see bench.etl_throughput
        except Exception as e:  # the failure IS the measurement here
            text = str(e)
            cause = "java.lang.OutOfMemoryError: Java heap space" if "OutOfMemoryError" in text else (
                text.splitlines()[0][:300] if text else type(e).__name__)  # fmt: skip
            log.error("ETL on %d rows failed: %s", n, cause)
            run = {"format": "parquet", "rows": n, "failed": cause}
        finally:
            spark.stop()
            shutil.rmtree(out, ignore_errors=True)
        report["runs"].append(run)
    done = [r for r in report["runs"] if "failed" not in r]
    if len(done) == 2:
        small, full = done
        report["peak_rss_growth"] = round(
            full["peak_rss_mb_etl"] / max(small["peak_rss_mb_etl"], 1), 2
        )
    report["accounted"] = all(
        r["rows_read"] == r["rows_kept"] + r["rows_quarantined"] for r in done
    )
    report["load_average_end"] = list(os.getloadavg())
    return report


# ------------------------------------------------------------------------------------- trainer
def _train(data: Path, out: Path, steps: int, dim: int, cache: dict[str, Any]) -> dict[str, Any]:
    """One run of the real trainer; samples/s over the steps after the first log line."""
    from trainer.config import load_trainer_config
    from trainer.logging_utils import read_jsonl
    from trainer.trainer import Trainer

    overrides = {
        "data.path": str(data), "train.output_dir": str(out), "train.steps": steps,
        "train.log_every": max(steps // 10, 1), "checkpoint.every": 0, "checkpoint.keep": 1,
        "meta.mode": "fomaml", "model.embedding_dim": dim, "data.batch_episodes": 32,
        "eval.splits": ["valid"], "eval.max_episodes": 128, "train.threads": 1,
        **{f"parallel.cache.{k}": v for k, v in cache.items()},
    }  # fmt: skip
    cfg = load_trainer_config("debug", [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    shutil.rmtree(out, ignore_errors=True)
    timings: dict[str, float] = {}
    with ProcMemory() as mem:
        mem.phase = "build"
        t0 = time.perf_counter()
        trainer = Trainer(cfg).build()
        timings["build_s"] = time.perf_counter() - t0
        save = trainer.save

        def timed_save() -> Path:  # the final checkpoint (the whole table), then evaluation
            mem.phase = "checkpoint_and_eval"
            t = time.perf_counter()
            try:
                return save()
            finally:
                timings["checkpoint_s"] = time.perf_counter() - t

        trainer.save = timed_save  # type: ignore[method-assign]
        try:
            mem.phase = "train"
            t1 = time.perf_counter()
            trainer.fit()
            timings["fit_s"] = time.perf_counter() - t1
        finally:
            trainer.close()
    train = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    rates = [r["samples_per_s"] for r in train[1:] if "samples_per_s" in r] or [
        r.get("samples_per_s", 0.0) for r in train
    ]
    ckpt_bytes = sum(p.stat().st_size for p in (out / "checkpoints").rglob("*") if p.is_file())
    return {
        "steps": steps,
        "samples_per_s": round(sum(rates) / max(len(rates), 1)),
        "peak_rss_mb": _mb(mem.peak_rss),
        "peak_anon_rss_mb": _mb(mem.peak_anon),
        "peak_anon_rss_mb_by_phase": {k: _mb(v) for k, v in mem.anon_by_phase.items()},
        "checkpoint_mb": _mb(ckpt_bytes),
        **{k: round(v, 1) for k, v in timings.items()},
    }


def run_trainer_load(table_rows: int, baseline_rows: int, dim: int, cache_rows: int, steps: int,
                     work: Path) -> dict[str, Any]:  # fmt: skip
    """The big-table run behind the cache, and the small-table baseline without one."""
    from trainer.data.synthetic import write_synthetic_episodes

    report: dict[str, Any] = {"load_average_start": list(os.getloadavg()), "runs": {}}
    row_bytes = (dim + 1) * 4  # float32 row + its Adagrad sum
    for name, rows, cache in (
        ("baseline_small_table_no_cache", baseline_rows, {"enabled": False}),
        ("big_table_mmap_cache", table_rows, {"enabled": True, "capacity_rows": cache_rows,
                                              "mmap_dir": str(work / "mmap")}),
    ):  # fmt: skip
        data = work / f"episodes-{rows}"
        if not (data / "_manifest.json").exists():
            write_synthetic_episodes(
                data, num_tasks=400, k_support=8, q_query=8, dense_width=2, seed=0,
                features=[("user", rows, 1), ("ad", 5_000, 1), ("tags", 1_000, 2)],
                max_episodes_per_task=16, rows_per_group=256,
            )  # fmt: skip
        shutil.rmtree(work / "mmap", ignore_errors=True)
        log.info("trainer: %s (%d rows x %d)", name, rows, dim)
        run = _train(data, work / f"run-{name}", steps, dim, cache)
        run.update(table_rows=rows, table_mb=_mb(rows * row_bytes), cache=cache)
        report["runs"][name] = run
        log.info("trainer %s: %s", name, run)
        shutil.rmtree(work / f"run-{name}", ignore_errors=True)
        shutil.rmtree(work / "mmap", ignore_errors=True)
    big, small = (
        report["runs"]["big_table_mmap_cache"],
        report["runs"]["baseline_small_table_no_cache"],
    )
    report["throughput_ratio_big_over_baseline"] = round(
        big["samples_per_s"] / max(small["samples_per_s"], 1), 3
    )
    report["peak_anon_rss_over_table_bytes"] = round(big["peak_anon_rss_mb"] / big["table_mb"], 3)
    # what each extra table row costs in the process's own memory (MixCache's row -> slot map, the
    # null mask): the part of the footprint that grows with the table, next to its 4 * (dim + 1)
    # bytes that stay in the memory-mapped file
    extra_rows = max(big["table_rows"] - small["table_rows"], 1)
    report["anon_bytes_per_extra_row"] = round(
        (big["peak_anon_rss_mb"] - small["peak_anon_rss_mb"]) * 2**20 / extra_rows, 1
    )
    report["load_average_end"] = list(os.getloadavg())
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--only", default="etl,trainer", help="etl, trainer or both (default: both)")
    p.add_argument("--etl-rows", type=int, default=10_000_000, help="default: %(default)s")
    p.add_argument("--master", default="local[2]", help="Spark master (default: %(default)s)")
    p.add_argument("--driver-memory", default="1g",
                   help="Spark driver heap (default: %(default)s, the ETL's own default)")  # fmt: skip
    p.add_argument("--table-rows", type=int, default=100_000_000, help="default: %(default)s")
    p.add_argument("--baseline-rows", type=int, default=1_000_000, help="default: %(default)s")
    p.add_argument("--dim", type=int, default=8, help="embedding dim (default: %(default)s)")
    p.add_argument("--cache-rows", type=int, default=200_000, help="default: %(default)s")
    p.add_argument("--steps", type=int, default=1000, help="trainer steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work", default="out/bench/load_data", help="data, outputs, mmap store")
    p.add_argument("--out", default="out/bench/load.json", help="JSON report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    report["benchmark"] = "load"
    parts = {x.strip() for x in args.only.split(",") if x.strip()}
    if parts - {"etl", "trainer"}:
        p.error(f"--only takes etl and/or trainer, got {args.only!r}")
    if "trainer" in parts:
        report["trainer"] = run_trainer_load(
            args.table_rows, args.baseline_rows, args.dim, args.cache_rows, args.steps, work
        )
        path.write_text(json.dumps(report, indent=2) + "\n")
    if "etl" in parts:
        runs = report.setdefault("etl", [])  # one entry per invocation (size, heap)
        runs.append(
            run_etl_load(args.etl_rows, args.master, work / "etl", args.seed, args.driver_memory)
        )
        path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
