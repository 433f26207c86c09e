"""Fixtures of the manifest tests: overlay renders by kustomize (cached), the CRD schemas."""

from __future__ import annotations

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
    return tuple(render_overlay(overlay))


def rendered(overlay: str) -> list[dict[str, Any]]:
    """The objects of ``manifests/overlays/<overlay>`` (a fresh copy per call)."""
    import copy

    return copy.deepcopy(list(_render(overlay)))


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    """(overlay, object) for every object of every overlay."""
    return [(o, obj) for o in OVERLAYS for obj in rendered(o)]


@pytest.fixture(scope="session")
def crd_schemas() -> Path:
    if not SCHEMAS.is_dir():
        pytest.skip(f"CRD schemas not found at {SCHEMAS} (../shared is not checked out here)")
    return SCHEMAS
