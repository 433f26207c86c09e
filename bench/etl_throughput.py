"""ETL throughput: raw ad logs -> written episodes, against the parse-only baseline of the same run.

    python -m bench.etl_throughput --rows 1000000                 # the issue's measurement
    python -m bench.etl_throughput --rows 100000 --formats parquet  # a quick look

For each size (``--rows`` and a smaller ``--small-rows``, to show memory is flat in the input size)
and each input format, at Spark ``--master`` (``local[2]``):

- baseline: parse only — read the files with the ETL's schema and touch every column
  (``write.format("noop")``): Parquet with the raw Arrow schema, JSONL with the all-strings schema;
- ETL: ``run_etl`` end to end (listing, parse, validate, de-duplicate, encode, cut episodes, write
  episodes and quarantine, manifest), rows read / wall seconds;
- ratio ETL / baseline; peak memory of the driver process tree (Python, the JVM and its Python
  workers; RSS sampled every 0.1 s, see :class:`PeakRss`); the ETL's stage wall times and, from
  Spark's REST API, per-stage task time, CPU time, shuffle and spill bytes, labelled with the ETL
  stage that ran them.

The memory check (issue 14: 10 M rows in <= 2 GB peak RSS, and flat in the input size) is the
same benchmark at 10 M rows, with 1 M as the small size (generating 10 M rows: ~80 s, 226 MB of
Parquet; both ETL runs: ~10 min on 2 busy cores)::

    python -m bench.etl_throughput --rows 10000000 --small-rows 1000000 --formats parquet

``memory_check`` in the JSON compares, per format, the peak RSS of the largest run with
``target.peak_rss_mb``; ``met`` is true only when that run had ``target.peak_rss_at_rows`` rows or
more; ``growth`` is its peak over the smallest run's.

The data comes from ``components.generate`` (seeded, Zipf traffic, 1 % corruption) and is kept in
``--work`` for the next run. A small warm-up ETL runs first (Spark's generated code is compiled
there), but the JVM's JIT still compiles code that only gets hot at the measured size during the
first run at that size; ``--repeat 2`` measures again in the same session, as a long-lived
session (the delivery flow's) runs it.
Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.etl_throughput")
START, HOURS = "2026-11-01T00", 24
TARGET: dict[str, Any] = {  # issue 14
    "etl_over_baseline": {"parquet": 0.35, "jsonl": 0.5},
    "parquet_rows_per_s": 150_000,
    "peak_rss_mb": 2048,
    "peak_rss_at_rows": 10_000_000,
}


class PeakRss:
    """Peak RSS of this process, the Spark JVM and its Python workers, sampled in a thread.

    Counted: this process (``peak_python``), its direct children (the JVM that ``spark-submit``
    execs: ``peak_jvm``) and descendants running this interpreter (the Python workers of
    ``mapInArrow``: ``peak_workers``). Not counted: the helper commands the JVM spawns (Hadoop's
    local file system runs ``chmod``/``ls``). Until its ``exec``, such a child shares the JVM's
    address space (``posix_spawn`` is a vfork) and reports the JVM's RSS as its own: summing it
    counted the JVM twice (3.6 GB reported for 1M rows where the JVM held 1.2-1.5 GB). The Python
    workers are forks of one daemon: each one's RSS includes the pages they share, so their sum
    is an upper bound (JSONL, 1M rows: 581 MB RSS where their PSS summed to ~410 MB).
    """

    def __init__(self, interval: float = 0.1, pid: int | None = None) -> None:
        """``pid``: the driver process (default: this one)."""
        import psutil

        self._proc, self._interval = psutil.Process(pid), interval
        self._exe = self._proc.exe()
        self.peak = self.peak_python = self.peak_jvm = self.peak_workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        python, jvm, workers = self._proc.memory_info().rss, 0, 0
        for p in self._proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a child exited between listing and reading
                if p.ppid() == self._proc.pid:
                    jvm += p.memory_info().rss
                elif p.exe() == self._exe:
                    workers += p.memory_info().rss
        self.peak_python = max(self.peak_python, python)
        self.peak_jvm = max(self.peak_jvm, jvm)
        self.peak_workers = max(self.peak_workers, workers)
        return python + jvm + workers

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def generate(work: Path, rows: int, fmt: str, seed: int) -> Path:
    """Seeded raw logs in ``work``, reused when a previous run wrote the same ones."""
    from components.generate import GeneratorConfig, generate

    out = work / f"raw-{fmt}-{rows}"
    marker = out / "_generation.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        if meta.get("rows_written") == rows or meta.get("config", {}).get("rows") == rows:
            log.info("reusing %s", out)
            return out
    shutil.rmtree(out, ignore_errors=True)
    t = time.monotonic()
    generate(
        GeneratorConfig(
            out=str(out), rows=rows, format=fmt, seed=seed, corrupt=0.01, start=START, hours=HOURS
        )
    )
    log.info("generated %d %s rows in %.1f s", rows, fmt, time.monotonic() - t)
    return out


def baseline(spark, listing) -> float:
    """Seconds to parse the files with the ETL's schema, every column touched."""
    from components.etl.rows import jsonl_read_schema, spark_raw_schema

    paths = listing.spark_paths()
    if listing.fmt == "parquet":
        df = spark.read.schema(spark_raw_schema()).parquet(*paths)
    else:
        df = spark.read.schema(jsonl_read_schema()).option("mode", "PERMISSIVE").json(paths)
    spark.sparkContext.setJobDescription("baseline: parse only")
    t = time.monotonic()
    df.write.format("noop").mode("overwrite").save()
    return time.monotonic() - t


