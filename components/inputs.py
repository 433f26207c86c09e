"""Rules every reader of raw inputs applies to its input root (the ETL's listing and the scorer's):
one definition, so the two readers accept the same files.

    refuse_links_out(fs, "/data/raw", "/data/raw", ["dt=2026-11-01/hr=00/part-0.jsonl"])

Standard library only (pyarrow's filesystem is passed in, never imported here).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

SHOWN = 8
"""How many offending files an error names (then a count of the rest)."""


def refuse_links_out(fs: Any, base: str, uri: str, files: Iterable[str]) -> None:
    """Refuse input files that resolve outside the input root ``base`` through a symbolic link
    (to the file or to a folder above it): a reader reads, scores and quarantines lines of only
    what lives under its root. Links that stay under the root are fine.

    Args:
        fs: the pyarrow filesystem ``base`` is on; object stores (no links) are not checked.
        base: the input root's path on ``fs``; ``uri``: the root as the user gave it (for the
            message); ``files``: the input files, relative to ``base``.

    Raises:
        ValueError: naming each such file and where it leads, and what to do.
    """
    if fs.type_name != "local":
        return
    root = os.path.realpath(base)
    outside = []
    for rel in files:
        target = os.path.realpath(os.path.join(base, rel))
        if os.path.commonpath([root, target]) != root:
            outside.append(f"{rel} -> {target}")
    if outside:
        more = f" ... ({len(outside) - SHOWN} more)" if len(outside) > SHOWN else ""
        raise ValueError(
            f"{uri}: {len(outside)} input file(s) lead outside the input root {root} through a "
            f"symbolic link: {', '.join(outside[:SHOWN])}{more}. Only files under the input root "
            "are read: copy or move the data under the root, or remove the link"
        )
