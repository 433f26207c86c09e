"""Compile every pipeline to ``pipelines/compiled/<name>.yaml``, or check that the committed files
are current.

    python -m pipelines.compile            # (re)write the compiled YAML
    python -m pipelines.compile --check    # exit 1 and name the files that differ

The check compares normalised IR: ``sdkVersion`` and any ``kfp==x.y.z`` pin are dropped (what KFP's
own golden tests strip), so an SDK patch release does not make every golden file stale.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

COMPILED = Path(__file__).resolve().parent / "compiled"


def pipelines() -> dict[str, Any]:
    from pipelines.training_pipeline import training_pipeline

    return {"training_pipeline": training_pipeline}


def compile_to(name: str, path: Path) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(pipelines()[name], str(path))
    return path


def normalized(text: str) -> Any:
    """The IR documents of a compiled file without version noise."""
    import yaml

    text = re.sub(r"kfp==[0-9][0-9a-zA-Z.\-+]*", "kfp", text)
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for d in docs:
        if isinstance(d, dict):
            d.pop("sdkVersion", None)
    return docs


def stale() -> list[str]:
    """Names of the pipelines whose committed YAML differs from a fresh compile."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in pipelines():
            fresh = compile_to(name, Path(tmp) / f"{name}.yaml").read_text()
            committed = COMPILED / f"{name}.yaml"
            if not committed.is_file() or normalized(committed.read_text()) != normalized(fresh):
                out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.compile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for name in names:
            sys.stderr.write(
                f"{COMPILED / name}.yaml is stale: run `python -m pipelines.compile`\n"
            )
        return 1 if names else 0
    COMPILED.mkdir(exist_ok=True)
    for name in pipelines():
        print(compile_to(name, COMPILED / f"{name}.yaml"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
