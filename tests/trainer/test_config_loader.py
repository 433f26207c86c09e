"""The typed config loader: TOML + dotted overrides, with clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from trainer.config_loader import apply_overrides, build, load_config


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
