"""The report's figures, each rendered with matplotlib (Agg backend) into PNG bytes.

Every function takes plain data (records of ``metrics.jsonl``, the demo summary, the per-task
table of ``cold_start.json``) and returns the PNG of one figure; none reads files.
"""

from __future__ import annotations

import io
import math
from typing import Any

COLORS = {"meta": "#1f77b4", "plain": "#ff7f0e"}
STYLES = {"meta": {"marker": "o", "ls": "-"}, "plain": {"marker": "x", "ls": "--"}}
"""The two runs often draw the same curve (same ids, same exchanges): different markers and line
styles keep both visible."""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
    return [s for s, _ in pts], [v for _, v in pts]


def training_curves(runs: dict[str, list[dict[str, Any]]]) -> bytes:
    """Outer loss per step of each run; for the meta run also the support loss before
    adaptation, whose gap to the query loss is what one inner step buys."""
    fig, ax = _plt().subplots(figsize=(8, 4))
    for mode, records in runs.items():
        steps, loss = _series(records, "loss")
        what = "query loss after adaptation (the outer loss)" if mode == "meta" else "loss"
        ax.plot(steps, loss, color=COLORS.get(mode), marker=".", label=f"{mode}: {what}")
        if mode == "meta":
            steps, support = _series(records, "support_loss")
            ax.plot(steps, support, color=COLORS[mode], ls=":",
                    label="meta: support loss (before adaptation)")  # fmt: skip
    ax.set_xlabel("outer step")
    ax.set_ylabel("binary cross-entropy")
    ax.set_title("Training curves (rank 0's log, all ranks' samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def auc_before_after(cold: dict[str, Any]) -> bytes:
    """Query AUC on test_cold without and after adaptation, meta vs plain."""
    fig, ax = _plt().subplots(figsize=(7, 4))
    modes = [m for m in ("meta", "plain") if m in cold]
    width = 0.35
    for i, when in enumerate(("before", "after")):
        xs = [j + (i - 0.5) * width for j in range(len(modes))]
        ys = [cold[m][when]["auc"] or 0.0 for m in modes]
        bars = ax.bar(xs, ys, width, label="no adaptation" if when == "before" else "adapted",
                      color="#bbbbbb" if when == "before" else "#2ca02c")  # fmt: skip
        ax.bar_label(bars, labels=[f"{y:.4f}" for y in ys], fontsize=8)
    ax.set_xticks(range(len(modes)), [f"{m} ({cold[m]['version']})" for m in modes])
    low = min([cold[m][w]["auc"] or 0.5 for m in modes for w in ("before", "after")] + [0.5])
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("query AUC")
    ax.set_title("Cold-start tasks (test_cold): AUC before / after adaptation")
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def per_task_auc(per_task: dict[str, list[Any]]) -> bytes:
    """Distribution of the per-task AUC (box plot with every task as a dot)."""
    plt = _plt()
    keys = [k for k in ("meta.before", "meta.after", "plain.before", "plain.after")
            if k in per_task]  # fmt: skip
    data = [[v for v in per_task[k] if v is not None and math.isfinite(v)] for k in keys]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.boxplot(data, showfliers=False)
    for i, values in enumerate(data, start=1):
        jitter = [i + 0.25 * ((j * 0.618) % 1 - 0.5) for j in range(len(values))]
        ax.scatter(jitter, values, s=6, alpha=0.35, color=COLORS[keys[i - 1].split(".")[0]])
    ax.set_xticks(range(1, len(keys) + 1),
                  [k.replace(".before", "\nno adaptation").replace(".after", "\nadapted")
                   for k in keys])  # fmt: skip
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("AUC of the task's query samples")
    ax.set_title(
        f"Per-task AUC on test_cold ({len(data[0]) if data else 0} tasks with both classes)"
    )
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def communication(runs: dict[str, list[dict[str, Any]]], by_collective: dict[str, dict]) -> bytes:
    """Bytes per step of every collective (left: mean, stacked; right: total per log step)."""
    plt = _plt()
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 4))
    modes = list(by_collective)
    names = sorted({c for m in modes for c in by_collective[m]},
                   key=lambda c: -max(by_collective[m].get(c, 0) for m in modes))  # fmt: skip
    bottom = [0.0] * len(modes)
    for name in names:
        ys = [by_collective[m].get(name, 0.0) / 1e3 for m in modes]
        bars.bar(modes, ys, bottom=bottom, label=name)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    bars.set_ylabel("kB per step (all ranks)")
    bars.set_title("Communication per step, by collective")
    bars.legend(fontsize=7, ncol=2)
    for mode, records in runs.items():
        steps, values = _series(records, "comm.bytes")
        lines.plot(steps, [v / 1e3 for v in values], color=COLORS.get(mode), label=mode,
                   **STYLES.get(mode, {}))  # fmt: skip
    lines.set_xlabel("outer step")
    lines.set_ylabel("kB per step")
    lines.set_ylim(bottom=0.0)
    lines.set_title("Communication per step over the run")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)
    return _png(fig)


def cache_hit_rate(runs: dict[str, list[dict[str, Any]]]) -> bytes:
    """MixCache hit rate per log step (lookups served by the device cache)."""
    fig, ax = _plt().subplots(figsize=(8, 4))
    for mode, records in runs.items():
        steps, rate = _series(records, "cache.hit_rate")
        if steps:
            ax.plot(steps, rate, color=COLORS.get(mode), label=mode, **STYLES.get(mode, {}))
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("outer step")
    ax.set_ylabel("hit rate")
    ax.set_title("MixCache hit rate (device cache in front of host-memory rows)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def quarantine(reasons: dict[str, int], kept: int) -> bytes:
    """Rows quarantined by the ETL, per reason code (rows kept in the title)."""
    items = sorted(reasons.items(), key=lambda kv: kv[1])
    fig, ax = _plt().subplots(figsize=(8, max(2.5, 0.25 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#d62728")
    ax.set_xlabel("rows")
    ax.set_title(f"ETL quarantine by reason ({sum(reasons.values()):,} rows; {kept:,} kept)")
    ax.tick_params(axis="y", labelsize=7)
    return _png(fig)
