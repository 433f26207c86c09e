"""What the two Dockerfiles say, read from their text (no Docker here): the instructions, the
stages, the pip line's extras, ENV, COPY, the symlinks a RUN creates, USER and the exec-form
ENTRYPOINT/CMD. The image-contract test builds each image's environment from these facts, so a
Dockerfile change (an extra dropped, a COPY removed) changes what the test builds."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"trainer": REPO / "trainer" / "Dockerfile",
               "components": REPO / "components" / "Dockerfile"}  # fmt: skip
IMAGES = {**DOCKERFILES, "serve": REPO / "components" / "serve" / "Dockerfile"}
"""Every image the image-contract test builds; the model server's Dockerfile (its own pins, no
KFP step runs on it) has its static checks in tests/components/serve/test_image.py."""

Step = tuple[str, str]
_EXTRAS = re.compile(r"metarec-\*\.whl'\)\[([\w,]+)\]")
_CONSTRAINTS = re.compile(r"pip install [^\"]*?-c (\S+)")
# ln -s "$(<command printing the source>)" /absolute/target
_LINK = re.compile(r"ln -s \"(\$\(.+?\))\" (/\S+)")


def instructions(path: Path) -> list[Step]:
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


def stages(steps: list[Step]) -> dict[str, list[Step]]:
    """The steps of each stage by its name (``AS <name>``); the unnamed last one is ``final``."""
    out: dict[str, list[Step]] = {}
    current: list[Step] = []
    for word, rest in steps:
        if word == "FROM":
            words = rest.split()
            current = out.setdefault(words[-1] if " AS " in rest else "final", [])
        current.append((word, rest))
    return out


def env(stage: list[Step]) -> dict[str, str]:
    """Every ``ENV KEY=value`` of the stage, in order."""
    out = {}
    for word, rest in stage:
        if word == "ENV":
            out.update(item.split("=", 1) for item in shlex.split(rest))
    return out


def copies(stage: list[Step]) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not ``--from``)."""
    out = []
    for word, rest in stage:
        if word == "COPY" and "--from" not in rest:
            *sources, dest = rest.split()
            out.append((sources, dest))
    return out


def exec_form(stage: list[Step], instruction: str) -> list[str]:
    """The JSON array of the stage's last ENTRYPOINT or CMD."""
    (value, *_) = [rest for word, rest in reversed(stage) if word == instruction]
    return json.loads(value)


def last(stage: list[Step], instruction: str) -> str:
    """The arguments of the stage's last ``instruction`` (USER, WORKDIR)."""
    return next(rest for word, rest in reversed(stage) if word == instruction)


@dataclass(frozen=True)
class PipInstall:
    """The final stage's ``pip install -c <constraints> "<metarec wheel>[extras]"``."""

    constraints: str
    extras: tuple[str, ...]


def pip_install(stage: list[Step]) -> PipInstall:
    runs = [rest for word, rest in stage if word == "RUN" and "pip install" in rest]
    if len(runs) != 1:
        raise ValueError(f"expected one RUN with pip install in the final stage, found {len(runs)}")
    extras, constraints = _EXTRAS.search(runs[0]), _CONSTRAINTS.search(runs[0])
    if extras is None or constraints is None:
        raise ValueError(f"pip line without -c <constraints> or metarec wheel [extras]: {runs[0]}")
    return PipInstall(constraints.group(1), tuple(extras.group(1).split(",")))


def links(stage: list[Step]) -> list[tuple[str, str]]:
    """(shell command substitution printing the source, target) of every ``ln -s`` in a RUN."""
    return [m.groups() for word, rest in stage if word == "RUN" for m in _LINK.finditer(rest)]
