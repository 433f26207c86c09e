"""``bench/meta_step.py`` at a tiny shape: every timed variant reports its step time in wall and CPU
time, the per-phase breakdown and (``--profile``) its top operators (no timing asserted)."""

from __future__ import annotations

import json

from bench.meta_step import PHASES, main

TINY = [
    "--device", "cpu", "--threads", "1", "--fields", "4", "--rows", "400", "--dim", "4",
    "--mlp", "8,4", "--episodes", "3", "--support", "2", "--query", "2", "--steps", "2",
    "--loop-steps", "1", "--warmup", "1", "--batches", "1",
]  # fmt: skip


def test_meta_step_bench_reports_phases_cpu_time_and_profile(tmp_path):
    out = tmp_path / "meta_step.json"
    assert main([*TINY, "--only", "plain,maml,maml_loop", "--profile", "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    assert set(report["results"]) == {"plain", "maml", "maml_loop"}
    for name in ("plain", "maml"):
        r = report["results"][name]
        assert r["steps_timed"] == 2 and r["median_step_cpu_ms"] > 0
        assert list(r["phases_ms"]) == list(PHASES)
        assert all(v >= 0 for v in r["phases_ms"].values())
        ops = report["profile_top_ops"][name]
        assert ops and all(o["op"] and o["calls_per_step"] > 0 for o in ops)
    assert "phases_ms" not in report["results"]["maml_loop"]  # the loop reference is not split
    assert report["ratios"]["maml_vs_plain_cpu_time"] > 0
    assert report["ratios"]["fomaml_vs_plain"] is None  # not run
    assert report["targets"]["maml_vs_plain"]["min"] == 0.7
    assert set(report["machine"]["load_average"]) == {"before", "after"}
