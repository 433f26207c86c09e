"""``python -m trainer``: every model with every meta mode at the outer-step level (in process),
two full runs through the real entry points (outputs and report), and one-line user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.trainer.run_helpers import (
    finite,
    read_jsonl,
    tiny_config,
    tiny_overrides,
    write_episodes,
)
from trainer.__main__ import main
from trainer.config import SECTIONS, TrainerConfig, load_trainer_config
from trainer.context import context_from_env
from trainer.data.contract import MANIFEST_NAME
from trainer.meta import MODES
from trainer.models import ARCHS
from trainer.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
CLI_MODES = {"python": "maml", "torchrun": "plain"}
"""The two full runs: ``python -m trainer`` meta-trains, ``torchrun -m trainer`` trains plain."""


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("main") / "interval")


@pytest.fixture(scope="module")
def cli_runs(episodes: Path, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """The real entry points in fresh processes, started together: ``python -m trainer`` (MAML)
    and ``torchrun --nproc_per_node=1 -m trainer`` (plain). Maps the launcher to (run directory,
    stderr). Read-only: a test that changes a run copies it first."""
    root = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launchers = {
        "python": [sys.executable, "-m", "trainer"],
        "torchrun": [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=1", "-m",
                     "trainer"],
    }  # fmt: skip
    procs = {}
    for name, cmd in launchers.items():
        argv = [*cmd, "--config", "debug", *tiny_overrides(episodes, root / name)]
        with open(root / f"{name}.stderr", "w") as err:  # a file: no pipe to fill up
            procs[name] = subprocess.Popen(
                [*argv, f"meta.mode={CLI_MODES[name]}"], env=env, cwd=root, stderr=err
            )
    runs = {}
    for name, proc in procs.items():
        proc.wait(timeout=180)
        err = (root / f"{name}.stderr").read_text()
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
        runs[name] = (root / name, err)
    return runs


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
    _check_evaluation(ev["splits"])
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


def _check_evaluation(splits: dict) -> None:
    """Every split has episodes and finite metrics before and after adaptation."""
    for split in splits.values():
        assert split["episodes"] > 0 and split["query_samples"] > 0
        for when in ("before", "after"):
            for key in ("auc", "gauc", "logloss"):
                assert finite(split[when][key]), (when, key, split)
            assert 0.0 <= split[when]["auc"] <= 1.0


def _table_rows(trainer: Trainer) -> dict[str, torch.Tensor]:
    """A copy of the embedding collection's tables (its ``*weight`` entries: rows x width)."""
    state = trainer.model.embeddings.state_dict()
    return {k: v.detach().clone() for k, v in state.items() if k.endswith("weight")}


# The gradient-based modes; film and metaemb (a support encoder, an id generator) have their own
# runs and row checks: tests/trainer/test_film.py, test_metaemb.py, test_meta_methods_run.py.
@pytest.mark.parametrize("mode", [m for m in MODES if m not in ("film", "metaemb")])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_model_trains_and_evaluates_in_every_mode(
    episodes: Path, tmp_path: Path, arch: str, mode: str
) -> None:
    """Three outer steps on one batch through the trainer: finite losses that go down, every dense
    parameter moves, the embedding rows that move are exactly the batch's (but the padding rows; for
    FOMAML only the query samples' rows); then the evaluation adapts (``plain``: fine-tuning)."""
    cfg = tiny_config(episodes, tmp_path / "run", **{"model.arch": arch, "meta.mode": mode})
    trainer = Trainer(cfg).build()
    try:
        dense = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        tables = _table_rows(trainer)
        batch = next(iter(trainer.reader))
        stats = [trainer.train_step(batch) for _ in range(3)]
        for s in stats:
            assert all(finite(float(x)) for x in (s.loss, s.support_loss, s.query_loss)), s
        losses = [float(s.loss) for s in stats]
        assert losses[0] > losses[1] > losses[2], losses
        still = [n for n, p in trainer.model.named_parameters() if torch.equal(p, dense[n])]
        assert dense and not still, f"{arch}/{mode}: dense parameters that did not move: {still}"
        padding = set(trainer.layout.padding_rows.tolist())
        used = set(batch.ids.tolist()) - padding
        queried = set(batch.ids[batch.inverse[:, batch.k_support :]].flatten().tolist()) - padding
        assert tables and queried < used  # some rows only in support sets
        # FOMAML differentiates the query loss only: rows that only support samples use stay put.
        expected = queried if mode == "fomaml" else used
        for key, after in _table_rows(trainer).items():
            moved = (after != tables[key]).any(dim=1).nonzero().flatten().tolist()
            assert set(moved) == expected, key
        results = trainer.evaluate()
    finally:
        trainer.close()
    assert set(results) == {"valid", "test_cold"}
    _check_evaluation(results)
    assert results["test_cold"]["adapt"] == {"adapt": "dense", "steps": 1, "lr": 0.1}


@pytest.mark.parametrize(("arch", "adapt"), [("wide_deep", "dense+emb"), ("deepfm", "head")])
def test_other_adaptation_targets(episodes: Path, tmp_path: Path, arch: str, adapt: str) -> None:
    extra = {"model.arch": arch, "meta.adapt": adapt, "meta.inner_steps": 2}
    trainer = Trainer(tiny_config(episodes, tmp_path / "run", **extra)).build()
    try:
        batch = next(iter(trainer.reader))
        assert finite(float(trainer.train_step(batch).loss))
        results = trainer.evaluate()
    finally:
        trainer.close()
    _check_evaluation(results)
    assert results["valid"]["adapt"] == {"adapt": adapt, "steps": 2, "lr": 0.1}


@pytest.mark.multiprocess  # the launchers: python -m trainer and torchrun, in fresh processes
@pytest.mark.parametrize("launcher", CLI_MODES)
def test_full_runs_through_the_entry_points(
    cli_runs: dict[str, tuple[Path, str]], launcher: str
) -> None:
    """``python -m trainer`` (MAML) and ``torchrun -m trainer`` (plain): every output file, the
    report, progress on rank 0, and adaptation evaluated in both modes."""
    out, stderr = cli_runs[launcher]
    assert "samples/s" in stderr and "ETA" in stderr  # progress on rank 0
    ev = _check_outputs(out, steps=4)
    assert json.loads((out / "config.json").read_text())["meta"]["mode"] == CLI_MODES[launcher]
    assert ev["splits"]["test_cold"]["adapt"] == {"adapt": "dense", "steps": 1, "lr": 0.1}


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
    from components.train.in_process import train_in_process  # puts torch's settings back

    train_in_process("debug", tiny_overrides(episodes, out))
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
