"""The data-quality audit of a period: validate every ETL output in it that was not validated yet.

audit_episodes(cfg, Interval.parse("2026-11-01T00/1d"))
# {"period": ..., "intervals": {"interval=20261101T00-20261101T01": {"success": true, ...}},
#  "validated_now": [...], "failed": []}
"""

from __future__ import annotations

import re
from typing import Any

from components.steps.config import DeliveryConfig
from components.steps.data import ValidationFailed, validate_episodes_step
from components.steps.layout import Interval, RunLayout

INTERVAL_DIR = re.compile(r"^interval=(\d{8}T\d{2})-(\d{8}T\d{2})$")


def interval_of(folder: str) -> Interval | None:
    """The interval of an ETL output folder name (``interval=20261101T00-20261101T01``)."""
    m = INTERVAL_DIR.match(folder)
    if not m:
        return None

    def iso(s: str) -> str:
        return f"{s[:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}"

    return Interval(iso(m.group(1)), iso(m.group(2)))  # type: ignore[arg-type]


def intervals_within(cfg: DeliveryConfig, period: Interval) -> list[Interval]:
    """ETL outputs under ``<run_root>/episodes`` whose interval lies inside ``period``, oldest first."""
    root = RunLayout.of(cfg.run_root).episodes_root
    found = [interval_of(p.name) for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    inside = [i for i in found if i and period.start <= i.start and i.end <= period.end]
    return sorted(inside, key=lambda i: i.start)


def audit_episodes(cfg: DeliveryConfig, period: Interval) -> dict[str, Any]:
    """Validate the period's ETL outputs (a passed validation recorded in a manifest is reused).

    Raises:
        ValidationFailed: at least one output failed (all of them are checked first).
    """
    results, now, failed = {}, [], []
    for interval in intervals_within(cfg, period):
        try:
            r = validate_episodes_step(cfg, interval)
            results[interval.id] = r.to_dict()
            if not r.reused:
                now.append(interval.id)
        except ValidationFailed as e:
            failed.append(interval.id)
            results[interval.id] = {"success": False, "error": str(e)}
    summary = {"period": period.id, "intervals": results, "validated_now": now, "failed": failed}
    if failed:
        raise ValidationFailed(f"episode validation failed for {failed}: {summary}")
    return summary
