"""``bench/gpu.py`` (issue 17) at a tiny size on the CPU, run as the GPU machine runs it: a fresh
interpreter that sees the repository only through ``PYTHONPATH`` and no other ``PYTHON*``
setting. The JSON must have every part, the oracles must hold (bf16 and compiled logits within
the recorded tolerance of fp32, the cached step's losses equal the uncached step's), and the
project code the run loaded must import nothing outside torch/numpy/pyarrow/xxhash and the
standard library (what the GPU image holds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("gpu_bench")
    out = tmp / "gpu.json"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
           "HOME": str(tmp), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, "-s", "-m", "bench.gpu", "--device", "cpu", "--quick", "--steps", "2",
           "--modes", "plain,fomaml", "--compile-modes", "plain", "--compile-backend", "aot_eager",
           "--threads", "1", "--work-dir", str(tmp), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.multiprocess  # the bench in a fresh interpreter (the `report` fixture)
def test_every_part_ran_on_the_cpu(report: dict) -> None:
    assert report["machine"]["device"] == "cpu"
    assert report["shape"]["samples_per_step"] == 8 * 16 and "smaller" in report["shape"]["note"]
    assert {k: v["status"] for k, v in report["sections"].items()} == dict.fromkeys(
        ("ceilings", "steps", "cache", "input", "compile"), "ok"
    )
    ceilings = report["sections"]["ceilings"]
    assert ceilings["device_copy_gbps"] > 0 and ceilings["matmul_fp32_tflops"] > 0
    variants = report["sections"]["steps"]["variants"]
    expected = {"plain.fp32", "plain.bf16", "fomaml.fp32", "fomaml.bf16",
                "torch_embeddingbag_sparse_adam", "embedding_only", "mlp_only"}  # fmt: skip
    assert set(variants) == expected
    assert all(v["samples_per_s"] > 0 and v["steps_timed"] == 2 for v in variants.values())
    assert variants["fomaml.fp32"]["model_tflops_fraction_of_matmul_ceiling"] > 0
    assert variants["embedding_only"]["embedding_gbps_fraction_of_copy_ceiling"] > 0
    pipeline = report["sections"]["input"]["pipeline"]
    assert 0 <= pipeline["input_wait_fraction"] <= 1 and pipeline["samples_per_s"] > 0
    targets = report["targets"]
    assert targets["fomaml_samples_per_s"]["met"] is None  # a GPU target: not judged on a CPU
    assert targets["fomaml_vs_plain"]["value"] == pytest.approx(
        variants["fomaml.fp32"]["samples_per_s"] / variants["plain.fp32"]["samples_per_s"],
        rel=1e-3,
    )


@pytest.mark.multiprocess  # the bench in a fresh interpreter (the `report` fixture)
def test_bf16_and_compiled_logits_agree_with_fp32_within_the_recorded_tolerance(
    report: dict,
) -> None:
    exact = report["sections"]["steps"]["exactness_vs_fp32"]
    assert set(exact) == {"plain.bf16", "fomaml.bf16"}
    for e in exact.values():
        assert e["logits_max_abs_diff"] > 0  # autocast really ran in bfloat16
        assert (
            e["logits_rel_err"] <= e["tolerance_rel"] and e["grads_rel_err"] <= e["tolerance_rel"]
        )
        assert e["exact_enough"] is True
    modes = report["sections"]["compile"]["modes"]
    assert set(modes) == {"plain"}  # the meta modes' compile runs in the full CPU run
    for m in modes.values():
        e = m["exactness_vs_fp32"]
        assert m["status"] == "ok" and e["exact_enough"] is True
        assert e["logits_rel_err"] <= e["tolerance_rel"]
        assert m["compile"]["samples_per_s"] > 0
    assert modes["plain"]["dynamo"]["unique_graphs"] >= 1  # the plain loss really was compiled


@pytest.mark.multiprocess  # the bench in a fresh interpreter (the `report` fixture)
def test_cached_step_equals_the_uncached_step(report: dict) -> None:
    cache = report["sections"]["cache"]
    variants = cache["variants"]
    base = variants["device_table"]["losses"]
    assert cache["warmup_steps"] > 1  # warmed up until the cache was full
    assert len(base) == cache["warmup_steps"] + 2 and len(set(base)) == len(base)  # it trains
    for name in ("cache_10", "cache_10_no_prefetch"):
        v = variants[name]
        assert v["losses"] == base and v["loss_max_abs_diff"] == 0.0
        assert 0 < v["hit_rate"] < 1 and v["h2d_bytes_per_step"] > 0
        assert v["ratio_vs_device_table"] > 0


@pytest.mark.multiprocess  # the bench in a fresh interpreter (the `report` fixture)
def test_the_run_imports_nothing_outside_the_gpu_image(report: dict) -> None:
    imports = report["imports"]
    assert imports["outside_image"] == []
    assert imports["project_modules_checked"] > 10
    assert {"torch", "numpy", "pyarrow", "trainer", "bench"} <= set(imports["imported"])


def test_the_import_check_flags_a_module_outside_the_image() -> None:
    from bench.gpu import outside_image

    found = outside_image({"yaml": {"trainer.x"}, "numpy": {"trainer.y"}, "json": {"bench.z"},
                           "sympy": {"bench.z"}, "trainer": {"bench.z"}})  # fmt: skip
    assert found == ["yaml (imported by trainer.x)"]
