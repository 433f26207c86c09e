"""The demo: what is its own (the delivery configs it hands the steps, its summary and report from a
recorded set of step results, its command line), that it calls the DAG's step functions, and, in
the slow tier, the whole flow at ``--quick`` size with an idempotent rerun."""

from __future__ import annotations

import ast
import base64
import importlib
import inspect
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

REPO = Path(__file__).resolve().parents[2]
RECORDED = Path(__file__).with_name("demo_recorded.json")
"""A ``--quick`` run's step results, the artefacts its summary reads, and the summary it gave
(paths under ``{root}``). Rewrite it after a change of the summary, from a finished quick demo:
``python -c "from tests.components.test_demo import record; record('out/demo-q')"``."""
STEP_MODULES = ("components.steps.data", "components.steps.training", "components.steps.delivery")
CHAIN = ("check_raw", "validate_raw_step", "etl_step", "validate_episodes_step", "train_step",
         "export_step", "evaluate_step", "gate_step", "promote_step")  # fmt: skip


# The demo drives the DAG's step functions ---------------------------------------------------------


def _dag_step_functions() -> set:
    """The step functions the continuous_delivery DAG's tasks import."""
    tree = ast.parse((REPO / "dags" / "continuous_delivery.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in STEP_MODULES:
            module = importlib.import_module(node.module)
            found |= {getattr(module, a.name) for a in node.names}
    return {f for f in found if inspect.isfunction(f)}


def _demo_step_functions() -> set:
    """The step functions the demo's flow calls (``data.etl_step(...)``) or imports by name."""
    tree = ast.parse((REPO / "components" / "demo" / "flow.py").read_text())
    modules, found = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "components.steps":
            for a in node.names:
                if f"components.steps.{a.name}" in STEP_MODULES:
                    modules[a.asname or a.name] = importlib.import_module(f"{node.module}.{a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module in STEP_MODULES:
            module = importlib.import_module(node.module)
            found |= {getattr(module, a.name) for a in node.names}
    for node in ast.walk(tree):
        f = node.func if isinstance(node, ast.Call) else None
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in modules:
            found.add(getattr(modules[f.value.id], f.attr))
    return {f for f in found if inspect.isfunction(f)}


def test_the_demo_calls_the_step_functions_of_the_dag() -> None:
    demo, dag = _demo_step_functions(), _dag_step_functions()
    assert {f.__name__ for f in demo} >= set(CHAIN)  # the whole chain, not a private copy
    assert demo <= dag, sorted(f.__name__ for f in demo - dag)


def test_the_delivery_configs_differ_only_in_the_run(tmp_path: Path) -> None:
    """Both runs' configs are written as files and loaded by the delivery config's own loader; the
    baseline differs from the meta run only in its run root, its model name and ``meta.mode``."""
    from components.demo.flow import load_configs

    config = DemoConfig.preset(str(tmp_path / "out"), quick=True)
    cfgs = load_configs(config)
    dicts = {m: config.delivery_config(m) for m in MODES}
    differ = {k for k in dicts["meta"] if dicts["meta"][k] != dicts["plain"][k]}
    assert differ == {"run_root", "model_name", "trainer_overrides"}
    overrides = {m: set(cfgs[m].trainer_overrides) for m in MODES}
    assert overrides["meta"] ^ overrides["plain"] == {'meta.mode="maml"', 'meta.mode="plain"'}
    assert cfgs["meta"].run_root == str(tmp_path / "out")
    assert cfgs["plain"].run_root == str(tmp_path / "out" / "baseline")
    assert cfgs["meta"].raw_root == cfgs["plain"].raw_root == str(tmp_path / "out" / "raw")
    assert cfgs["meta"].warm_start is False  # both runs start from the same initialisation
    assert cfgs["meta"].nproc == config.nproc == 2
    assert cfgs["meta"].relative_roots() == []  # a DAG could run it as it is


# Summary and report from a recorded set of step results -------------------------------------------


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[DemoConfig, dict, dict]:
    """The recorded run's artefacts under ``tmp_path``: (config, step results, expected summary)."""
    root = tmp_path / "out"

    def here(value):
        return json.loads(json.dumps(value).replace("{root}", str(root)))

    data = json.loads(RECORDED.read_text())
    for rel, text in data["files"].items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text.replace("{root}", str(root)))
    config = DemoConfig.preset(str(root), quick=True)
    return config, here(data["results"]), here(data["summary"])


def test_the_summary_is_read_back_from_the_step_results(recorded) -> None:
    from components.demo.summary import build_summary

    config, results, expected = recorded
    s = build_summary(config, results, expected["seconds"], expected["reused"])
    assert s == expected
    d, g = s["data"], s["gate"]
    assert d["rows_read"] == d["rows_kept"] + d["rows_quarantined"] == config.rows
    assert sum(d["quarantine_reasons"].values()) == d["rows_quarantined"]
    assert {k: v["episodes"] for k, v in d["splits"].items()} == results["etl"]["episodes"]
    assert g["champion"] == results["promote"]["champion"] == s["scoring"]["version"]
    assert g["verdict"] == results["gate"]["verdict"]
    for mode in MODES:  # the exports' scores reproduce each run's own evaluation
        c = s["cold_start"][mode]
        assert c["version"] == results["export"][mode]["version"]
        for when in ("before", "after"):
            assert c[when]["auc"] == pytest.approx(c["trainer_eval_auc"][when], abs=1e-5)
        t = s["training"][mode]
        assert t["steps"] == results["train"][mode]["steps"] == config.steps
        assert sum(t["comm_bytes_per_step_by_collective"].values()) == pytest.approx(
            t["comm_bytes_per_step"], rel=1e-6
        )
        assert 0.0 < t["cache_hit_rate"] <= 1.0


def test_the_printed_summary_shows_the_figures(recorded) -> None:
    from components.demo.summary import format_summary

    text = format_summary(recorded[2])
    s = recorded[2]
    d, g, c = s["data"], s["gate"], s["cold_start"]
    assert f"{d['rows_read']:,} rows read = {d['rows_kept']:,} kept" in text
    for mode, meta_mode in (("meta", "maml"), ("plain", "plain")):
        row = next(x for x in text.splitlines() if x.startswith(f"  {mode} ({meta_mode}"))
        assert f"{c[mode]['before']['auc']:.4f}" in row and f"{c[mode]['after']['auc']:.4f}" in row
    gate = next(x for x in text.splitlines() if x.startswith("gate "))
    assert g["verdict"] in gate and gate.endswith(f"champion {g['name']}/{g['champion']}")
    assert f"--config {s['outputs']['config']} deliver --interval 2026-11-01T00/" in text
    assert s["outputs"]["report"] in text


def test_the_report_holds_its_plots_and_figures(recorded) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    from components.report import render_report

    s = recorded[2]
    text = render_report(s)
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
    assert f"<b>{s['gate']['name']}/{s['gate']['champion']}</b>" in text
    assert f"{s['cold_start']['meta']['after']['auc']:.4f}" in text


# The command line ---------------------------------------------------------------------------------


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


def test_exit_codes_of_the_errors_the_demo_explains() -> None:
    from components.demo.__main__ import _exit_code
    from components.demo.progress import DemoStopped
    from components.launchers.local import LaunchError
    from components.steps.data import ValidationFailed

    assert _exit_code(ValidationFailed("raw suite failed")) == 1  # a ValueError, but a verdict
    assert _exit_code(DemoStopped("nothing promoted")) == 1
    assert _exit_code(LaunchError("training failed", 1)) == 3
    assert _exit_code(ValueError("bad --rows")) == 2
    assert _exit_code(FileNotFoundError("no raw data")) == 2
    assert _exit_code(KeyError("a bug")) is None  # raised with its traceback


def test_presets_and_their_errors() -> None:
    quick = DemoConfig.preset("out/q", quick=True, steps=3)
    assert (quick.rows, quick.steps, quick.airflow) == (12_000, 3, False)
    assert DemoConfig.preset("out/f", quick=False).airflow is True
    with pytest.raises(ValueError, match="--rows 3000 is too few for 2000 campaigns"):
        DemoConfig.preset("out/f", quick=False, rows=3000)
    with pytest.raises(ValueError, match="--out must name"):
        DemoConfig.preset(" ", quick=True)


# The whole flow (slow tier: CI runs it; the DAG's dag.test covers the same steps) ------------------


@pytest.fixture(scope="module")
def demo(spark, tmp_path_factory) -> tuple[DemoConfig, dict]:
    """One quick demo run (Spark from the session fixture, 2 torchrun ranks per training run)."""
    from components.demo.flow import run_demo

    config = DemoConfig.preset(str(tmp_path_factory.mktemp("demo") / "out"), quick=True)
    return config, run_demo(config, spark=spark)


def _records(root: Path) -> list[str]:
    (folder,) = (root / "intervals").glob("interval=*")
    return sorted(p.stem for p in folder.glob("*.json"))


@pytest.mark.slow
@pytest.mark.spark
def test_every_step_leaves_its_artefacts_and_records(demo) -> None:
    config, result = demo
    p, s, r = config.paths(), result["summary"], result["results"]
    episodes = Path(s["outputs"]["episodes"])
    expected = [
        p["raw"] / "_generation.json", episodes / "_manifest.json", episodes / "_quarantine",
        Path(r["raw_validation"]["report"]), episodes / "_validation" / "report.json",
        p["evaluation"] / "cold_start.json", p["evaluation"] / "comparison.json",
        p["score"] / "predictions.parquet",
        p["score"] / "predictions.rejected.parquet", p["summary"], p["report"],
    ]  # fmt: skip
    for mode in MODES:
        run = Path(r["train"][mode]["run_dir"])
        expected += [run / "eval.json", run / "metrics.jsonl", Path(r["train"][mode]["checkpoint"])]
        expected.append(Path(r["export"][mode]["model_dir"]) / "CHECKSUMS")
        expected.append(config.run_root(mode) / "delivery-config.json")
    missing = [str(x) for x in expected if not x.exists()]
    assert not missing, missing
    steps = ["raw_validation", "etl", "train.attempt", "train", "evaluate", "gate", "promote"]
    demo_own = ["demo_generate", "demo_cold_start", "demo_comparison", "demo_score"]
    assert _records(p["root"]) == sorted(steps + demo_own)
    assert _records(config.run_root("plain")) == ["train", "train.attempt"]
    # both runs trained on 2 ranks: one checkpoint shard per rank
    shards = sorted(Path(r["train"]["meta"]["checkpoint"]).glob("rank-*.pt"))
    assert len(shards) == config.nproc == 2
    assert s == json.loads(p["summary"].read_text())


@pytest.mark.slow
@pytest.mark.spark
def test_the_promoted_version_is_the_one_scored(demo) -> None:
    config, result = demo
    s = result["summary"]
    models = Path(s["outputs"]["models"])
    pointer = json.loads((models / "CHAMPION").read_text())
    assert pointer["version"] == s["gate"]["champion"] == s["scoring"]["version"]
    assert s["gate"]["verdict"] == "no_champion"  # a fresh run root: the first model is promoted
    history = [json.loads(x) for x in (models / "HISTORY.jsonl").read_text().splitlines()]
    assert [h["to"] for h in history] == pointer["stack"]
    scored = json.loads((config.paths()["score"] / "predictions.summary.json").read_text())
    assert Path(scored["model"]).name == pointer["version"]
    assert pq.read_table(scored["output"]).num_rows == scored["rows_scored"]
    sc = s["scoring"]
    assert sc["rows_read"] == sc["rows_scored"] + sc["rows_rejected"] == sc["event_lines"]
    assert sc["tasks_adapted"] > 0 and sc["rows_adapted"] > 0


@pytest.mark.slow
@pytest.mark.spark
def test_a_rerun_reuses_every_record(demo, spark) -> None:
    """As a rerun of the DAG: every step returns its record; no output is rewritten."""
    from components.demo.flow import run_demo

    config, first = demo
    p = config.paths()
    kept = [p["score"] / "predictions.parquet", Path(first["summary"]["outputs"]["models"]) /
            "CHAMPION", Path(first["results"]["train"]["meta"]["checkpoint"]) / "meta.json"]  # fmt: skip
    before = {f: f.stat().st_mtime_ns for f in kept}
    again = run_demo(config, spark=spark)
    exports = {"export", "export-plain"}  # no record: the same checkpoint, the same version
    assert set(again["reused"]) == set(again["seconds"]) - {"total"} - exports
    assert all(not e["created"] for e in again["results"]["export"].values())
    assert {f: f.stat().st_mtime_ns for f in kept} == before
    same = ("data", "cold_start", "gate", "scoring", "training")
    assert {k: again["summary"][k] for k in same} == {k: first["summary"][k] for k in same}


@pytest.mark.slow
@pytest.mark.spark
def test_validation_fails_closed(demo, spark, tmp_path: Path) -> None:
    """Raw logs whose producer broke (an eighth of every file is garbage) stop the demo at the raw
    validation step, with its report; nothing is trained."""
    from components.demo.flow import run_demo
    from components.steps.data import ValidationFailed

    src = demo[0]
    config = DemoConfig.preset(str(tmp_path / "out"), quick=True)
    p = config.paths()
    shutil.copytree(src.paths()["raw"], p["raw"])
    (interval,) = (src.paths()["root"] / "intervals").glob("interval=*")
    (p["root"] / "intervals" / interval.name).mkdir(parents=True)
    shutil.copy(interval / "demo_generate.json", p["root"] / "intervals" / interval.name)
    for path in p["raw"].rglob("*.jsonl"):
        lines = path.read_text().count("\n")
        with open(path, "a") as f:
            f.write("{not json at all\n" * (lines // 8 + 1))
    with pytest.raises(ValidationFailed, match=r"raw validation of interval=\S+ failed"):
        run_demo(config, spark=spark)
    report = json.loads((p["root"] / "intervals" / interval.name / "raw_validation" /
                         "report.json").read_text())  # fmt: skip
    assert report["success"] is False
    assert not (p["root"] / "train").exists() and not (p["root"] / "episodes").exists()


def record(out: str) -> None:
    """Write RECORDED from a finished ``--quick`` demo under ``out`` (rerun: every record reused)."""
    from components.demo.flow import run_demo

    config = DemoConfig.preset(out, quick=True)
    result = run_demo(config)
    root = str(config.paths()["root"])
    r, s = result["results"], result["summary"]
    files = [Path(r["etl"]["episodes_dir"]) / "_manifest.json",
             config.paths()["evaluation"] / "cold_start.json",
             Path(s["outputs"]["models"]) / "CHAMPION",
             *(Path(r["train"][m]["run_dir"]) / "metrics.jsonl" for m in MODES)]  # fmt: skip
    data = {
        "results": r,
        "summary": s,
        "files": {str(f.relative_to(root)): f.read_text() for f in files},
    }
    RECORDED.write_text(json.dumps(data, indent=1, sort_keys=True).replace(root, "{root}") + "\n")
