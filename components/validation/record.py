"""Record a validation result in the interval's ``_manifest.json``, atomically.

Only the ``validation`` entry changes; every other field is written back as read (the manifest is
re-serialised the way ``Manifest.to_json`` writes it: sorted keys, 2-space indent), and the
``content_hash`` covers the data files only, so it stays valid. The new manifest goes to a
temporary file in the same directory (a dot name, which readers skip) and is renamed over the old
one, so a reader sees either the old or the new manifest, never a partial one. Local paths get
fsync of the file and the directory; on other ``pyarrow.fs`` filesystems the rename is the
filesystem's move (atomic on HDFS; object stores replace an object in one PUT in any case).

The entry::

    "validation": {"success": true, "suite": "episodes", "evaluated": 52, "failed": 0,
                   "failed_checks": [], "report": "_validation/report.json",
                   "gx_version": "1.24.1", "statistics": {"evaluated": 52, ...}}
"""

from __future__ import annotations

import json
import os
from typing import Any

from trainer.data.contract import MANIFEST_NAME
from trainer.durable import write_atomic

from .report import REPORT_DIR, ValidationReport


def validation_entry(report: ValidationReport) -> dict[str, Any]:
    stats = report.statistics
    return {
        "success": report.success,
        "suite": report.suite,
        "evaluated": stats["evaluated"],
        "failed": stats["failed"],
        "failed_checks": [c.name for c in report.failed],
        "report": f"{REPORT_DIR}/report.json",
        "gx_version": report.gx_version,
        "statistics": stats,
    }


def record_in_manifest(root: str, manifest: dict[str, Any], report: ValidationReport) -> None:
    """Rewrite ``<root>/_manifest.json`` with ``manifest`` (as read) plus the validation entry."""
    from .sources import filesystem

    updated = {**manifest, "validation": validation_entry(report)}
    text = json.dumps(updated, indent=2, sort_keys=True) + "\n"
    if "://" not in root or root.startswith("file://"):
        path = root[len("file://") :] if root.startswith("file://") else root
        write_atomic(os.path.join(path, MANIFEST_NAME), text)
        return
    fs, base = filesystem(root)
    final = base.rstrip("/") + "/" + MANIFEST_NAME
    tmp = base.rstrip("/") + f"/.{MANIFEST_NAME}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, final)