def stage_metrics(spark, since_stage: int) -> list[dict[str, Any]]:
    """Per-stage metrics from the Spark UI's REST API (stages with id >= ``since_stage``)."""
    url = spark.sparkContext.uiWebUrl
    if not url:
        return []
    app = spark.sparkContext.applicationId
    with urllib.request.urlopen(f"{url}/api/v1/applications/{app}/stages?details=false") as r:
        stages = json.load(r)
    with urllib.request.urlopen(f"{url}/api/v1/applications/{app}/jobs") as r:
        jobs = json.load(r)
    label = {s: j.get("description") or j.get("name") for j in jobs for s in j.get("stageIds", [])}
    out = []
    for s in sorted(stages, key=lambda s: s["stageId"]):
        if s["stageId"] < since_stage or s.get("status") != "COMPLETE":
            continue
        out.append({
            "stage": s["stageId"], "label": label.get(s["stageId"]), "tasks": s["numTasks"],
            "task_s": round(s.get("executorRunTime", 0) / 1e3, 3),
            "cpu_s": round(s.get("executorCpuTime", 0) / 1e9, 3),
            "gc_s": round(s.get("jvmGcTime", 0) / 1e3, 3),
            "input_mb": round(s.get("inputBytes", 0) / 2**20, 1),
            "shuffle_write_mb": round(s.get("shuffleWriteBytes", 0) / 2**20, 1),
            "shuffle_read_mb": round(s.get("shuffleReadBytes", 0) / 2**20, 1),
            "spill_mb": round((s.get("memoryBytesSpilled", 0) + s.get("diskBytesSpilled", 0)) / 2**20, 1),
        })  # fmt: skip
    return out


