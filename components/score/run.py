"""Score raw events with an exported model: read, validate, encode, adapt per task, write.

    summary = score_events("out/models/click-dlrm/v3", "out/raw/dt=2026-11-02",
                           "out/scores/predictions.parquet", adapt_on="out/raw/dt=2026-11-01")

Streaming: events are read, validated, encoded and scored in batches of ``batch_rows``; memory is
bounded by a batch plus the support sets (at most K samples per task) and the set of event ids
seen. Outputs (each written to a temporary file and renamed into place, so a rerun replaces them
whole and a crash leaves the previous ones):

- ``<out>``: one row per scored event, in input order: ``event_id``, ``task_key``, ``score``
  (sigmoid of the logit), ``logit``, ``adapted`` (scored after adapting to the task's support
  set), ``click`` (the label when the event carries one, else null);
- ``<out stem>.rejected.parquet``: one row per rejected event: ``source_file``, ``line``,
  ``event_id``, ``reason`` (the ETL's codes, plus ``duplicate_event_id`` for a repeated id, and
  ``damaged_file`` for the unreadable rest of a file: the run goes on with the next file) and
  the original ``raw`` line;
- ``<out stem>.summary.json``: the accounting (rows read = scored + rejected, per reason), the
  support sets used, throughput, and AUC/logloss over the scored events that carry a click label.

Adaptation (``adapt_on``): the support events are validated like the ETL's (a click label is
required) and the newest K (the model's ``k_support``) of each task, by ``(event_time,
event_id)``, form its support set, oldest first as in an episode. Events of a task with at least
``min_support`` support samples are scored after adapting to it, the same inner loop as the
trainer's evaluation; the others without adaptation.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.raw_schema import DEFAULT_TASK_KEY, TASK_KEYS, validate_task_key
from components.score.encode import DUPLICATE, Encoded, check_spec, encode, validate
from components.score.events import RawBatch, read_events, total_bytes
from trainer.durable import create_temp, write_json_atomic

log = logging.getLogger(__name__)
PREDICTIONS = pa.schema([("event_id", pa.string()), ("task_key", pa.string()),
                         ("score", pa.float64()), ("logit", pa.float32()),
                         ("adapted", pa.bool_()), ("click", pa.int8())])  # fmt: skip
REJECTS = pa.schema([("source_file", pa.string()), ("line", pa.int64()), ("event_id", pa.string()),
                     ("reason", pa.string()), ("raw", pa.string())])  # fmt: skip


@dataclass
class ScoreSummary:
    """What a scoring run read, scored and rejected (also ``<out stem>.summary.json``)."""

    model: str
    input: str
    output: str
    rejected_output: str
    task_key: str
    rows_read: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rows_adapted: int = 0
    tasks_adapted: int = 0
    support: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": round(self.rows_per_second, 1)}


def _reject_rows(batch: RawBatch, rows: np.ndarray, reasons: np.ndarray) -> pa.Table:
    t = batch.table.take(pa.array(rows, pa.int64()))
    if batch.raw is not None:
        raw = [batch.raw[i] for i in rows]
    else:  # Parquet: render the typed row
        raw = [json.dumps(r, default=str, sort_keys=True) for r in t.drop_columns(
            ["_reason", "_reason_unlabelled", "_line"]).to_pylist()]  # fmt: skip
    return pa.table({"source_file": pa.array([batch.source] * len(rows), pa.string()),
                     "line": t.column("_line"), "event_id": t.column("event_id"),
                     "reason": pa.array(reasons[rows].tolist(), pa.string()),
                     "raw": pa.array(raw, pa.string())}, schema=REJECTS)  # fmt: skip


class _Accounting:
    """Rows read / kept / rejected per reason, duplicate ids, and the rejects file."""

    def __init__(self, rejects: BinaryIO | None) -> None:
        self.read = self.kept = 0
        self.reasons: dict[str, int] = {}
        self.seen: set[str] = set()
        self.writer = pq.ParquetWriter(rejects, REJECTS) if rejects else None

    def split(self, batch: RawBatch, labels_required: bool) -> np.ndarray:
        """Good row indices of ``batch``; the others are counted (and written) as rejected."""
        reason = validate(batch.table, labels_required)
        ids = batch.table.column("event_id").to_pylist()
        for i in np.flatnonzero(np.equal(reason, None)):
            if ids[i] in self.seen:  # a repeated event: the first one is kept, as in the ETL
                reason[i] = DUPLICATE
            else:
                self.seen.add(ids[i])
        good = np.flatnonzero(np.equal(reason, None))
        bad = np.flatnonzero(np.not_equal(reason, None))
        self.read += batch.table.num_rows
        self.kept += len(good)
        for code, count in zip(
            *np.unique(reason[bad].astype(str), return_counts=True), strict=True
        ):
            self.reasons[str(code)] = self.reasons.get(str(code), 0) + int(count)
        if self.writer is not None and len(bad):
            self.writer.write_table(_reject_rows(batch, bad, reason))
        return good

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def load_support(model: Any, uri: str, task_key: str, batch_rows: int) -> tuple[dict, dict]:
    """The support set of every task in ``uri`` (module docstring) and its accounting."""
    from trainer.exported.scoring import SupportSet

    acc = _Accounting(None)
    parts: list[Encoded] = []
    for batch in read_events(uri, batch_rows):
        good = acc.split(batch, labels_required=True)
        table = batch.table.take(pa.array(good, pa.int64()))
        parts.append(encode(table, model.features, model.dense_features, task_key))
    K = model.layout.k_support
    sets: dict[str, SupportSet] = {}
    if parts:
        e = Encoded(
            *(np.concatenate([getattr(p, k) for p in parts]) for k in Encoded.__dataclass_fields__)
        )
        order = np.lexsort((e.event_id.astype(str), e.t, e.task.astype(str)))
        e = e.take(order)
        keys, starts, counts = np.unique(e.task.astype(str), return_index=True, return_counts=True)
        for key, start, count in zip(keys, starts, counts, strict=True):
            rows = np.arange(start + max(count - K, 0), start + count)  # the newest K, oldest first
            sets[str(key)] = SupportSet(
                e.sparse[rows], e.dense[rows], e.click[rows], e.conversion[rows]
            )
    used = sum(len(s) for s in sets.values())
    accounting = {"input": uri, "rows_read": acc.read, "rows_rejected": acc.read - acc.kept,
                  "reasons": acc.reasons, "rows_used": used, "rows_older_than_k": acc.kept - used,
                  "tasks": len(sets), "k_support": K}  # fmt: skip
    log.info("support: %d rows read, %d used for %d tasks (newest %d per task), %d older, %d "
             "rejected", acc.read, used, len(sets), K, acc.kept - used, acc.read - acc.kept)  # fmt: skip
    return sets, accounting


def _metrics(labels: list[np.ndarray], logits: list[np.ndarray]) -> dict[str, Any] | None:
    from trainer.metrics import auc, logloss

    y, z = (
        np.concatenate(labels) if labels else np.zeros(0),
        np.concatenate(logits) if logits else np.zeros(0),
    )
    known = ~np.isnan(y)
    if not known.any():
        return None
    y, p = y[known], 1.0 / (1.0 + np.exp(-z[known].astype(np.float64)))
    return {"labelled_rows": int(known.sum()), "auc": auc(y, p), "logloss": logloss(y, p)}


def output_paths(output: str | Path, inputs: dict[str, str | None]) -> tuple[Path, dict[str, Path]]:
    """``<out>`` and its ``rejected`` / ``summary`` siblings, refused when one of them is, lies
    inside or contains a local input (``inputs``: flag -> path or URI; symlinks followed), so a
    scoring run never overwrites its events nor reads its own outputs on the next run."""
    from trainer.paths import check_apart

    out = Path(output)
    stem = out.name.removesuffix(".parquet")
    paths = {k: out.with_name(f"{stem}{s}") for k, s in
             (("rejected", ".rejected.parquet"), ("summary", ".summary.json"))}  # fmt: skip
    for flag, uri in inputs.items():
        if uri is None or ("://" in uri and not uri.startswith("file://")):
            continue  # no input, or an object store: no local path to alias
        for what, path in (("--out", out), *((f"--out's {k} file", p) for k, p in paths.items())):
            check_apart(path, uri.removeprefix("file://"), what, flag)
    return out, paths


def score_events(
    model_dir: str | Path,
    input_uri: str,
    output: str | Path,
    *,
    adapt_on: str | None = None,
    task_key: str | None = None,
    batch_rows: int = 65_536,
) -> ScoreSummary:
    """Score the raw events under ``input_uri`` with the exported model (module docstring).

    Raises:
        FileNotFoundError: the model or the input does not exist.
        ValueError: a tampered or incomplete model, a model not trained on raw-log features, an
            unknown task key, an unreadable input file, an output that is, lies inside or
            contains an input; the message says what to do.
    """
    from trainer.exported.model import load_exported
    from trainer.exported.scoring import score_samples, score_tasks

    t0 = time.perf_counter()
    out, paths = output_paths(output, {"--input": input_uri, "--adapt-on": adapt_on})
    model = load_exported(model_dir)
    spec_key = model.spec.get("task_key")
    task_key = validate_task_key(
        task_key or (spec_key if spec_key in TASK_KEYS else DEFAULT_TASK_KEY)
    )
    check_spec(model.features, model.dense_features, task_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = ScoreSummary(f"{model.path}", input_uri, str(out), str(paths["rejected"]), task_key)
    support: dict = {}
    if adapt_on:
        support, summary.support = load_support(model, adapt_on, task_key, batch_rows)
    files = {k: create_temp(p) for k, p in {"out": out, "rejected": paths["rejected"]}.items()}
    tmp = {k: path for k, (path, _) in files.items()}
    acc = _Accounting(files["rejected"][1])
    writer = pq.ParquetWriter(files["out"][1], PREDICTIONS)
    labels, logit_parts, adapted_tasks = [], [], set()
    size, last_log = max(total_bytes(input_uri), 1), time.perf_counter()
    try:
        for batch in read_events(input_uri, batch_rows):
            good = acc.split(batch, labels_required=False)
            e = encode(batch.table.take(pa.array(good, pa.int64())), model.features,
                       model.dense_features, task_key)  # fmt: skip
            if support:
                logits, adapted = score_tasks(model, e.sparse, e.dense, e.task, support)
                adapted_tasks.update(e.task[adapted].tolist())
            else:
                logits, adapted = score_samples(model, e.sparse, e.dense), np.zeros(len(e), bool)
            click = pa.array(e.click, pa.float32(), mask=np.isnan(e.click)).cast(pa.int8())
            writer.write_table(pa.table({
                "event_id": pa.array(e.event_id.tolist(), pa.string()),
                "task_key": pa.array(e.task.tolist(), pa.string()),
                "score": 1.0 / (1.0 + np.exp(-logits.astype(np.float64))), "logit": logits,
                "adapted": adapted, "click": click}, schema=PREDICTIONS))  # fmt: skip
            summary.rows_adapted += int(adapted.sum())
            labels.append(e.click)
            logit_parts.append(logits)
            if time.perf_counter() - last_log > 2.0:
                last_log, dt = time.perf_counter(), time.perf_counter() - t0
                frac = min(batch.position / size, 1.0)
                log.info("scored %d of %d rows read (%.0f rows/s), %.0f%% of the input, ETA %.0f s",
                         acc.kept, acc.read, acc.read / dt, 100 * frac,
                         dt * (1 - frac) / max(frac, 1e-9))  # fmt: skip
    except BaseException:
        writer.close()
        acc.close()
        for p, f in files.values():
            f.close()
            p.unlink(missing_ok=True)
        raise
    writer.close()
    acc.close()
    for _, f in files.values():
        f.close()
    summary.rows_read, summary.rows_scored = acc.read, acc.kept
    summary.rows_rejected, summary.reasons = acc.read - acc.kept, dict(sorted(acc.reasons.items()))
    summary.tasks_adapted = len(adapted_tasks)
    summary.metrics = _metrics(labels, logit_parts)
    summary.seconds = round(time.perf_counter() - t0, 3)
    assert summary.rows_read == summary.rows_scored + sum(summary.reasons.values())
    for key, path in (("out", out), ("rejected", paths["rejected"])):
        os.replace(tmp[key], path)
    write_json_atomic(paths["summary"], summary.to_dict())  # NaN (one-class AUC) -> null
    log.info("%s: %d rows read -> %d scored (%d adapted to %d tasks), %d rejected (%s); %.1f s, "
             "%.0f rows/s", out, summary.rows_read, summary.rows_scored, summary.rows_adapted,
             summary.tasks_adapted, summary.rows_rejected,
             ", ".join(f"{k} {v}" for k, v in summary.reasons.items()) or "none", summary.seconds,
             summary.rows_per_second)  # fmt: skip
    return summary
