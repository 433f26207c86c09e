"""``metarec evaluate`` tunes fine-tuning on ``valid_cold`` by default: on an ETL output with named
cold tasks (``--cold-tasks``), the command's tuned row is the grid cell with the best value on
valid_cold, its grid the same cells evaluated on valid_cold directly.

:func:`check_default_tuning` runs on the ETL output of ``tests/components/etl/test_cold_splits.py``
(its ``cold_run`` fixture: one Spark run shared with the split tests)."""

from __future__ import annotations

import json
from pathlib import Path

from components.cli import main
from tests.trainer.run_helpers import tiny_config
from trainer.evaluation import Settings, evaluate_model, load_model
from trainer.trainer import Trainer


def check_default_tuning(root: str, tmp_path: Path, capsys) -> None:
    """Train a tiny model on ``root`` (an ETL output with valid_cold), run ``metarec evaluate``
    without ``--tune-split`` and check its tuning against valid_cold evaluated directly."""
    assert "valid_cold" in json.loads((Path(root) / "_manifest.json").read_text())["splits"]
    overrides = {"train.steps": 2, "data.batch_episodes": 4, "eval.splits": ["test_cold"]}
    trainer = Trainer(tiny_config(Path(root), tmp_path / "run", **overrides)).build()
    try:
        trainer.fit()
    finally:
        trainer.close()

    out = tmp_path / "eval.json"
    # logloss: valid_cold's two small tasks may hold one class only (no AUC)
    argv = ["evaluate", str(tmp_path / "run"), "--data", root, "--steps", "1,3", "--lr",
            "0.03,1.0", "--level", "episode", "--tune-metric", "logloss", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0  # no --tune-split: valid_cold, because the folder has it
    result = json.loads(out.read_text())
    assert result["settings"]["tune_split"] == "valid_cold"
    tuning = result["tuning"]["episode"]
    assert tuning["split"] == "valid_cold" and tuning["metric"] == "logloss"
    assert "tuning (episode): on valid_cold by logloss" in capsys.readouterr().out
    # the oracle: the same cells evaluated on valid_cold as the split
    on_valid_cold = evaluate_model(
        load_model(tmp_path / "run", root), root, "valid_cold",
        Settings(steps=(1, 3), lrs=(0.03, 1.0), levels=("episode",), tune_split="test_cold"),
    )  # fmt: skip
    cells = [r for r in on_valid_cold["rows"] if r["row"] == "grid"]
    assert [{**r["setting"], "logloss": r["metrics"]["logloss"]} for r in cells] == tuning["grid"]
    best = min(cells, key=lambda r: r["metrics"]["logloss"])["setting"]
    assert tuning["chosen"] == best
    tuned = next(r for r in result["rows"] if r["row"] == "tuned on valid_cold")
    grid = next(r for r in result["rows"] if r["row"] == "grid" and r["setting"] == best)
    assert tuned["setting"] == best and tuned["metrics"] == grid["metrics"]
