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
    regressed           better (or equal and promotable) on the metric, but a guard failed:
                        ranking (GAUC) or calibration got worse than the champion's beyond its
                        tolerance; refused, the reason names the guard

The guards read the metric's split and adaptation (``test_cold.after.auc`` ->
``test_cold.after.gauc`` and ``test_cold.after.calibration``; a lift metric reads ``after``):
GAUC may drop by at most ``gauc_tolerance``; the calibration error ``|predicted / observed
positives - 1|`` may grow by at most ``calibration_tolerance``. A pooled AUC can rise while
ranking within tasks falls (it rewards each task's base rate as much as ranking), and a CTR
model's scores set bids, so either regression blocks promotion. A guard that cannot be checked
(a side has no finite value, e.g. an old ``eval.json`` without calibration) is recorded as
unchecked and does not block. Every guard's values are in :attr:`Decision.guards`.

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
    REGRESSED = "regressed"


@dataclass(frozen=True)
class GatePolicy:
    """What the gate compares and how strictly. Validated on construction."""

    metric: str = "test_cold.after.auc"
    """Dotted metric name (module docstring)."""
    tolerance: float = 0.001
    """Differences within it are ``equal``."""
    promote_on_equal: bool = False
    """Promote an ``equal`` challenger (fresher data, same quality); default keeps the champion."""
    gauc_tolerance: float = 0.002
    """Refuse a challenger whose GAUC (the metric's split and adaptation) is below the champion's
    by more than this (``inf``: no ranking guard)."""
    calibration_tolerance: float = 0.05
    """Refuse a challenger whose calibration error ``|predicted / observed positives - 1|`` exceeds
    the champion's by more than this (``inf``: no calibration guard)."""

    def __post_init__(self) -> None:
        parts = self.metric.split(".")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[1] not in ("before", "after")):
            raise ValueError(
                f"--metric {self.metric!r} must be <split>.<before|after>.<metric> (e.g. "
                "test_cold.after.auc) or <split>.auc_lift"
            )
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ValueError(f"--tolerance must be a finite number >= 0, got {self.tolerance}")
        for name in ("gauc_tolerance", "calibration_tolerance"):
            if not getattr(self, name) >= 0:  # NaN fails too
                raise ValueError(f"gate {name} must be >= 0 (inf: off), got {getattr(self, name)}")

    @property
    def higher_is_better(self) -> bool:
        return self.metric.rsplit(".", 1)[-1] not in LOWER_IS_BETTER

    def guard_metrics(self) -> dict[str, tuple[str, float]]:
        """Guard name -> (dotted metric it reads, tolerance); see the module docstring."""
        parts = self.metric.split(".")
        prefix = f"{parts[0]}.{parts[1] if len(parts) == 3 else 'after'}"
        return {
            "gauc": (f"{prefix}.gauc", self.gauc_tolerance),
            "calibration": (f"{prefix}.calibration", self.calibration_tolerance),
        }


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
    guards: tuple[dict[str, Any], ...] = ()
    """Each guard checked against a champion: name, metric, both values, the change in the good
    direction, tolerance and ``passed`` (None: not checked, with a ``note``)."""

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
    guards = tuple(_guard(name, metric, tol, challenger, champion)
                   for name, (metric, tol) in policy.guard_metrics().items())  # fmt: skip
    failed = [g for g in guards if g["passed"] is False]
    if promote and failed:
        verdict, promote = Verdict.REGRESSED, False
        reason += "; refused: " + "; ".join(g["note"] for g in failed)
    return Decision(verdict, promote, reason, m, new, old, delta, guards)


def _guard(
    name: str, metric: str, tolerance: float, challenger: Candidate, champion: Candidate
) -> dict[str, Any]:
    """One guard's record (module docstring): ``delta`` is the change in the good direction."""
    new, old = (
        metric_value(challenger.evaluation, metric),
        metric_value(champion.evaluation, metric),
    )
    out: dict[str, Any] = {"name": name, "metric": metric, "challenger": new, "champion": old,
                           "tolerance": tolerance, "delta": None, "passed": None}  # fmt: skip
    if new is None or old is None:
        side = "challenger" if new is None else "champion"
        out["note"] = f"{metric} not checked: the {side}'s evaluation has no finite value"
        return out
    if name == "calibration":  # the error |ratio - 1| must not grow
        out["delta"] = abs(old - 1.0) - abs(new - 1.0)
        what = (
            f"calibration error |{metric} - 1| grew from {abs(old - 1):.4f} to {abs(new - 1):.4f}"
        )
    else:
        out["delta"] = new - old
        what = f"{metric} fell from {old:.6f} to {new:.6f}"
    out["passed"] = out["delta"] >= -tolerance
    out["note"] = f"{what} (tolerance {tolerance})" if not out["passed"] else f"{metric} ok"
    return out
