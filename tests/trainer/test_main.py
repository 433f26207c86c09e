"""``python -m trainer``: every model with every meta mode, the outputs, and one-line user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.trainer.run_helpers import finite, read_jsonl, tiny_overrides, write_episodes
from trainer.__main__ import main
from trainer.config import SECTIONS, TrainerConfig, load_trainer_config
from trainer.context import context_from_env
from trainer.data.contract import MANIFEST_NAME
from trainer.meta import MODES
from trainer.models import ARCHS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("main") / "interval")


def _check_outputs(out: Path, steps: int) -> dict:
    records = read_jsonl(out / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(2, steps + 1, 2))
    for r in train:
        for key in ("loss", "support_loss", "query_loss", "steps_per_s", "samples_per_s"):
            assert finite(r[key]), (key, r)
        assert r["loss"] > 0 and r["samples_per_s"] > 0
        # one process: the step's collectives are identities, counted with zero bytes
        assert r["comm.dense.calls"] == 1 and r["comm.bytes"] == 0 and r["episodes_per_step"] > 0
    assert [r["step"] for r in records if r["kind"] == "eval"] == [steps]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["step"] == steps and set(ev["splits"]) == {"valid", "test_cold"}
    for split in ev["splits"].values():
        assert split["episodes"] > 0 and split["query_samples"] > 0
        for when in ("before", "after"):
            for key in ("auc", "gauc", "logloss"):
                assert finite(split[when][key]), (when, key, split)
            assert 0.0 <= split[when]["auc"] <= 1.0
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["steps"] == steps and saved["parallel"]["sharding"] == "row_wise"
    plan = json.loads((out / "sharding_plan.json").read_text())
    assert plan["world_size"] == 1 and [t["feature"] for t in plan["tables"]] == [
        "user",
        "ad",
        "tags",
    ]
    return ev


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_model_trains_and_evaluates_in_every_mode(
    episodes: Path, tmp_path: Path, arch: str, mode: str
) -> None:
    out = tmp_path / "run"
    argv = ["--config", "debug", *tiny_overrides(episodes, out, **{"model.arch": arch})]
    assert main([*argv, f"meta.mode={mode}"]) == 0
    ev = _check_outputs(out, steps=4)
    assert json.loads((out / "config.json").read_text())["meta"]["mode"] == mode
    # adaptation is evaluated for every mode (for plain: fine-tuning on the support set)
    assert ev["splits"]["test_cold"]["adapt"] == {"adapt": "dense", "steps": 1, "lr": 0.1}


@pytest.mark.parametrize(("arch", "adapt"), [("wide_deep", "dense+emb"), ("deepfm", "head")])
def test_other_adaptation_targets(episodes: Path, tmp_path: Path, arch: str, adapt: str) -> None:
    out = tmp_path / "run"
    extra = {"model.arch": arch, "meta.adapt": adapt, "meta.inner_steps": 2}
    assert main(["--config", "debug", *tiny_overrides(episodes, out, **extra)]) == 0
    ev = _check_outputs(out, steps=4)
    assert ev["splits"]["valid"]["adapt"]["adapt"] == adapt


def test_module_entry_point_and_torchrun(episodes: Path, tmp_path: Path) -> None:
    """The real entry points in fresh processes: ``python -m trainer`` and ``torchrun -m trainer``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for launcher, out in (
        ([sys.executable, "-m", "trainer"], tmp_path / "python"),
        ([str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=1", "-m", "trainer"],
         tmp_path / "torchrun"),
    ):  # fmt: skip
        cmd = [*launcher, "--config", "debug", *tiny_overrides(episodes, out)]
        done = subprocess.run(
            cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "samples/s" in done.stderr and "ETA" in done.stderr  # progress on rank 0
        _check_outputs(out, steps=4)


def test_help_lists_the_sections(capsys) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "section.key=value" in text
    assert all(s in text for s in SECTIONS)
    assert tuple(TrainerConfig.__dataclass_fields__) == SECTIONS


def test_print_config_resolves_named_run_and_overrides(episodes: Path, capsys) -> None:
    assert (
        main(["--config", "debug", f"data.path={episodes}", "--print-config", "meta.mode=plain"])
        == 0
    )
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["meta"]["mode"] == "plain" and cfg["data"]["path"] == str(episodes)
    assert cfg["model"]["embedding_dim"] == 8  # from debug.toml, not the dataclass default 16


def _fails(argv: list[str], capsys, *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("trainer: error:")]
    assert len(lines) == 1, err[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_unknown_config_key_and_bad_values(episodes: Path, tmp_path: Path, capsys) -> None:
    base = ["--config", "debug", f"data.path={episodes}", f"train.output_dir={tmp_path}"]
    _fails([*base, "model.dropout=0.1"], capsys, "unknown config key", "dropout", "[model]")
    _fails([*base, "meta.mode=reptile"], capsys, "meta.mode", "reptile")
    _fails([*base, "train.steps=many"], capsys, "train.steps")
    _fails([*base, "parallel.backend=mpi"], capsys, "parallel.backend", "mpi")
    _fails([*base, 'parallel.table_wise=["nope"]'], capsys, "parallel.table_wise", "nope")
    _fails(["--config", "debug"], capsys, "data.path is required")
    _fails(["--config", "nope.toml", f"data.path={episodes}"], capsys, "not found", "debug")
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before any work


def test_missing_data_and_schema_version_mismatch(episodes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    _fails(tiny_overrides(tmp_path / "nothing", out), capsys, "_manifest.json", "metarec etl")
    data = tmp_path / "copy"
    write_episodes(data)
    manifest = json.loads((data / MANIFEST_NAME).read_text())
    manifest["schema_version"] = 99
    (data / MANIFEST_NAME).write_text(json.dumps(manifest))
    _fails(tiny_overrides(data, out), capsys, "schema version 99", "rerun the ETL")


def test_parquet_file_missing_a_column(tmp_path: Path, capsys) -> None:
    data = write_episodes(tmp_path / "data")
    manifest = json.loads((data / MANIFEST_NAME).read_text())
    victim = data / next(f["path"] for f in manifest["files"] if f["split"] == "train")
    pq.write_table(pq.read_table(victim).drop_columns(["dense"]), victim)
    line = _fails(tiny_overrides(data, tmp_path / "run"), capsys, "dense")
    assert victim.name in line


def test_truncated_checkpoint_is_refused_on_resume(episodes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(tiny_overrides(episodes, out)) == 0
    shard = next((out / "checkpoints").glob("step-00000004/rank-00000.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    _fails(tiny_overrides(episodes, out, **{"train.steps": 6}), capsys, "checksum", "truncated")


def test_context_reads_the_launcher_variables_and_the_parallel_section(episodes: Path) -> None:
    cfg = load_trainer_config("debug", [f"data.path={episodes}", "parallel.dense_bucket_mb=0.5"])
    env = context_from_env(cfg, {})
    assert (env.rank, env.world_size, env.is_main, env.backend) == (0, 1, True, "none")
    assert env.dense_bucket_bytes == 2**19 and env.device.type == "cpu"
    env.close()
    with pytest.raises(ValueError, match="MASTER_ADDR/MASTER_PORT are not set"):
        context_from_env(cfg, {"RANK": "1", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="integers"):
        context_from_env(cfg, {"WORLD_SIZE": "two"})
