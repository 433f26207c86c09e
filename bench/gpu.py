"""The GPU path, measured in one run (issue 17): the trainer's meta step, the MixCache and the input
pipeline, against the device's own ceilings measured in the same process.

    python -m bench.gpu --device cuda --out out/bench/gpu.json   # on a GPU machine, <= 8 min
    python -m bench.gpu --device cpu --out out/bench/gpu_cpu.json  # the same parts on the CPU
    python -m bench.gpu --device cpu --quick --out /tmp/gpu.json   # a tiny smoke run (~10 s)

Runs with the repository on ``sys.path`` and nothing but the standard library, torch, numpy,
pyarrow and xxhash installed (a GPU machine's stock PyTorch image): ``imports`` in the JSON lists
what every project module the run loaded imports (``outside_image``: anything else; must be empty).

Shape: 16 single-slot fields x dim 16 over one stacked table, the MeLU concat-MLP 256-128-1,
episodes of 32 support + 32 query samples, Zipf(1.2) ids. On CUDA 1,024 episodes (65,536 samples)
per step over 16 x 1M rows; on the CPU by default 64 episodes (4,096 samples) over 16 x 62,500
rows (``shape.note`` says which). Timing: CUDA events (the CPU's performance counter on the CPU)
after warm-up steps; medians. Parts, in this order, each recording its own failure (one failed
part never loses the others) and skipped with the reason when the time budget (``--budget-s``)
runs short; the JSON is rewritten after every part:

4. ``ceilings``: a device-to-device copy (bytes read + written per second), host->device from
   pinned memory (CUDA), and square matrix products (fp32, TF32 on CUDA, bf16) on random data;
1. ``steps``: plain, FOMAML and MAML steps (the trainer's functions, ``bench/_gpu_steps.py``) in
   fp32, TF32 (CUDA) and bf16 autocast, the ``nn.EmbeddingBag`` + sparse Adam baseline, the
   embedding work and the MLP alone, each with its model TFLOP/s and embedding GB/s as fractions
   of the ceilings; the exactness of every variant against fp32 (logits and dense gradients);
2. ``cache``: a 10 % device cache in front of (pinned) host rows vs the whole table on the device
   (``bench/_gpu_cache.py``): ratio, hit rate, bytes host->device; cached losses = uncached;
3. ``input``: reader -> pinned batches -> device -> step vs the step alone
   (``bench/_gpu_input.py``): the share of time the step waits on input;
5. ``compile``: ``torch.compile(outer_loss)`` per mode, its exactness and speed-up.

Targets (issue 17), evaluated in ``targets``: FOMAML >= 0.9x plain; cached >= 0.8x the device
table; the input pipeline never the bottleneck (waiting <= 5 % of the time); FOMAML >= 5M
samples/s on one H100/H200 (CUDA only).
"""

from __future__ import annotations

import argparse
import ast
import gc
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

IMAGE_DISTRIBUTIONS = ("torch", "numpy", "pyarrow", "xxhash")
PROJECT_PACKAGES = ("bench", "trainer")
SECTIONS = ("ceilings", "steps", "cache", "input", "compile")


