"""A one-page PNG of a run: training curves and before/after-adaptation AUC per split.

    python -m trainer.report out/train/debug          # writes out/train/debug/report.png

Left: train loss, support loss (before adaptation) and query loss (after adaptation) against the
step, from ``metrics.jsonl``. Right: query AUC and GAUC per evaluated split, without adaptation
and after adapting on each episode's support set, from ``eval.json``. Rendered with matplotlib's
Agg backend (no display needed).
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

from trainer.durable import write_atomic
from trainer.logging_utils import read_jsonl
from trainer.paths import output_file

REPORT_NAME = "report.png"


def _value(metrics: dict, key: str) -> float:
    v = metrics.get(key)
    return float("nan") if v is None else float(v)


def write_report(output_dir: str | Path, path: str | Path | None = None) -> Path:
    """Render ``<output_dir>/report.png`` (or ``path``) from the run's metrics files, written
    atomically (``trainer.durable``), never through a link planted at ``<output_dir>/report.png``.

    Raises:
        FileNotFoundError: ``metrics.jsonl`` is missing (not a run directory).
        ValueError: ``<output_dir>/report.png`` is a symlink; or it cannot be written (a full disk,
            a read-only run directory): one line naming the file, as for the trainer's other
            outputs (``checkpoint.writing``).
    """
    import matplotlib

    from trainer.checkpoint import writing  # torch: imported when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    metrics_path = out / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found: {out} is not a trainer output_dir")
    train = [r for r in read_jsonl(metrics_path) if r.get("kind") == "train"]
    eval_path = out / "eval.json"
    splits = json.loads(eval_path.read_text())["splits"] if eval_path.is_file() else {}
    splits = {k: v for k, v in splits.items() if "before" in v}

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    steps = [r["step"] for r in train]
    for key, label in (
        ("loss", "train loss"),
        ("support_loss", "support loss (before adaptation)"),
        ("query_loss", "query loss (after adaptation)"),
    ):
        values = [_value(r, key) for r in train]
        if any(math.isfinite(v) for v in values):
            curves.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
    curves.set_xlabel("step")
    curves.set_ylabel("binary cross-entropy")
    curves.set_title("training")
    curves.grid(alpha=0.3)
    if steps:
        curves.legend(fontsize=8)

    names = list(splits)
    width = 0.2
    series = (
        ("before", "auc", "AUC, no adaptation"),
        ("after", "auc", "AUC, adapted"),
        ("before", "gauc", "GAUC, no adaptation"),
        ("after", "gauc", "GAUC, adapted"),
    )
    for i, (when, key, label) in enumerate(series):
        xs = [j + (i - 1.5) * width for j in range(len(names))]
        ys = [_value(splits[n][when], key) for n in names]
        drawn = bars.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width, label=label)
        bars.bar_label(drawn, labels=[f"{y:.3f}" for y in ys], fontsize=7, rotation=90)
    bars.set_xticks(range(len(names)), names)
    bars.set_ylim(0.0, 1.3)  # headroom for the legend above the bars
    bars.axhline(0.5, color="grey", lw=0.8, ls=":")
    bars.set_title("query-set AUC before / after adaptation")
    if names:
        bars.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    target = Path(path) if path is not None else output_file(out, REPORT_NAME, "the run's report")
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    with writing("the run's report", target, ValueError):
        write_atomic(target, png.getvalue())
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.stdout.write(__doc__ or "")
        sys.exit(0 if len(sys.argv) == 2 else 2)
    try:
        print(write_report(sys.argv[1]))
    except (FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"trainer.report: error: {e}\n")
        sys.exit(2)
