"""An ETL rerun in another JVM writes the same bytes and the same content hash (issue 18, item 1).

parquet-mr writes each column chunk's encodings in an order that changes with every JVM; before
``components.etl.footer`` pinned it, a rerun in a new process changed every episode file's sha256
and so the manifest's ``content_hash``, and the checkpoints trained on the first run were refused.
Here one run is this test session's JVM and the other a fresh ``metarec etl`` process.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.reliability import etl_runs

pytestmark = pytest.mark.spark


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_rerun_in_another_jvm_writes_the_same_bytes(spark, tmp_path) -> None:
    from components.etl import run_etl
    from trainer.data.contract import load_manifest

    raw, out = tmp_path / "raw", tmp_path / "episodes"
    rows = etl_runs.write_raw(raw)
    first = run_etl(etl_runs.config(raw, out), spark)
    assert first.rows_read == rows == first.rows_kept + first.rows_quarantined
    assert first.rows_quarantined == 1
    before = _snapshot(Path(first.output))
    assert any("_quarantine/part-" in p for p in before)

    proc = etl_runs.run_etl_process(raw, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["output"] == first.output
    assert load_manifest(first.output).content_hash == first.manifest.content_hash
    assert _snapshot(Path(first.output)) == before  # episodes, quarantine and manifest
