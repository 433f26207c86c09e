"""``metarec train``: registered in the CLI, explains configs and sections, trains in-process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from components.cli import COMMANDS, main
from tests.trainer.run_helpers import finite, tiny_overrides, write_episodes
from trainer.config import SECTIONS


def test_registered_and_help_lists_configs_and_sections(capsys) -> None:
    assert COMMANDS["train"][0] == "components.train.command"
    main(["--help"])
    assert "train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--config", "--print-config", "section.key=value", "debug", "default"):
        assert needle in text, needle
    listed = [
        line.split()[0]
        for line in text.split("Sections")[1].split("Outputs")[0].splitlines()[1:]
        if line.strip() and not line.startswith("   ")  # not a wrapped description line
    ]
    assert tuple(listed) == SECTIONS  # the help cannot drift from the config tree


def test_help_does_not_import_torch() -> None:
    import subprocess

    code = "import sys; from components.cli import main\ntry: main(['train', '--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[3]
    )
    assert done.stdout.strip().endswith("False"), done.stderr


def test_train_runs_in_process_and_writes_the_run(tmp_path: Path) -> None:
    data = write_episodes(tmp_path / "episodes")
    out = tmp_path / "run"
    overrides = tiny_overrides(data, out, **{"meta.mode": "fomaml", "model.arch": "wide_deep"})
    assert main(["train", "--config", "debug", *overrides]) == 0
    result = json.loads((out / "eval.json").read_text())["splits"]["test_cold"]
    assert finite(result["before"]["auc"]) and finite(result["after"]["auc"])
    assert (out / "report.png").is_file() and (out / "checkpoints" / "latest").is_file()


def test_user_errors_are_one_line_with_exit_code_2(tmp_path: Path, capsys) -> None:
    assert (
        main(["train", "--config", "debug", f"data.path={tmp_path}", 'eval.splits=["nope"]']) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarec train: error: eval.splits"), err
    assert main(["train", "--config", "debug", f"data.path={tmp_path / 'missing'}"]) == 2
    assert "_manifest.json" in capsys.readouterr().err
