"""An image's Python environment built here the way its Dockerfile builds it, without Docker.

Stage ``wheel``: the COPY'd sources into an empty directory, ``pip wheel --no-deps`` of it.
Final stage: a clean ``python3 -m venv``, then ``pip install -c <constraints> "<wheel>[extras]"``
with the constraints file and the extras read from the Dockerfile's pip line; the ENV lines, the
COPY of files from the build context and the ``ln -s`` of the RUN line are applied under a
directory that stands for the image's ``/`` (``/opt/...`` -> ``<root>/opt/...``, same for
``/tmp``). Commands then run with the virtualenv's ``bin`` first on PATH, the image's ENV, and a
working directory (the image's WORKDIR) outside the repository, with nothing of this process's
environment but PATH, so the installed wheel is imported, never the source tree.

What differs from the real image: the base image's Python/torch/Java (here Python 3.11, torch's
CPU wheel from constraints.txt, the system JDK), the OS packages and the user (the commands run
as this process's user).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.images import dockerfile
from tests.images.dockerfile import REPO

STAND_IN = re.compile(r"(?<![\w./-])(/opt|/tmp)(?=/|\s|$|:)")
"""The absolute paths of an image that get a stand-in directory here."""


@dataclass(frozen=True)
class ImageEnv:
    """One image's environment: its virtualenv, its stand-in root and the variables it sets."""

    name: str
    venv: Path
    root: Path
    env: Mapping[str, str]
    workdir: Path
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def path(self, image_path: str) -> Path:
        """Where an absolute path of the image is here."""
        return Path(_map(self.root, image_path))

    def process_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**self.env, **(extra or {})}

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 600,
        cwd: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the image's environment (stdout and stderr together)."""
        return subprocess.run(
            list(argv),
            cwd=cwd or self.workdir,
            env=self.process_env(extra_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )


def _map(root: Path, text: str) -> str:
    return STAND_IN.sub(lambda m: f"{root}{m.group(1)}", text)


def _output(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")


def build_wheel(stage: list[dockerfile.Step], work: Path) -> Path:
    """Stage ``wheel``: its COPY'd sources only, then ``pip wheel --no-deps``."""
    src, wheels = work / "src", work / "wheels"
    for sources, dest in dockerfile.copies(stage):
        target = src / dest
        for source in sources:
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, target / path.name if dest.endswith("/") else target,
                                ignore=shutil.ignore_patterns("__pycache__"),
                                dirs_exist_ok=True)  # fmt: skip
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
             str(wheels), str(src)]  # fmt: skip
    _check(_output(build), "pip wheel of the sources the Dockerfile's wheel stage copies")
    (wheel,) = wheels.glob("metarec-*.whl")
    return wheel


def build(name: str, work: Path) -> ImageEnv:
    """Build image ``name``'s environment under ``work`` (a fresh directory)."""
    parts = dockerfile.stages(dockerfile.instructions(dockerfile.IMAGES[name]))
    final = parts["final"]
    wheel = build_wheel(parts["wheel"], work / "wheel")
    root = work / "root"
    for sources, dest in dockerfile.copies(final):  # COPY from the build context
        target = Path(_map(root, dest))
        for source in sources:
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, target)
    venv = work / "venv"
    _check(_output([sys.executable, "-m", "venv", str(venv)]), f"{name}: python -m venv")
    pip = dockerfile.pip_install(final)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
               "-c", _map(root, pip.constraints), f"{wheel}[{','.join(pip.extras)}]"]  # fmt: skip
    _check(_output(install), f"{name}: {' '.join(install)}")
    variables = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key, value in dockerfile.env(final).items():
        variables[key] = _map(root, value)
    for key in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        if key in variables:
            Path(variables[key]).mkdir(parents=True, exist_ok=True)
    image = ImageEnv(
        name=name,
        venv=venv,
        root=root,
        env=variables,
        workdir=Path(_map(root, dockerfile.last(final, "WORKDIR"))),
        entrypoint=tuple(dockerfile.exec_form(final, "ENTRYPOINT")),
        cmd=tuple(dockerfile.exec_form(final, "CMD")),
    )
    image.workdir.mkdir(parents=True, exist_ok=True)
    for source, target in dockerfile.links(final):  # the RUN line's ln -s, in the image's env
        proc = image.run(["bash", "-ec", f'source="{source}"; printf %s "$source"'])
        _check(proc, f"{name}: the Dockerfile's ln -s {source} {target}")
        assert Path(proc.stdout).exists(), f"{name}: ln -s {source}: {proc.stdout!r} is no file"
        image.path(target).parent.mkdir(parents=True, exist_ok=True)
        image.path(target).symlink_to(proc.stdout)
    where = image.run(["python", "-c", "import components, trainer; print(components.__file__)"])
    _check(where, f"{name}: import of the installed metarec")
    assert where.stdout.strip().startswith(str(venv)), f"{name} imports {where.stdout}, not {venv}"
    return image
