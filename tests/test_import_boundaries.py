"""Import boundaries of DESIGN.md §8, checked on the source with `ast` (no imports executed).

- `trainer` imports none of Spark, Airflow, KFP, great-expectations or `components`: it must run on
  a stock PyTorch image.
- Model, meta-learning, embedding-storage and data modules never import `torch.distributed`.
- `trainer/data/{contract,hashing,synthetic}.py` stay torch-free so the Spark side can import them.
- DAG files and KFP component modules import only the standard library and their framework at top level.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAINER_FORBIDDEN = ("pyspark", "airflow", "kfp", "great_expectations", "components", "pipelines")
NO_DISTRIBUTED = [
    "trainer/embeddings.py",
    "trainer/meta.py",
    "trainer/optim.py",
    "trainer/metrics.py",
    "trainer/models",
    "trainer/data",
]
TORCH_FREE = ["trainer/data/contract.py", "trainer/data/hashing.py", "trainer/data/synthetic.py"]


def _py_files(rel: str) -> list[Path]:
    p = REPO / rel
    return sorted(p.rglob("*.py")) if p.is_dir() else ([p] if p.exists() else [])


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _hits(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("path", _py_files("trainer"), ids=lambda p: str(p.relative_to(REPO)))
def test_trainer_imports_no_pipeline_frameworks(path: Path) -> None:
    assert not _hits(_imports(path), TRAINER_FORBIDDEN)


@pytest.mark.parametrize(
    "path",
    [f for rel in NO_DISTRIBUTED for f in _py_files(rel)],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_model_meta_data_modules_never_import_torch_distributed(path: Path) -> None:
    assert not _hits(_imports(path), ("torch.distributed", "trainer.parallel"))


@pytest.mark.parametrize("rel", TORCH_FREE)
def test_contract_modules_are_torch_free(rel: str) -> None:
    assert not _hits(_imports(REPO / rel), ("torch",))


def test_only_one_module_initialises_the_process_group() -> None:
    callers = [
        str(p.relative_to(REPO))
        for p in _py_files("trainer")
        if "init_process_group" in p.read_text()
    ]
    assert len(callers) <= 1, callers


@pytest.mark.parametrize("path", _py_files("dags"), ids=lambda p: str(p.relative_to(REPO)))
def test_dag_files_have_cheap_top_level_imports(path: Path) -> None:
    heavy = ("torch", "trainer", "pyspark", "great_expectations", "pandas", "numpy", "kfp")
    assert not _hits(_imports(path, top_level_only=True), heavy)


def test_the_boundary_checker_sees_forbidden_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch.distributed as dist\nfrom pyspark.sql import functions\n")
    names = _imports(bad)
    assert _hits(names, ("torch.distributed",)) and _hits(names, TRAINER_FORBIDDEN)
