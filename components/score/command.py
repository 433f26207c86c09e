"""Score raw ad-log events with an exported model, optionally adapting to each task first.

Reads raw events in the canonical schema (JSONL, JSONL.gz or Parquet; one file or a dt=/hr= tree),
validates them with the ETL's rules (one reason per rejected row), encodes them with the Python
twin of the ETL's feature hash and the model's feature spec, and writes one prediction per event.
No Spark: it runs wherever the trainer image runs.

--model is an export (<models>/<name>/v<N>) or a model directory with a CHAMPION pointer (the
promoted version is used). With --adapt-on, the newest K support events of each task (the
model's k_support, labelled) adapt the model to that task before its events are scored, with
the same inner loop as the trainer's evaluation; events of tasks without support are scored
unadapted.

Outputs: <out> (event_id, task_key, score, logit, adapted, click), <out stem>.rejected.parquet
(source_file, line, event_id, reason, raw) and <out stem>.summary.json (rows read = scored +
rejected per reason, support sets, rows/s, AUC/logloss where events carry a click label).
None of them may be, lie inside or contain --input or --adapt-on (resolved, symlinks followed):
such a run is refused before anything is written. Symlinks in an input folder are followed, each
real folder once (a link loop does not hang the listing).

examples:
  metarec score --model out/models/click-dlrm/v3 --input out/raw/dt=2026-11-02 \\
      --out out/scores/predictions.parquet
  metarec score --model out/models/click-dlrm --input new_events.jsonl \\
      --adapt-on support_events.jsonl --task-key campaign_id --out out/scores/adapted.parquet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="export directory, or a model directory "
                        "with a CHAMPION pointer")  # fmt: skip
    parser.add_argument("--input", required=True, help="raw events: a file or a dt=/hr= directory")
    parser.add_argument("--out", required=True, help="predictions Parquet file to write")
    parser.add_argument("--adapt-on", default=None, help="support events to adapt each task on")
    parser.add_argument("--task-key", default=None, help="raw id column that keys tasks (default: "
                        "the model's task key, else campaign_id)")  # fmt: skip
    parser.add_argument("--batch-rows", type=int, default=65_536, help="rows per batch")


def resolve_model(path: str) -> Path:
    """An export directory, or the champion version of a model directory (its CHAMPION pointer)."""
    from components.promotion.registry import CHAMPION, read_champion

    p = Path(path)
    if (p / CHAMPION).exists():
        pointer = read_champion(p.parent, p.name)
        assert pointer is not None
        return p / pointer.version
    return p


def run(args: argparse.Namespace) -> int:
    from components.score.run import score_events

    if args.batch_rows < 1:
        raise ValueError(f"--batch-rows must be positive, got {args.batch_rows}")
    summary = score_events(
        resolve_model(args.model),
        args.input,
        args.out,
        adapt_on=args.adapt_on,
        task_key=args.task_key,
        batch_rows=args.batch_rows,
    )
    d = summary.to_dict()
    sys.stdout.write(json.dumps({k: d[k] for k in ("output", "rows_read", "rows_scored",
                     "rows_rejected", "reasons", "rows_adapted", "tasks_adapted", "metrics",
                     "rows_per_second")}, indent=2, default=str) + "\n")  # fmt: skip
    return 0
