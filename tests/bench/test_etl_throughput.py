"""``bench/etl_throughput.py``'s memory accounting: what :class:`PeakRss` counts and how
``memory_check`` judges the issue's target (10 M rows in <= 2 GB peak RSS). No Spark here: the
benchmark itself is run by hand (its docstring)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bench.etl_throughput import TARGET, PeakRss, memory_check

MB = 2**20

# A stand-in for the driver: it starts the JVM's stand-in (its direct child) holding 150 MB, which
# starts a Python worker (this interpreter) holding 100 MB and a helper command (perl) holding
# 200 MB, then says "ready". (Not this test's process: under xdist it has a real JVM child.)
_DRIVER = """
import subprocess, sys
jvm = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)
print(jvm.stdout.readline().strip(), flush=True)
sys.stdin.read()
"""
_CHILD = """
import subprocess, sys
hold = bytearray(b"j") * (150 << 20)
worker = "x = bytearray(b'w') * (100 << 20); print('ok', flush=True); import time; time.sleep(60)"
helper = '$| = 1; $x = "h" x (200 << 20); print "ok\\\\n"; sleep 60'
procs = [subprocess.Popen([sys.executable, "-c", worker], stdout=subprocess.PIPE, text=True),
         subprocess.Popen(["perl", "-e", helper], stdout=subprocess.PIPE, text=True)]
for p in procs:
    assert p.stdout.readline().strip() == "ok"
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(shutil.which("perl") is None, reason="needs perl for the helper")
def test_peak_rss_counts_driver_jvm_and_python_workers_not_helper_commands():
    child = subprocess.Popen([sys.executable, "-c", _DRIVER, _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "ready"
        with PeakRss(interval=0.05, pid=child.pid) as mem:
            time.sleep(0.3)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert 150 * MB <= mem.peak_jvm < 200 * MB  # the direct child
    assert 100 * MB <= mem.peak_workers < 150 * MB  # the Python worker; perl's 200 MB left out
    assert mem.peak_python > 0
    assert mem.peak_jvm + mem.peak_workers <= mem.peak
    assert mem.peak <= mem.peak_python + mem.peak_jvm + mem.peak_workers


def _run(fmt: str, rows: int, peak: int) -> dict:
    return {"format": fmt, "rows": rows, "peak_rss_mb_etl": peak}


def test_memory_check_judges_the_largest_run_of_each_format_at_the_target_size():
    runs = [
        _run("parquet", 1_000_000, 1500),
        _run("parquet", 10_000_000, 1800),
        _run("jsonl", 200_000, 1000),
        _run("jsonl", 1_000_000, 2100),
    ]
    parquet, jsonl = memory_check(runs, TARGET)
    assert parquet == {
        "format": "parquet", "rows": 10_000_000, "peak_rss_mb": 1800, "target_mb": 2048,
        "target_rows": 10_000_000, "met": True, "growth": 1.2, "growth_from_rows": 1_000_000,
    }  # fmt: skip
    assert jsonl["rows"] == 1_000_000 and jsonl["growth"] == 2.1
    assert not jsonl["met"]  # over 2048 MB, and smaller than the target size anyway
    # under the limit but at 1 M rows: not the target's measurement
    (small,) = memory_check([_run("parquet", 1_000_000, 1500)], TARGET)
    assert not small["met"] and small["growth"] is None and small["growth_from_rows"] is None
    (over,) = memory_check([_run("parquet", 10_000_000, 2049)], TARGET)
    assert not over["met"]
