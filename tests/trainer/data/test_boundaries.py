"""Import boundaries of trainer/data: no torch.distributed; the writer side stays torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "trainer" / "data"


def test_no_torch_distributed_in_trainer_data():
    for path in DATA.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            assert not any(n.startswith("torch.distributed") for n in names), (
                f"{path.name}: {names}"
            )


def test_writer_side_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import trainer.data.contract, trainer.data.hashing, trainer.data.synthetic\n"
        "import trainer.data.schema, trainer.data.sharding, trainer.data.vsi, trainer.data.prefetch\n"
        "import trainer.data.files\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=DATA.parents[1])
