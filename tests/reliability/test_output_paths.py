"""Outputs never alias inputs, and nothing is written through a link that leaves its root
(issue 18, items 10 and 11): the scorer's --out against --input / --adapt-on, symlink loops in an
input folder, the trainer's outputs behind planted symlinks, and the delivery config's
``warm_start = false`` against a trainer config file's ``checkpoint.warm_start``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.cli import main
from tests.reliability.unprivileged import REPO

EVENT = json.dumps({"event_id": "e1", "event_time": "2026-11-02T10:00:00Z", "campaign_id": "c1"})


@pytest.fixture
def events(tmp_path):
    """An input folder ``raw/dt=2026-11-02/part.jsonl`` (one event)."""
    part = tmp_path / "raw" / "dt=2026-11-02" / "part.jsonl"
    part.parent.mkdir(parents=True)
    part.write_text(EVENT + "\n")
    return part


def _score(capsys, *args: str) -> tuple[int, str]:
    code = main(["score", "--model", "no-model-needed", *args])
    return code, capsys.readouterr().err


def test_score_refuses_an_output_that_aliases_its_input(events, tmp_path, capsys) -> None:
    """Refused before the model is even read (the model path here does not exist), and the
    events are left as they were."""
    raw = events.parent.parent
    (tmp_path / "link").symlink_to(raw, target_is_directory=True)
    cases = [  # (args, how the error names the overlap)
        (["--input", str(events), "--out", str(events)], "--out", "is"),
        (["--input", f"file://{events}", "--out", str(events)], "--out", "is"),
        (["--input", str(raw), "--out", str(raw / "dt=2026-11-02" / "p.parquet")], "--out", "lies inside"),
        (["--input", str(raw), "--out", str(tmp_path / "link" / "p.parquet")], "--out", "lies inside"),
        (["--input", str(events), "--out", str(events.parent)], "--out", "contains"),
        (["--input", str(tmp_path / "elsewhere.jsonl"), "--adapt-on", str(raw),
          "--out", str(raw / "p.parquet")], "--out", "lies inside"),
        # the rejects file of --out p.parquet is p.rejected.parquet: here, the input itself
        (["--input", str(tmp_path / "p.rejected.parquet"), "--out", str(tmp_path / "p.parquet")],
         "--out's rejected file", "is"),
    ]  # fmt: skip
    (tmp_path / "p.rejected.parquet").write_bytes(b"not yet")
    for args, what, how in cases:
        code, err = _score(capsys, *args)
        assert code == 2, (args, err)
        assert f"metarec score: error: {what} " in err and f" {how} --" in err, err
        assert "overwrite or re-read its own input" in err and len(err.strip().splitlines()) == 1
    assert events.read_text() == EVENT + "\n"
    assert sorted(p.name for p in raw.rglob("*")) == ["dt=2026-11-02", "part.jsonl"]
    assert (tmp_path / "p.rejected.parquet").read_bytes() == b"not yet"
    # a sibling output is fine: the same call reaches the model (and fails there, as it should)
    code, err = _score(capsys, "--input", str(raw), "--out", str(tmp_path / "out" / "p.parquet"))
    assert code == 2 and "no-model-needed" in err and "own input" not in err


LISTING = """
import json, sys
from components.score.events import list_event_files
fs, files = list_event_files(sys.argv[1])
print(json.dumps([f.rel for f in files]))
"""


def test_symlink_loops_in_the_input_folder_do_not_hang_the_listing(events, tmp_path) -> None:
    """Two loops (``a/up -> ..`` and ``a/self -> .``) and a second way into a folder: the
    listing ends, and every real file is listed once (before, it never returned)."""
    raw = events.parent.parent
    (events.parent / "up").symlink_to("..", target_is_directory=True)
    (events.parent / "self").symlink_to(".", target_is_directory=True)
    (raw / "dt=2026-11-03").mkdir()
    (raw / "dt=2026-11-03" / "part.jsonl").write_text(EVENT + "\n")
    (raw / "zz-alias").symlink_to(raw / "dt=2026-11-03", target_is_directory=True)
    (raw / "dangling.jsonl").symlink_to(tmp_path / "gone.jsonl")
    proc = subprocess.run([sys.executable, "-c", LISTING, str(raw)], cwd=REPO, timeout=60,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["dt=2026-11-02/part.jsonl", "dt=2026-11-03/part.jsonl"]


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    from tests.trainer.run_helpers import write_episodes

    return write_episodes(tmp_path_factory.mktemp("paths") / "episodes")


def _train(run, episodes, capsys, **extra) -> tuple[int, str]:
    from tests.trainer.run_helpers import tiny_overrides
    from trainer.__main__ import main as trainer_main

    code = trainer_main(["--config", "debug", *tiny_overrides(episodes, run, **extra)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "name, message",
    [
        ("metrics.jsonl", "outside"),  # a link leading out: refused by where it resolves
        ("eval.json", "outside"),
        ("report.png", "outside"),
        ("config.json", "is a symlink"),  # a link inside the run: refused too, never followed
        ("checkpoints/step-00000002.tmp", "outside"),
        ("checkpoints/latest", "outside"),
    ],
)
def test_the_trainer_never_writes_through_a_planted_symlink(
    name, message, episodes, tmp_path, capsys
) -> None:
    """Each output name of a run holds a planted link; the run stops with one line naming it,
    and what the link points to is untouched (before: metrics.jsonl and report.png were written
    through, to files outside the run directory)."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    target = outside / ("dir" if name.endswith(".tmp") else "file")
    if name.endswith(".tmp"):
        target.mkdir()
    else:
        target.write_text("keep me")
    link = run / name
    link.parent.mkdir(parents=True)
    link.symlink_to(run / "inside.json" if message == "is a symlink" else target)
    (run / "inside.json").write_text("keep me too")
    code, err = _train(run, episodes, capsys, **{"checkpoint.every": 2})
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("trainer: error: ") and str(link) in line and message in line, line
    assert sorted(p.name for p in outside.rglob("*")) == [target.name]  # nothing written there
    assert target.is_dir() or target.read_text() == "keep me"
    assert (run / "inside.json").read_text() == "keep me too"


