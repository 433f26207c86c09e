"""The promotion gate: challenger vs champion on the SAME evaluation data, as a typed decision.

Standard library only. A :class:`Candidate` is an export plus an evaluation in the shape of the
trainer's ``eval.json`` (``{"splits": {split: {"before": {...}, "after": {...}, ...}}}``) and the
content hash of the data that evaluation ran on: the training run's own ``eval.json`` (data hash
from the export's lineage), or an evaluation of the export on other episodes
(``trainer.exported.evaluation.evaluate_exported``, which records the hash it read).

:func:`decide` returns one :class:`Verdict` with a reason:

    failed_validation   the challenger is damaged (checksums) or has no finite value of the
                        metric, or the champion has none: nothing is promoted
    no_champion         nothing is promoted yet: the (valid) challenger is promoted
    already_champion    the challenger IS the champion: nothing to do
    different_data      their metrics come from different data (content hashes differ):
                        refused, since an AUC of another interval is not comparable
    better / worse      the metric moved by more than ``tolerance`` in its good direction / against
    equal               within ``tolerance``: promoted only with ``promote_on_equal``

Metrics are named ``<split>.<before|after>.<metric>`` (``test_cold.after.auc``, the cold-start
AUC after adaptation) or ``<split>.<auc_lift|gauc_lift>``; ``logloss`` is lower-is-better, the
others higher-is-better.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from trainer.exported.artifact import (
    LINEAGE_FILE,
    METRICS_FILE,
    ExportError,
    read_json,
    verify_checksums,
)

LOWER_IS_BETTER = ("logloss",)


class Verdict(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    EQUAL = "equal"
    NO_CHAMPION = "no_champion"
    ALREADY_CHAMPION = "already_champion"
    DIFFERENT_DATA = "different_data"
    FAILED_VALIDATION = "failed_validation"


@dataclass(frozen=True)
class GatePolicy:
    """What the gate compares and how strictly. Validated on construction."""

    metric: str = "test_cold.after.auc"
    """Dotted metric name (module docstring)."""
    tolerance: float = 0.001
    """Differences within it are ``equal``."""
    promote_on_equal: bool = False
    """Promote an ``equal`` challenger (fresher data, same quality); default keeps the champion."""

    def __post_init__(self) -> None:
        parts = self.metric.split(".")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[1] not in ("before", "after")):
            raise ValueError(
                f"--metric {self.metric!r} must be <split>.<before|after>.<metric> (e.g. "
                "test_cold.after.auc) or <split>.auc_lift"
            )
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ValueError(f"--tolerance must be a finite number >= 0, got {self.tolerance}")

    @property
    def higher_is_better(self) -> bool:
        return self.metric.rsplit(".", 1)[-1] not in LOWER_IS_BETTER


@dataclass(frozen=True)
class Candidate:
    """One model as the gate sees it."""

    version: str
    evaluation: dict[str, Any] | None
    data_hash: str | None
    """Content hash of the episodes ``evaluation`` was computed on."""
    problems: tuple[str, ...] = ()
    """Why it failed validation (empty: it passed)."""


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    promote: bool
    reason: str
    metric: str
    challenger: float | None = None
    champion: float | None = None
    delta: float | None = None
    """Change of the metric in its good direction (positive = better)."""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": str(self.verdict)}


def metric_value(evaluation: dict[str, Any] | None, metric: str) -> float | None:
    """The finite value of ``metric`` in an ``eval.json``-shaped dict, else None."""
    node: Any = (evaluation or {}).get("splits", {})
    for part in metric.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) and math.isfinite(node) else None


def load_candidate(version_dir: str | Path, evaluation: dict[str, Any] | None = None) -> Candidate:
    """A :class:`Candidate` from an export: verified checksums, and ``evaluation`` (with its
    ``data.content_hash``) or else the export's ``eval.json`` with its training data's hash."""
    path = Path(version_dir)
    problems: list[str] = []
    try:
        verify_checksums(path)
    except (ExportError, FileNotFoundError) as e:
        return Candidate(path.name, None, None, (str(e),))
    if evaluation is not None:
        return Candidate(path.name, evaluation, evaluation.get("data", {}).get("content_hash"))
    lineage = read_json(path / LINEAGE_FILE)
    if not (path / METRICS_FILE).is_file():
        problems.append(
            f"{path} has no {METRICS_FILE} ({lineage.get('metrics', {}).get('source')})"
        )
        return Candidate(path.name, None, None, tuple(problems))
    return Candidate(path.name, read_json(path / METRICS_FILE), lineage["data"]["content_hash"])


def decide(challenger: Candidate, champion: Candidate | None, policy: GatePolicy) -> Decision:
    """The gate decision (module docstring)."""
    m = policy.metric
    new = metric_value(challenger.evaluation, m)
    problems = list(challenger.problems)
    if not problems and new is None:
        problems.append(f"the challenger's evaluation has no finite {m}")
    if problems:
        return Decision(Verdict.FAILED_VALIDATION, False,
                        f"challenger {challenger.version} failed validation: " + "; ".join(problems), m, new)  # fmt: skip
    if champion is None:
        return Decision(
            Verdict.NO_CHAMPION, True, f"no champion yet: promoting {challenger.version}", m, new
        )
    if champion.version == challenger.version:
        return Decision(
            Verdict.ALREADY_CHAMPION, False, f"{challenger.version} is the champion already", m, new
        )
    old = metric_value(champion.evaluation, m)
    if champion.problems or old is None:
        why = "; ".join(champion.problems) or f"its evaluation has no finite {m}"
        return Decision(Verdict.FAILED_VALIDATION, False,
                        f"champion {champion.version} cannot be compared: {why}; evaluate both on "
                        "the same episodes (--evaluate-on)", m, new)  # fmt: skip
    if challenger.data_hash is None or challenger.data_hash != champion.data_hash:
        return Decision(Verdict.DIFFERENT_DATA, False,
                        f"metrics computed on different data (challenger {str(challenger.data_hash)[:12]}, "
                        f"champion {str(champion.data_hash)[:12]}): evaluate both on the same "
                        "episodes with --evaluate-on <ETL output>", m, new, old)  # fmt: skip
    delta = (new - old) if policy.higher_is_better else (old - new)
    if delta > policy.tolerance:
        verdict, promote = Verdict.BETTER, True
    elif delta < -policy.tolerance:
        verdict, promote = Verdict.WORSE, False
    else:
        verdict, promote = Verdict.EQUAL, policy.promote_on_equal
    reason = (f"{m}: challenger {challenger.version} {new:.6f} vs champion {champion.version} "
              f"{old:.6f} ({verdict}, tolerance {policy.tolerance})")  # fmt: skip
    return Decision(verdict, promote, reason, m, new, old, delta)
