"""Serving on cold-start tasks: raw events of the ``test_cold`` campaigns, scored by the champion
after adapting to each campaign's support events (``metarec score --adapt-on``).

The cold campaigns are the ``task_key`` values of the ``test_cold`` episodes (tasks the models
never trained on). Their raw JSONL lines are copied, unchanged (corrupt ones included: the scorer
must reject those with a reason), into two files split at the median event time of those
campaigns: ``support.jsonl`` (the older half: what a campaign showed before) and
``events.jsonl`` (the newer half: the traffic to score). The champion then scores the events
twice: adapted to each campaign's newest K support events, and without adaptation (the same
events, for the comparison).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("metarec.demo")


def cold_tasks(episodes: Path) -> set[str]:
    """Task keys of the ``test_cold`` split of an ETL output."""
    import pyarrow.dataset as ds

    split = episodes / "split=test_cold"
    if not split.is_dir():
        return set()
    table = ds.dataset(str(split), format="parquet").to_table(columns=["task_key"])
    return set(table.column("task_key").to_pylist())


def write_cold_events(raw: Path, tasks: set[str], task_key: str, out: Path) -> dict[str, Any]:
    """Copy the raw lines of ``tasks`` into ``out/support.jsonl`` and ``out/events.jsonl``.

    Returns the cut time and the line counts. A line whose campaign is readable but whose time
    is not (a corrupt one) goes with the events, so the scorer shows how it rejects it.
    """
    from components.score.events import read_events
    from trainer.durable import write_atomic

    picked: list[tuple[float, str]] = []
    for batch in read_events(str(raw), 65_536):
        if batch.raw is None:
            raise ValueError(f"{raw}: the demo copies raw JSONL lines; got another format")
        keys = batch.table.column(task_key).to_pylist()
        times = batch.table.column("_t").to_pylist()
        for key, t, line in zip(keys, times, batch.raw, strict=True):
            if key in tasks:
                picked.append((np.nan if t is None else float(t), line))
    if not picked:
        raise ValueError(f"no raw event of the {len(tasks)} test_cold tasks found under {raw}")
    times = np.array([t for t, _ in picked])
    cut = float(np.nanmedian(times))
    lines: dict[str, list[str]] = {"support": [], "events": []}
    for t, line in picked:
        lines["support" if t < cut else "events"].append(line.rstrip("\n") + "\n")  # NaN: event
    for target, chosen in lines.items():
        write_atomic(out / f"{target}.jsonl", "".join(chosen))
    counts = {k: len(v) for k, v in lines.items()}
    return {"cut_ms": int(cut), "lines": counts, "tasks": len(tasks)}


def score_cold(model_dir: Path, out: Path, task_key: str) -> dict[str, Any]:
    """Score ``out/events.jsonl`` with the export at ``model_dir``, adapted on
    ``out/support.jsonl`` and unadapted; returns both summaries."""
    from components.score.run import score_events

    adapted = score_events(model_dir, str(out / "events.jsonl"), out / "predictions.parquet",
                           adapt_on=str(out / "support.jsonl"), task_key=task_key)  # fmt: skip
    plain = score_events(model_dir, str(out / "events.jsonl"),
                         out / "predictions_unadapted.parquet", task_key=task_key)  # fmt: skip
    return {"adapted": adapted.to_dict(), "unadapted": plain.to_dict()}
