"""Fixtures of the manifest tests: overlay renders (cached), the CRD schemas, kubectl."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from components.launchers.render import manifests_dir, render_overlay

MANIFESTS = manifests_dir()
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir())
TRAIN_OVERLAYS = [o for o in OVERLAYS if o.startswith(("pytorchjob", "trainjob"))]
SCHEMAS = MANIFESTS.parent.parent / "shared" / "k8s-schemas"


@cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    # the built-in renderer: test_render.py proves it equals kubectl's output
    return tuple(render_overlay(overlay, engine="python"))


def rendered(overlay: str) -> list[dict[str, Any]]:
    """The objects of ``manifests/overlays/<overlay>`` (a fresh copy per call)."""
    import copy

    return copy.deepcopy(list(_render(overlay)))


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    """(overlay, object) for every object of every overlay."""
    return [(o, obj) for o in OVERLAYS for obj in rendered(o)]


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: the kubectl-vs-built-in golden test needs it")
    return path


@pytest.fixture(scope="session")
def crd_schemas() -> Path:
    if not SCHEMAS.is_dir():
        pytest.skip(f"CRD schemas not found at {SCHEMAS} (../shared is not checked out here)")
    return SCHEMAS
