"""``metarec`` itself: options mixed with overrides, ``--version``, "did you mean", fast help."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from components.cli import main

REPO = Path(__file__).parents[2]
HEAVY = ("torch", "pyarrow", "pyspark", "great_expectations", "numpy", "components.train.command")


@pytest.mark.parametrize(
    "argv",
    [
        ["data.path=X", "--nproc", "2", "train.steps=5", "--print-config"],
        ["--print-config", "data.path=X", "--config", "debug", "train.steps=5", "-v"],
        ["data.path=X", "train.steps=5", "--nproc", "2", "--print-config"],
    ],
)
def test_options_may_come_before_between_or_after_the_overrides(argv, capsys) -> None:
    assert main(["train", *argv]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["data"]["path"] == "X" and config["train"]["steps"] == 5


def test_an_unknown_option_among_overrides_is_still_refused(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "data.path=X", "--nprocs", "2", "train.steps=5"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --nprocs" in capsys.readouterr().err


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_version_is_the_installed_one_and_imports_nothing_heavy() -> None:
    done = _fresh_python(
        "import sys; from components.cli import main\n"
        "code = main(['--version'])\n"
        f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"metarec {version('metarec')}", "0 []"]


def test_top_level_help_imports_nothing_heavy() -> None:
    done = _fresh_python(
        "import sys; from components.cli import main\n"
        "main(['--help'])\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert "--version" in done.stdout


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [("trian", "'train'"), ("vaildate", "'validate'"), ("promot", "'promote'"), ("elt", "'etl'")],
)
def test_a_mistyped_command_gets_a_suggestion(typed, suggested, capsys) -> None:
    assert main([typed, "--config", "debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metarec: unknown command {typed!r}; did you mean {suggested}")
    assert "commands:" in err  # the list of commands follows


def test_an_unrelated_word_gets_no_suggestion(capsys) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metarec: unknown command 'frobnicate'\n") and "did you mean" not in err
