"""Run every benchmark of ``bench/`` and write their JSON reports into one directory.

    python -m bench --out out/bench                   # what `make bench` runs
    python -m bench --out out/bench --only reader,meta_quality

Each benchmark is a module ``bench/<name>.py`` with ``main(argv) -> int`` that accepts
``--out <path>.json`` (its other options keep their defaults here; run a module directly,
``python -m bench.<name> --help``, to change them). Modules run one after the other in this
process, in name order; a failing one is reported and the others still run. The exit code is the
number of failed benchmarks (0: all ran). ``<out>/summary.json`` lists what ran, its exit code and
wall time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Benchmark module names: every ``bench/*.py`` except private and entry-point files."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    names = discover()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="out/bench", help="directory for the JSON reports")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(names)}")
    args = parser.parse_args(argv)
    selected = [n for n in args.only.split(",") if n] or names
    unknown = sorted(set(selected) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in selected:
        target = out / f"{name}.json"
        print(f"=== bench.{name} -> {target}", flush=True)
        t0 = time.perf_counter()
        try:
            code = int(importlib.import_module(f"bench.{name}").main(["--out", str(target)]) or 0)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            code = 1
        summary[name] = {"exit_code": code, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = [n for n, s in summary.items() if s["exit_code"] != 0]
    print(
        f"=== {len(summary) - len(failed)}/{len(summary)} benchmarks ran; failed: {failed or 'none'}"
    )
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
