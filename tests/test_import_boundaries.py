"""Import boundaries of DESIGN.md §8, checked on the source with `ast` (no imports executed).

- `trainer` imports none of Spark, Airflow, KFP, great-expectations or `components`: it must run on
  a stock PyTorch image.
- Model, meta-learning, embedding-storage and data modules never import `torch.distributed`.
- `trainer/data/{contract,hashing,synthetic}.py` stay torch-free so the Spark side can import them.
- DAG files and KFP component modules import only the standard library and their framework at top level.
- No two modules of the project import each other (at top level, in a function or for type hints).
- Layers point down: `components` imports neither `dags` nor `pipelines`.
- The model code (`trainer/models/`) does not even mention DES or the cache: they live behind the
  embedding collection (`trainer/sparse.py`).
"""

from __future__ import annotations

import ast
import functools
import re
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
TORCH_FREE = [
    "trainer/data/contract.py",
    "trainer/data/hashing.py",
    "trainer/data/synthetic.py",
    "trainer/durable.py",
    "trainer/config_loader.py",
    "components/raw_records.py",  # Spark's Python workers import it
]
PACKAGES = ("trainer", "components", "dags", "pipelines", "bench")
PENDING_CYCLES: dict[tuple[str, str], str] = {}
"""Import cycles whose owner is breaking them: each one's test below fails (strict xfail) once it
is gone, so that its entry is deleted with the cycle."""


def _py_files(rel: str) -> list[Path]:
    p = REPO / rel
    return sorted(p.rglob("*.py")) if p.is_dir() else ([p] if p.exists() else [])


@functools.cache
def _parse(text: str, filename: str) -> ast.Module:
    """Parsed once per content: the per-file tests and the cycle finder read the same files."""
    return ast.parse(text, filename=filename)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = _parse(path.read_text(), str(path))
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


@pytest.mark.parametrize("path", _py_files("components"), ids=lambda p: str(p.relative_to(REPO)))
def test_components_import_no_orchestration_layer(path: Path) -> None:
    assert not _hits(_imports(path), ("dags", "pipelines"))


@pytest.mark.parametrize(
    "path", _py_files("trainer/models"), ids=lambda p: str(p.relative_to(REPO))
)
def test_model_code_never_mentions_des_or_the_cache(path: Path) -> None:
    text = path.read_text()
    assert not re.findall(r"\b(?:DES|des)\b|cache|Cache|MixCache", text)


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


def _module_paths(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``PACKAGES`` under ``root`` (a package:
    its __init__)."""
    mods = {}
    for path in (p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))):
        parts = path.relative_to(root).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _module_imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (relative imports resolved;
    ``from a.b import c`` counts as ``a.b.c`` where that is a module, else ``a.b``), except the
    packages that contain it (Python imports those first anyway)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(_parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and not (name == target or name.startswith(target + ".")):
                found.add(target)
    return found


def _two_module_cycles(root: Path = REPO) -> set[tuple[str, str]]:
    """Pairs of project modules (sorted) that import each other."""
    paths = _module_paths(root)
    edges = {name: _module_imports(name, path, set(paths)) for name, path in paths.items()}
    return {(a, b) for a, outs in edges.items() for b in outs if a < b and a in edges[b]}


def test_no_two_modules_import_each_other() -> None:
    """A cycle means neither module can be read, tested or imported without the other: move
    what both need into a third module, or pass it in."""
    assert not _two_module_cycles() - PENDING_CYCLES.keys()


@pytest.mark.parametrize(
    "pair",
    [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=o))
        for p, o in PENDING_CYCLES.items()
    ],
    ids="<->".join,
)
def test_pending_import_cycle_is_broken(pair: tuple[str, str]) -> None:
    assert pair not in _two_module_cycles()


def test_the_cycle_finder_sees_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "trainer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from trainer.a import x\n")
    (pkg / "c.py").write_text("import trainer\nfrom trainer.b import f\n")
    assert _two_module_cycles(tmp_path) == {("trainer.a", "trainer.b")}
