"""The validation report: one line per check, as text (console), JSON and Markdown (next to the data).

A report holds :class:`CheckResult` rows from three sources: GX expectation results (converted by
:func:`from_gx_result`), pre-checks done without GX (file layout and schema from Parquet footers,
partitions present) and skipped checks (e.g. no previous interval), which are listed with the
reason and do not count as evaluated. The report fails when any evaluated check fails.

Console example::

    FAIL episodes  id_range:user_id:max   user_id ids < buckets = 101
         observed: 1 of 30 unexpected (3.33%); examples: [101]
    SKIP episodes  row_count_vs_previous  no previous interval found under /data/episodes
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

REPORT_DIR = "_validation"


@dataclass
class CheckResult:
    """One check: what was expected, what was observed, and whether it held."""

    name: str
    """Stable check name, e.g. ``list_length:sparse`` (``meta.check`` of the expectation)."""
    suite: str
    expected: str
    success: bool
    observed: str = ""
    expectation: str = ""
    """The GX expectation type (``expect_column_values_to_be_between``), or ``precheck``."""
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[Any] = field(default_factory=list)
    skipped: bool = False
    note: str = ""

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.success else "FAIL")


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_gx_result(result: dict[str, Any], suite: str) -> CheckResult:
    """Convert one entry of ``ExpectationSuiteValidationResult.to_json_dict()["results"]``."""
    config = result.get("expectation_config", {})
    kwargs = config.get("kwargs", {})
    meta = config.get("meta") or {}
    res = result.get("result") or {}
    exc = result.get("exception_info") or {}
    name = meta.get("check") or config.get("type", "?")
    check = CheckResult(
        name=name,
        suite=suite,
        expected=config.get("description") or config.get("type", ""),
        success=bool(result.get("success")),
        expectation=config.get("type", ""),
    )
    if "mostly" in kwargs:
        check.expected += f" [mostly={kwargs['mostly']:g}]"
    if exc.get("raised_exception"):
        check.success = False
        check.note = f"the check could not run: {exc.get('exception_message')}"
        check.observed = "error"
        return check
    if "observed_value" in res:
        check.observed = _short(res["observed_value"])
        details = res.get("details") or {}
        if details.get("mismatched"):
            check.observed += f"; mismatched: {_short(details['mismatched'])}"
    if "unexpected_count" in res:
        n, total = res.get("unexpected_count") or 0, res.get("element_count")
        pct = res.get("unexpected_percent")
        check.unexpected_count = int(n)
        check.unexpected_percent = None if pct is None else round(float(pct), 4)
        of = f" of {total}" if total is not None else ""
        pct_text = f" ({pct:.2f}%)" if pct is not None else ""
        check.observed = f"{n}{of} unexpected{pct_text}"
        check.examples = list(res.get("partial_unexpected_list") or [])[:5]
        index = res.get("partial_unexpected_index_list")
        if index:
            check.examples = list(index)[:5]
    if "observed_value" in res and "unexpected_count" in res:
        check.observed = f"{_short(res['observed_value'])}; {check.observed}"
    return check


@dataclass
class ValidationReport:
    """The outcome of ``validate_raw`` / ``validate_episodes``; ``exit_code`` is the CLI's."""

    kind: str
    """``raw`` or ``episodes``."""
    suite: str
    target: str
    checks: list[CheckResult]
    parameters: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    gx_version: str = ""
    paths: dict[str, str] = field(default_factory=dict)
    """Where the report was written (``json``, ``md``)."""

    @property
    def success(self) -> bool:
        return all(c.success for c in self.checks if not c.skipped)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.skipped and not c.success]

    @property
    def statistics(self) -> dict[str, int]:
        evaluated = [c for c in self.checks if not c.skipped]
        return {
            "evaluated": len(evaluated),
            "successful": sum(c.success for c in evaluated),
            "failed": len(self.failed),
            "skipped": len(self.checks) - len(evaluated),
        }

    @property
    def exit_code(self) -> int:
        return 0 if self.success else 1

    def check(self, name: str) -> CheckResult:
        """The check called ``name`` (KeyError if the report has none)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r} in the report; checks: {[c.name for c in self.checks]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "suite": self.suite,
            "target": self.target,
            "success": self.success,
            "statistics": self.statistics,
            "failed_checks": [c.name for c in self.failed],
            "parameters": self.parameters,
            "notes": self.notes,
            "gx_version": self.gx_version,
            "checks": [{**asdict(c), "status": c.status} for c in self.checks],
        }

    def to_text(self) -> str:
        """The console report: a verdict line, then one line (plus detail) per check."""
        s = self.statistics
        verdict = "PASSED" if self.success else "FAILED"
        lines = [
            f"{self.suite} validation {verdict}: {self.target}",
            f"  {s['evaluated']} checks evaluated, {s['failed']} failed, {s['skipped']} skipped",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        width = max((len(c.name) for c in self.checks), default=10)
        order = sorted(self.checks, key=lambda c: {"FAIL": 0, "SKIP": 2}.get(c.status, 1))
        for c in order:
            lines.append(f"{c.status} {c.name:<{width}}  {c.expected}")
            detail = []
            if c.observed and (not c.success or c.unexpected_count is None):
                detail.append(f"observed: {c.observed}")
            if c.examples and not c.success:
                detail.append(f"examples: {_short(c.examples)}")
            if c.note:
                detail.append(c.note)
            if detail:
                lines.append(" " * (width + 7) + "; ".join(detail))
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        s = self.statistics
        verdict = "passed" if self.success else "**FAILED**"
        out = [
            f"# {self.suite} validation: {verdict}",
            "",
            f"- target: `{self.target}`",
            f"- checks: {s['evaluated']} evaluated, {s['failed']} failed, {s['skipped']} skipped",
            f"- great_expectations {self.gx_version}",
        ]
        out += [f"- note: {n}" for n in self.notes]
        out += ["", "| status | check | expected | observed | examples |", "|---|---|---|---|---|"]
        for c in self.checks:
            cells = [
                c.status,
                f"`{c.name}`",
                c.expected,
                c.observed + (f" — {c.note}" if c.note else ""),
                _short(c.examples) if c.examples else "",
            ]
            out.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
        return "\n".join(out) + "\n"

    def write(self, directory: str) -> dict[str, str]:
        """Write ``report.json`` and ``report.md`` under ``directory`` (local path or URI)."""
        from .sources import filesystem

        fs, base = filesystem(directory)
        fs.create_dir(base, recursive=True)
        prefix = directory[: len(directory) - len(base)] if "://" in directory else ""
        self.paths = {
            "json": prefix + base.rstrip("/") + "/report.json",
            "md": prefix + base.rstrip("/") + "/report.md",
        }
        for kind, text in (
            ("json", json.dumps(self.to_dict(), indent=2, default=str) + "\n"),
            ("md", self.to_markdown()),
        ):
            path = base.rstrip("/") + f"/report.{kind}"
            with fs.open_output_stream(path) as f:
                f.write(text.encode())
        return self.paths
