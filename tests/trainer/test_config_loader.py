"""The typed config loader: TOML + dotted overrides, with clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pytest

from trainer.config_loader import (
    add_options,
    apply_overrides,
    build,
    field_docs,
    given_options,
    load_config,
    option,
    to_dict,
    toml_literal,
)


@dataclass(kw_only=True)
class Inner:
    mode: Literal["maml", "fomaml", "plain"] = "maml"
    lr: float = 0.1
    sizes: list[int] = field(default_factory=lambda: [4, 2])


@dataclass(kw_only=True)
class Root:
    path: str
    steps: int = 10
    debug: bool = False
    inner: Inner = field(default_factory=Inner)


def test_toml_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text('path = "data"\nsteps = 5\n[inner]\nmode = "fomaml"\nlr = 1\n')
    cfg = load_config(
        Root, f, ["steps=7", "inner.sizes=[8, 4, 1]", "debug=true", "inner.mode=plain"]
    )
    assert cfg == Root(
        path="data", steps=7, debug=True, inner=Inner(mode="plain", lr=1.0, sizes=[8, 4, 1])
    )
    assert isinstance(cfg.inner.lr, float)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stpes=3"], "unknown config key.*stpes.*valid keys"),
        (["steps=abc"], "steps: expected int"),
        (["steps=true"], "steps: expected int, got boolean"),
        (["inner.mode=reptile"], "inner.mode: 'reptile' is not one of"),
        (['inner.sizes=[1, "x"]'], r"inner.sizes\[1\]: expected int"),
        (["steps"], "not of the form"),
        (["steps=3", "steps.x=1"], "steps is a value, not a section"),
        (["steps.x=1"], "steps: expected int"),
    ],
)
def test_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(Root, None, ["path=x", *overrides])


def test_missing_required_field_and_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path"):
        build(Root, {})
    with pytest.raises(FileNotFoundError):
        load_config(Root, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(Root, bad)


def test_overrides_do_not_mutate_input() -> None:
    base = {"inner": {"lr": 0.5}}
    out = apply_overrides(base, ["inner.lr=0.25"])
    assert base == {"inner": {"lr": 0.5}} and out == {"inner": {"lr": 0.25}}


def _seconds(text: str | int | timedelta) -> timedelta:
    if isinstance(text, timedelta):
        return text
    try:
        return timedelta(seconds=int(str(text).removesuffix("s")))
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None


@dataclass(kw_only=True)
class Job:
    """A small config with loader metadata, as EtlConfig uses it."""

    name: str
    """What to call it."""
    every: timedelta = field(default=timedelta(hours=1), metadata=option(parse=_seconds))
    """How often (seconds, or "<n>s")."""
    sizes: tuple[int, ...] = (1, 2)
    """Sizes, in order."""
    mode: Literal["a", "b"] = "a"
    """Which mode."""
    verbose: bool = False
    """Say more."""
    notes: dict[str, int] = field(default_factory=dict, metadata=option(cli=False))
    inner: Inner = field(default_factory=Inner)


def test_field_docstrings_become_the_generated_options():
    assert field_docs(Job)["every"] == 'How often (seconds, or "<n>s").'
    parser = argparse.ArgumentParser()
    add_options(parser, Job)
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings][1:]
    # required first; a field with cli=False has none; lists and tables are TOML literals
    assert flags == ["--name", "--every", "--sizes", "--mode", "--verbose", "--inner"]
    args = parser.parse_args(["--name", "x", "--mode", "b", "--verbose", "--sizes", "[3, 4]"])
    given = given_options(args, Job)
    assert given == {"name": "x", "mode": "b", "verbose": True, "sizes": [3, 4]}
    assert build(Job, given) == Job(name="x", mode="b", verbose=True, sizes=(3, 4))
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


def test_parse_metadata_plain_data_and_json_files(tmp_path: Path) -> None:
    job = build(Job, {"name": "x", "every": "90s", "sizes": [3], "notes": {"a": 1}})
    assert job.every == timedelta(seconds=90) and job.sizes == (3,)
    data = to_dict(job)
    assert data["every"] == 90 and data["sizes"] == [3]
    assert build(Job, data) == job
    f = tmp_path / "job.json"
    f.write_text(json.dumps(data))
    assert load_config(Job, f, ["sizes=[4, 5]"]) == dataclasses.replace(job, sizes=(4, 5))
    for value in (3, 0.5, float("inf"), True, 'a"b\\c é', [1, [2]], {"k": {"x y": [1.5]}}):
        assert apply_overrides({}, [f"v={toml_literal(value)}"])["v"] == value
    with pytest.raises(ValueError, match="every: 'soon' is not a number of seconds"):
        build(Job, {"name": "x", "every": "soon"})
    with pytest.raises(ValueError, match=r"notes.a: expected int"):
        build(Job, {"name": "x", "notes": {"a": "1"}})
    with pytest.raises(ValueError, match=r"missing required config key\(s\) name"):
        build(Job, {})
    with pytest.raises(ValueError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        load_config(Job, tmp_path / "bad.json")