def test_a_metrics_link_planted_during_the_run_is_refused(tmp_path) -> None:
    from trainer.logging_utils import JsonlLog

    log = JsonlLog(tmp_path / "metrics.jsonl")
    log.write({"kind": "train", "step": 1})
    (tmp_path / "metrics.jsonl").unlink()
    (tmp_path / "metrics.jsonl").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="became a symlink during the run"):
        log.write({"kind": "train", "step": 2})
    assert not (tmp_path / "outside").exists()


def _delivery_with_a_planted_warm_start(episodes, tmp_path):
    """A delivery config with ``warm_start = false`` whose trainer config file names a warm-start
    checkpoint (one that does not exist: applied, it fails the run loudly)."""
    from components.steps.config import DeliveryConfig
    from tests.trainer.run_helpers import tiny_overrides
    from trainer.config import resolve_config_path

    toml = resolve_config_path("debug").read_text()
    planted = tmp_path / "some-run" / "checkpoints" / "step-00000001"
    assert "[checkpoint]\n" in toml
    config = tmp_path / "trainer.toml"
    config.write_text(toml.replace("[checkpoint]\n", f'[checkpoint]\nwarm_start = "{planted}"\n'))
    tiny = [o for o in tiny_overrides(episodes, tmp_path) if not o.startswith(("data.", "train.o"))]
    return DeliveryConfig(run_root=str(tmp_path / "root"), trainer_config=str(config),
                          trainer_overrides=tuple(tiny), warm_start=False)  # fmt: skip


def test_the_delivery_configs_warm_start_false_wins_over_the_trainer_config_file(
    episodes, tmp_path
) -> None:
    """What the trainer loads for the interval (its config loader, over the exact arguments the
    training step passes): no warm start, although the file names one (before: the file's value
    applied)."""
    from components.steps.layout import Interval
    from components.steps.training import _overrides, choose_warm_start
    from trainer.config import load_trainer_config

    cfg = _delivery_with_a_planted_warm_start(episodes, tmp_path)
    assert load_trainer_config(cfg.trainer_config, [f"data.path={episodes}"]).checkpoint.warm_start
    ws = choose_warm_start(cfg, Interval.parse("2026-11-02T00/1h"), str(episodes))
    assert ws.checkpoint is None and "warm starts are off" in ws.reason
    overrides = _overrides(cfg, str(episodes), tmp_path / "run", ws)
    assert load_trainer_config(cfg.trainer_config, overrides).checkpoint.warm_start == ""


@pytest.mark.slow
def test_an_interval_with_warm_start_false_trains_from_scratch(episodes, tmp_path) -> None:
    """End to end (the training step launches ``python -m trainer``): the run completes from
    scratch and its recorded config has no warm start (before: it failed on the file's
    checkpoint; a real one was silently loaded)."""
    from components.steps.data import EtlStepResult
    from components.steps.layout import Interval
    from components.steps.training import train_step

    cfg = _delivery_with_a_planted_warm_start(episodes, tmp_path)
    etl = EtlStepResult(str(episodes), "h", 1, 1, 0, {"train": 1})
    result = train_step(cfg, Interval.parse("2026-11-02T00/1h"), etl)
    assert result.warm_start.checkpoint is None
    run_config = json.loads((Path(result.run_dir) / "config.json").read_text())
    assert run_config["checkpoint"]["warm_start"] == ""
    assert run_config["data"]["path"] == str(episodes)
