"""The demo end to end at ``--quick`` size: every stage's artefact, the summary against the
artefacts, the report's plots, and an idempotent rerun; plus the rerun policy and the CLI."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from components.demo.settings import MODES, DemoConfig
from components.demo.stages import DemoStopped, StageRunner

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(spark, tmp_path_factory) -> tuple[DemoConfig, dict]:
    """One quick demo run (Spark from the session fixture, 2 torchrun ranks per training run)."""
    from components.demo.flow import run_demo

    config = DemoConfig.preset(str(tmp_path_factory.mktemp("demo") / "out"), quick=True)
    return config, run_demo(config, spark=spark)


def _manifest(config: DemoConfig) -> dict:
    (interval,) = config.paths()["episodes"].glob("interval=*")
    return json.loads((interval / "_manifest.json").read_text())


def test_every_stage_leaves_its_artefacts(demo) -> None:
    config, result = demo
    p, s = config.paths(), result["summary"]
    interval = Path(s["outputs"]["episodes"])
    expected = [
        p["raw"] / "_generation.json", interval / "_manifest.json", interval / "_quarantine",
        p["validation"] / "raw" / "report.json", interval / "_validation" / "report.json",
        p["evaluation"] / "cold_start.json", p["score"] / "predictions.parquet",
        p["score"] / "predictions.rejected.parquet", p["summary"], p["report"],
    ]  # fmt: skip
    for mode in MODES:
        run = config.run_dir(mode)
        expected += [run / "eval.json", run / "metrics.jsonl", run / "checkpoints" / "latest"]
        expected.append(
            Path(s["outputs"]["models"]) / s["cold_start"][mode]["version"] / "CHECKSUMS"
        )
    missing = [str(x) for x in expected if not x.exists()]
    assert not missing, missing
    records = sorted(f.stem for f in p["stages"].glob("*.json"))
    assert records == sorted(["generate", "etl", "validate", "train-meta", "train-plain",
                              "export", "evaluate", "gate", "score"])  # fmt: skip
    assert _manifest(config)["validation"]["success"] is True
    assert all(v["success"] for v in s["data"]["validation"].values())
    # both runs trained on 2 ranks: one checkpoint shard per rank
    step = (config.run_dir("meta") / "checkpoints" / "latest").read_text().strip()
    shards = sorted((config.run_dir("meta") / "checkpoints" / step).glob("rank-*.pt"))
    assert len(shards) == config.nproc == 2


def test_summary_agrees_with_the_artefacts(demo) -> None:
    config, result = demo
    s = result["summary"]
    d, acc = s["data"], _manifest(config)["accounting"]
    generated = json.loads((config.paths()["raw"] / "_generation.json").read_text())
    assert d["rows_generated"] == config.rows == generated["rows_written"]
    assert d["rows_read"] == acc["rows_read"] == config.rows
    assert d["rows_read"] == d["rows_kept"] + d["rows_quarantined"]
    assert sum(d["quarantine_reasons"].values()) == d["rows_quarantined"] > 0
    quarantined = pq.read_table(s["outputs"]["quarantine"]).num_rows
    assert quarantined == d["rows_quarantined"]
    splits = _manifest(config)["splits"]
    assert {k: v["episodes"] for k, v in d["splits"].items()} == {
        k: v["episodes"] for k, v in splits.items()
    }
    assert d["splits"]["test_cold"]["episodes"] > 0

    for mode in MODES:  # exported scores reproduce the trainer's own evaluation
        c = s["cold_start"][mode]
        trained = json.loads((config.run_dir(mode) / "eval.json").read_text())["splits"]
        for when in ("before", "after"):
            assert c[when]["auc"] == pytest.approx(trained["test_cold"][when]["auc"], abs=1e-5)
        t = s["training"][mode]
        lines = (config.run_dir(mode) / "metrics.jsonl").read_text().splitlines()
        train = [r for r in map(json.loads, lines) if r["kind"] == "train"]
        assert t["steps"] == train[-1]["step"] == config.steps
        assert sum(t["comm_bytes_per_step_by_collective"].values()) == pytest.approx(
            t["comm_bytes_per_step"], rel=1e-6
        )
        assert t["comm_bytes_per_step"] > 0 and t["samples_per_s"] > 0
        starts = [0] + [r["step"] for r in train[:-1]]
        spans = [r["step"] - a for a, r in zip(starts, train, strict=True)]
        hits = sum(r["cache.hits"] * n for r, n in zip(train, spans, strict=True))
        lookups = sum(r["cache.lookups"] * n for r, n in zip(train, spans, strict=True))
        assert t["cache_hit_rate"] == pytest.approx(hits / lookups)
        assert 0.0 < t["cache_hit_rate"] <= 1.0


def test_the_promoted_version_is_the_one_scored(demo) -> None:
    config, result = demo
    s = result["summary"]
    models = Path(s["outputs"]["models"])
    pointer = json.loads((models / "CHAMPION").read_text())
    assert pointer["version"] == s["gate"]["champion"] == s["scoring"]["version"]
    decisions = s["gate"]["decisions"]
    assert [x["run"] for x in decisions] == ["plain", "meta"]
    assert decisions[0]["verdict"] == "no_champion"  # plain becomes the incumbent, v1
    expected = "meta" if decisions[1]["promote"] else "plain"
    assert s["gate"]["champion_run"] == expected
    assert s["cold_start"][expected]["version"] == pointer["version"]
    history = [json.loads(x) for x in (models / "HISTORY.jsonl").read_text().splitlines()]
    assert [h["to"] for h in history] == pointer["stack"]

    scored = json.loads((config.paths()["score"] / "predictions.summary.json").read_text())
    assert Path(scored["model"]).name == pointer["version"]
    assert pq.read_table(scored["output"]).num_rows == scored["rows_scored"]
    sc = s["scoring"]
    assert sc["rows_read"] == sc["rows_scored"] + sc["rows_rejected"] == sc["event_lines"]
    assert sc["tasks_adapted"] > 0 and sc["rows_adapted"] > 0


def test_report_holds_its_plots(demo) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    config, _ = demo
    text = config.paths()["report"].read_text()
    images = re.findall(r"<img [^>]*src=\"data:image/png;base64,([^\"]+)\"", text)
    assert len(images) == len(re.findall(r"<img\b", text)) == 6
    for data in images:
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")
        height, width = pixels.shape[:2]
        assert height >= 200 and width >= 400
        grey = (pixels[..., :3].mean(axis=-1) * 255).astype(np.uint8)
        assert len(np.unique(grey)) > 20  # axes, text and data, not a blank canvas
        assert (grey < 128).mean() > 0.005  # and some of it drawn dark
    for heading in ("Training curves", "Cold-start AUC", "Per-task AUC", "Communication",
                    "MixCache", "Gate, promotion and serving", "Where the outputs are"):  # fmt: skip
        assert heading in text, heading


def test_a_rerun_skips_every_completed_stage(demo, spark) -> None:
    from components.demo.flow import run_demo

    config, first = demo
    p = config.paths()
    before = {f: f.stat().st_mtime_ns for f in (p["score"] / "predictions.parquet",
              Path(first["summary"]["outputs"]["models"]) / "CHAMPION")}  # fmt: skip
    again = run_demo(config, spark=spark)
    assert again["skipped"] == list(first["stages"])
    assert {f: f.stat().st_mtime_ns for f in before} == before
    keep = ("data", "cold_start", "gate", "scoring", "training")
    assert {k: again["summary"][k] for k in keep} == {k: first["summary"][k] for k in keep}


def test_validation_fails_closed(demo, spark, tmp_path: Path) -> None:
    """Raw logs whose producer broke (an eighth of every file is garbage) stop the demo at the
    validation stage, with the report; nothing is trained."""
    from components.demo.flow import run_demo

    src = demo[0].paths()
    config = DemoConfig.preset(str(tmp_path / "out"), quick=True)
    p = config.paths()
    shutil.copytree(src["raw"], p["raw"])
    shutil.copytree(src["episodes"], p["episodes"])
    p["stages"].mkdir(parents=True)
    for stage in ("generate", "etl"):  # the same settings elsewhere: these two are up to date
        shutil.copy(src["stages"] / f"{stage}.json", p["stages"])
    for path in p["raw"].rglob("*.jsonl"):
        lines = path.read_text().count("\n")
        with open(path, "a") as f:
            f.write("{not json at all\n" * (lines // 8 + 1))
    with pytest.raises(DemoStopped, match="validation failed closed: the raw suite failed"):
        run_demo(config, spark=spark)
    report = json.loads((p["validation"] / "raw" / "report.json").read_text())
    assert report["success"] is False
    assert not p["train"].exists() and not (p["stages"] / "validate.json").exists()


def test_stage_runner_skips_replaces_and_refreshes(tmp_path: Path) -> None:
    out = tmp_path / "stage-out"
    calls = []

    def work(tag: str):
        def run() -> dict:
            calls.append(tag)
            out.mkdir(exist_ok=True)
            (out / f"{tag}.txt").write_text(tag)
            return {"tag": tag}

        return run

    def runner(fresh: bool = False) -> StageRunner:
        return StageRunner(tmp_path / "_stages", total=1, fresh=fresh)

    assert runner().run("s", "fp1", [out], work("a")) == {"tag": "a"}
    assert runner().run("s", "fp1", [out], work("b")) == {"tag": "a"}  # skipped: same inputs
    assert runner().run("s", "fp2", [out], work("c")) == {"tag": "c"}  # inputs changed
    assert sorted(f.name for f in out.iterdir()) == ["c.txt"]  # a clean replace
    (out / "c.txt").unlink()
    out.rmdir()
    assert runner().run("s", "fp2", [out], work("d")) == {"tag": "d"}  # output gone: rerun
    assert runner(fresh=True).run("s", "fp2", [out], work("e")) == {"tag": "e"}
    assert calls == ["a", "c", "d", "e"]


def test_cli_help_and_bad_options() -> None:
    code = ("import sys; from components.demo.__main__ import main\ntry: main(['--help'])\n"
            "except SystemExit as e: print('exit', e.code)\n"
            "print('heavy', any(m in sys.modules for m in ('torch', 'pyspark')))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "--quick" in done.stdout and "Reruns:" in done.stdout
    assert done.stdout.strip().splitlines()[-2:] == ["exit 0", "heavy False"]
    bad = subprocess.run([sys.executable, "-m", "components.demo", "--rows", "10"],
                         capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("demo: error: --rows must be an integer >= 1000")