def _defaults(device: str, quick: bool) -> dict[str, Any]:
    if quick:
        return dict(episodes=8, support=8, query=8, buckets=4_000, steps=3, warmup=1,
                    budget_s=120.0, copy_mb=16, matmul_n=256)  # fmt: skip
    if device == "cuda":
        return dict(episodes=1024, support=32, query=32, buckets=1_000_000, steps=20, warmup=3,
                    budget_s=420.0, copy_mb=1024, matmul_n=8192)  # fmt: skip
    return dict(episodes=64, support=32, query=32, buckets=62_500, steps=10, warmup=2,
                budget_s=420.0, copy_mb=256, matmul_n=1024)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when available")  # fmt: skip
    p.add_argument("--out", default="out/bench/gpu.json", help="JSON report path")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every part")
    p.add_argument("--episodes", type=int, help="episodes per step (CUDA 1024, CPU 64)")
    p.add_argument("--buckets", type=int, help="rows per field (CUDA 1,000,000, CPU 62,500)")
    p.add_argument("--steps", type=int, help="timed steps per variant")
    p.add_argument("--warmup", type=int, help="untimed steps first")
    p.add_argument("--budget-s", type=float, help="wall-clock budget in seconds (420)")
    p.add_argument("--modes", default="plain,fomaml,maml", help="comma-separated meta modes")
    p.add_argument("--compile-modes", help="meta modes of the compile part (default: --modes)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated parts")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    p.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (0: torch's with CUDA, 1 on CPU)"
    )
    p.add_argument("--work-dir", default="", help="where the input part writes its episodes")
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device (torch.cuda.is_available())")
    for key, value in _defaults(args.device, args.quick).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown --sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