def _by_label(stages: list[dict]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in stages:
        d = out.setdefault(
            s["label"] or "?", {"task_s": 0.0, "cpu_s": 0.0, "gc_s": 0.0, "shuffle_write_mb": 0.0}
        )
        for k in d:
            d[k] = round(d[k] + s[k], 3)
    return out


def _last_stage(spark) -> int:
    tracker = spark.sparkContext.statusTracker()
    ids = [*tracker.getActiveStageIds()]
    for j in tracker.getJobIdsForGroup(None) or []:
        info = tracker.getJobInfo(j)
        if info:
            ids += list(info.stageIds)
    return max(ids, default=-1) + 1


def measure(spark, raw: Path, out: Path, fmt: str, rows: int) -> dict[str, Any]:
    from components.etl import EtlConfig, run_etl
    from components.etl.extract import list_input

    end = f"2026-11-0{1 + HOURS // 24}T{HOURS % 24:02d}" if HOURS % 24 == 0 else None
    config = EtlConfig(input=str(raw), output=str(out), start=START, end=end, input_format=fmt)
    listing = list_input(config)
    with PeakRss() as mem_base:
        base_s = baseline(spark, listing)
    first = _last_stage(spark)
    with PeakRss() as mem_etl:
        result = run_etl(config, spark)
    stages = stage_metrics(spark, first)
    etl_rate = result.rows_read / result.seconds
    base_rate = result.rows_read / base_s
    row = {
        "format": fmt, "rows": rows, "rows_read": result.rows_read, "rows_kept": result.rows_kept,
        "rows_quarantined": result.rows_quarantined, "episodes": result.episodes,
        "input_mb": round(listing.total_bytes / 2**20, 1),
        "baseline_parse_s": round(base_s, 2), "baseline_rows_per_s": round(base_rate),
        "etl_s": round(result.seconds, 2), "etl_rows_per_s": round(etl_rate),
        "etl_over_baseline": round(etl_rate / base_rate, 3),
        "peak_rss_mb_baseline": round(mem_base.peak / 2**20), "peak_rss_mb_etl": round(mem_etl.peak / 2**20),
        "peak_rss_mb_etl_python": round(mem_etl.peak_python / 2**20),
        "peak_rss_mb_etl_jvm": round(mem_etl.peak_jvm / 2**20),
        "peak_rss_mb_etl_workers": round(mem_etl.peak_workers / 2**20),
        "etl_stage_s": result.stage_seconds, "spark_by_etl_stage": _by_label(stages), "spark_stages": stages,
    }  # fmt: skip
    log.info(
        "%s %d rows: ETL %.1f s = %.0f rows/s; parse-only %.1f s = %.0f rows/s (ratio %.2f); peak RSS %d MB",
        fmt, rows, result.seconds, etl_rate, base_s, base_rate, row["etl_over_baseline"], row["peak_rss_mb_etl"],
    )  # fmt: skip
    return row


def memory_check(runs: list[dict[str, Any]], target: dict[str, Any]) -> list[dict[str, Any]]:
    """Per format: the largest run's peak RSS against ``target["peak_rss_mb"]`` (met only at
    ``target["peak_rss_at_rows"]`` rows or more) and its growth over the smallest run's."""
    out = []
    for fmt in dict.fromkeys(r["format"] for r in runs):
        mine = sorted((r for r in runs if r["format"] == fmt), key=lambda r: r["rows"])
        small, large = mine[0], mine[-1]
        peak = large["peak_rss_mb_etl"]
        out.append({
            "format": fmt, "rows": large["rows"], "peak_rss_mb": peak,
            "target_mb": target["peak_rss_mb"], "target_rows": target["peak_rss_at_rows"],
            "met": peak <= target["peak_rss_mb"] and large["rows"] >= target["peak_rss_at_rows"],
            "growth": round(peak / small["peak_rss_mb_etl"], 3) if len(mine) > 1 else None,
            "growth_from_rows": small["rows"] if len(mine) > 1 else None,
        })  # fmt: skip
    return out


def machine() -> dict[str, Any]:
    import pyspark

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "pyspark": pyspark.__version__}  # fmt: skip
    with contextlib.suppress(OSError, StopIteration):
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )  # fmt: skip
    info["load_average"] = list(os.getloadavg())
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.etl_throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--rows", type=int, default=1_000_000, help="rows of the main run (default: %(default)s)"
    )
    p.add_argument("--small-rows", type=int, default=None,
                   help="rows of the small run, for memory flatness (default: rows / 5; 0 = skip)")  # fmt: skip
    p.add_argument(
        "--formats", default="parquet,jsonl", help="input formats (default: %(default)s)"
    )
    p.add_argument("--master", default="local[2]", help="Spark master (default: %(default)s)")
    p.add_argument(
        "--work",
        default="out/bench/etl_data",
        help="generated data and ETL outputs (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=7, help="generator seed (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=1,
                   help="measure each size and format this many times in the same session: the "
                        "first run pays the JVM's JIT compilation at that size, later ones show a "
                        "long-lived session's (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--out", default="out/bench/etl_throughput.json", help="JSON report (default: %(default)s)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    formats = [f for f in args.formats.split(",") if f]
    small = args.rows // 5 if args.small_rows is None else args.small_rows
    sizes = [s for s in (small, args.rows) if s > 0]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    from components.etl.session import build_spark

    report: dict[str, Any] = {"benchmark": "etl_throughput", "machine": machine(), "master": args.master,
                              "target": TARGET, "runs": []}  # fmt: skip
    data = {(n, f): generate(work, n, f, args.seed) for n in sizes for f in formats}
    warm = generate(work, 20_000, formats[0], args.seed)
    spark = build_spark("metarec-bench-etl", master=args.master, conf={"spark.ui.enabled": "true"})
    report["spark_conf"] = {
        k: v
        for k, v in spark.sparkContext.getConf().getAll()
        if any(w in k for w in ("memory", "master", "JavaOptions"))
    }
    measure(spark, warm, work / "out-warmup", formats[0], 20_000)  # JIT warm-up, not reported
    for n in sizes:
        for f in formats:
            for i in range(args.repeat):
                out = work / f"out-{f}-{n}"
                shutil.rmtree(out, ignore_errors=True)
                report["runs"].append({**measure(spark, data[(n, f)], out, f, n), "repeat": i})
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["memory_check"] = memory_check(report["runs"], TARGET)
    spark.stop()
    from trainer.durable import write_json_atomic

    write_json_atomic(args.out, report)
    log.info("wrote %s", args.out)
    for r in report["runs"]:
        print(f"{r['format']:8s} {r['rows']:>9d} rows (run {r['repeat'] + 1}): ETL {r['etl_rows_per_s']:>8,d} rows/s "
              f"(parse-only {r['baseline_rows_per_s']:>9,d}, ratio {r['etl_over_baseline']:.2f}), "
              f"peak RSS {r['peak_rss_mb_etl']} MB")  # fmt: skip
    for m in report["memory_check"]:
        growth = f", {m['growth']}x the {m['growth_from_rows']}-row run's" if m["growth"] else ""
        print(f"memory {m['format']}: {m['peak_rss_mb']} MB at {m['rows']} rows{growth}; target "
              f"{m['target_mb']} MB at {m['target_rows']} rows: {'met' if m['met'] else 'NOT met'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
