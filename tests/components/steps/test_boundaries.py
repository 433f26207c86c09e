"""The steps are framework-free: no Airflow or KFP import anywhere, no heavy import at top level
(the DAG files import ``components.steps.config`` at parse time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STEPS = sorted((Path(__file__).resolve().parents[3] / "components" / "steps").glob("*.py"))
HEAVY = ("torch", "pyspark", "great_expectations", "pandas", "numpy")


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", STEPS, ids=lambda p: p.name)
def test_steps_import_no_orchestrator_and_nothing_heavy_at_top_level(path: Path):
    anywhere = _imports(path, top_level_only=False)
    assert not [n for n in anywhere if n.split(".")[0] in ("airflow", "kfp")]
    top = _imports(path, top_level_only=True)
    assert not [n for n in top if n.split(".")[0] in HEAVY]
    light = {"trainer.data.contract", "trainer.durable", "trainer.config_loader"}  # no torch
    assert not [n for n in top if n.startswith("trainer.") and n not in light]