# ------------------------------------------------------------------------------- ceilings
def ceilings(device: torch.device, timer, copy_mb: int, matmul_n: int) -> dict[str, Any]:
    """Part 4's limits: copy bandwidth, pinned host->device bandwidth, matrix-product TFLOP/s."""
    out: dict[str, Any] = {"status": "ok"}
    n = copy_mb * 2**20 // 4
    src = torch.rand(n, device=device)
    out["device_copy_gbps"] = round(2 * src.nbytes / _copy_seconds(timer, src, device) / 1e9, 2)
    out["copy_bytes"] = src.nbytes
    del src
    if device.type == "cuda":
        host = torch.rand(n // 4).pin_memory()
        out["h2d_pinned_gbps"] = round(host.nbytes / _copy_seconds(timer, host, device) / 1e9, 2)
        del host
    precisions = ("fp32", "tf32", "bf16") if device.type == "cuda" else ("fp32", "bf16")
    for prec in precisions:
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        a = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
        b = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high" if prec == "tf32" else "highest")
        try:
            secs = timer.run(lambda _, a=a, b=b: a @ b, 2, 5 if device.type == "cpu" else 10)
        finally:
            torch.set_float32_matmul_precision(before)
        out[f"matmul_{prec}_tflops"] = round(2 * matmul_n**3 / _median(secs) / 1e12, 6)
    out["matmul_n"] = matmul_n
    return out


def _copy_seconds(timer, src: torch.Tensor, device: torch.device) -> float:
    """Median seconds of copying ``src`` into a tensor on ``device``."""
    dst = torch.empty(src.shape, dtype=src.dtype, device=device)
    return _median(timer.run(lambda _: dst.copy_(src, non_blocking=True), 3, 10))


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


# -------------------------------------------------------------------------------- imports
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _required_closure(names: tuple[str, ...]) -> set[str]:
    """``names`` and every distribution they require (extras left out), by installed metadata."""
    from importlib import metadata

    seen: set[str] = set()
    todo = [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" not in req.replace('"', "").replace("'", ""):
                todo.append(_norm(re.match(r"[A-Za-z0-9._-]+", req).group(0)))
    return seen


def _imported_tops(path: str) -> set[str]:
    """Top-level names of every absolute import statement in a source file (run or not)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.partition(".")[0])
    return names


def outside_image(imported: dict[str, set[str]]) -> list[str]:
    """The entries of ``imported`` (top-level name -> importing modules) that are none of the
    standard library, torch/numpy/pyarrow/xxhash (and what they require) and the project."""
    from importlib import metadata

    allowed = _required_closure(IMAGE_DISTRIBUTIONS)
    ok = set(sys.stdlib_module_names) | set(PROJECT_PACKAGES) | set(IMAGE_DISTRIBUTIONS)
    for top, dists in metadata.packages_distributions().items():
        if {_norm(d) for d in dists} & allowed:
            ok.add(top)
    return [f"{top} (imported by {', '.join(sorted(by))})"
            for top, by in sorted(imported.items()) if top not in ok]  # fmt: skip


def imports_report() -> dict[str, Any]:
    """What the project's code that this run loaded imports: every import statement of each
    loaded ``bench``/``trainer`` module (also those inside functions), and ``outside_image``."""
    loaded = sorted(
        (name, mod.__file__)
        for name, mod in list(sys.modules.items())
        if name.partition(".")[0] in PROJECT_PACKAGES and getattr(mod, "__file__", None)
    )
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) and main.__spec__.name == "bench.gpu":
        loaded.append(("bench.gpu", main.__file__))
    imported: dict[str, set[str]] = {}
    for name, path in loaded:
        for top in _imported_tops(path):
            imported.setdefault(top, set()).add(name)
    return {
        "project_modules_checked": len(loaded),
        "imported": sorted(imported),
        "outside_image": outside_image(imported),
        "rule": "standard library, torch/numpy/pyarrow/xxhash and what they require, bench/ and "
        "trainer/",
    }


# ---------------------------------------------------------------------------------- targets
def targets(result: dict[str, Any], device: str) -> dict[str, Any]:
    """The issue's targets, evaluated on what ran (``met`` None: the figure is missing)."""
    parts = result["sections"]
    steps = parts.get("steps", {}).get("variants", {})

    def rate(name: str) -> float | None:
        return steps.get(name, {}).get("samples_per_s")

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 4)

    cache = parts.get("cache", {}).get("variants", {}).get("cache_10", {})
    pipe = parts.get("input", {}).get("pipeline", {})
    fomaml = rate("fomaml.fp32")
    found = {
        "fomaml_vs_plain": (ratio(fomaml, rate("plain.fp32")), 0.9),
        "cached_vs_device_table": (cache.get("ratio_vs_device_table"), 0.8),
        "input_wait_fraction_max": (pipe.get("input_wait_fraction"), 0.05),
        "fomaml_samples_per_s": (fomaml if device == "cuda" else None, 5e6),
    }
    out = {}
    for key, (value, bound) in found.items():
        met = (
            None if value is None else (value <= bound if key.endswith("_max") else value >= bound)
        )
        out[key] = {"value": value, "target": bound, "met": met}
    out["fomaml_samples_per_s"]["note"] = "CUDA only (one H100/H200)"
    return out


# ------------------------------------------------------------------------------------- main
def machine(device: torch.device) -> dict[str, Any]:
    import numpy

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "threads": torch.get_num_threads(),
        "device": device.type,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": props.name,
            "multiprocessors": props.multi_processor_count,
            "device_memory_gib": round(props.total_memory / 2**30, 1),
            "l2_cache_mb": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
            "cuda": torch.version.cuda,
        }
    return info


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every selected part in turn (see the module docstring); returns the report."""
    from bench._gpu_common import Budget, Shape, Timer, ZipfBatches
    from trainer.durable import write_json_atomic

    device = torch.device(args.device)
    # One thread on a CPU run: on a shared 2-core VM two OpenMP threads made every variant up to
    # 10x slower and noisy (bench/cache.py); the reader's and the cache's threads get the rest.
    threads = args.threads or (1 if device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    budget, timer = Budget(args.budget_s), Timer(device)
    modes = tuple(m for m in args.modes.split(",") if m)
    shape = Shape(16, args.buckets, 16, (256, 128), args.episodes, args.support, args.query, 1.2)
    note = (
        "production batch (>= 64k samples per step)"
        if shape.samples >= 65_536
        else f"smaller than the GPU's 65,536 samples per step ({args.device} default or flags)"
    )
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "machine": machine(device),
        "shape": {**shape.as_dict(), "table_rows": shape.rows, "note": note},
        "settings": {"steps": args.steps, "warmup": args.warmup, "budget_s": args.budget_s,
                     "modes": list(modes), "compile_backend": args.compile_backend,
                     "timer": "cuda events" if device.type == "cuda" else "perf_counter"},
        "sections": {},
    }  # fmt: skip
    out = Path(args.out)
    selected = [s for s in SECTIONS if s in args.sections.split(",")]
    batches: list = []
    # Seconds a part needs at least: a part is skipped, with the reason, below that.
    need = {"ceilings": 5, "steps": 20, "cache": 15, "input": 15, "compile": 30}
    if device.type == "cuda":  # inductor compiles each mode's graphs with Triton: minutes
        need["compile"] = 60

    def part(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if not budget.allows(need[name]):
            result["sections"][name] = {"status": budget.skip_reason(need[name])}
        else:
            t0 = time.perf_counter()
            try:
                result["sections"][name] = fn()
            except Exception:  # one failed part must not lose the others' figures
                tb = traceback.format_exc()
                result["sections"][name] = {"status": "failed", "error": tb[-4000:]}
            result["sections"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(
            f"[{budget.elapsed():6.1f}s] {name}: {result['sections'][name]['status']}", flush=True
        )
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # The whole report after every part: a run killed at the time limit keeps what ran.
        result["targets"] = targets(result, device.type)
        result["imports"] = imports_report()
        result["wall_s"] = round(budget.elapsed(), 1)
        write_json_atomic(out, result)

    def steps() -> dict[str, Any]:
        from bench._gpu_steps import run_steps

        zipf = ZipfBatches(shape, seed=0)
        batches.extend(zipf.next().to(device) for _ in range(4))
        ceil = result["sections"].get("ceilings", {})
        return run_steps(shape, device, batches, timer, budget, modes=modes, steps=args.steps,
                         warmup=args.warmup, ceilings=ceil)  # fmt: skip

    def cache() -> dict[str, Any]:
        from bench._gpu_cache import run_cache

        return run_cache(shape, device, timer, budget, steps=args.steps, warmup=args.warmup,
                         need_s=need["cache"])  # fmt: skip

    def input_pipeline() -> dict[str, Any]:
        from bench._gpu_input import run_input

        return run_input(shape, device, timer, steps=args.steps, warmup=args.warmup,
                         work_dir=args.work_dir)  # fmt: skip

    def compiled() -> dict[str, Any]:
        from bench._gpu_steps import run_compile

        if not batches:
            batches.extend(ZipfBatches(shape, seed=0).next().to(device) for _ in range(4))
        names = tuple(m for m in (args.compile_modes or args.modes).split(",") if m)
        return run_compile(shape, device, batches, timer, budget, modes=names, steps=args.steps,
                           warmup=args.warmup, backend=args.compile_backend,
                           need_s=need["compile"])  # fmt: skip

    fns = {
        "ceilings": lambda: ceilings(device, timer, args.copy_mb, args.matmul_n),
        "steps": steps,
        "cache": cache,
        "input": input_pipeline,
        "compile": compiled,
    }
    for name in selected:
        part(name, fns[name])
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A short table of the headline figures (printed last)."""
    device = result["machine"].get("device_name", result["machine"]["device"])
    samples = result["shape"]["samples_per_step"]
    lines = [f"device {device}, {samples} samples/step, {result['wall_s']} s"]
    for name, res in result["sections"].get("steps", {}).get("variants", {}).items():
        lines.append(f"  {name:>32}: {res['samples_per_s']:>14,.0f} samples/s")
    for key, t in result.get("targets", {}).items():
        lines.append(f"  target {key}: {t['value']} (target {t['target']}, met {t['met']})")
    lines.append(f"  imports outside the image: {result['imports']['outside_image'] or 'none'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print("\n".join(summary_lines(result)))
    failed = [k for k, v in result["sections"].items() if v["status"] == "failed"]
    return 1 if failed or result["imports"]["outside_image"] else 0


if __name__ == "__main__":
    sys.exit(main())
