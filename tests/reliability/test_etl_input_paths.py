"""ETL input paths (issue 18, item 11, the ETL's part): an input file that leads outside the input
root through a symbolic link is refused by name (before, its lines were read and copied into
``_quarantine``); an unreachable object store fails within ``$METAREC_STORE_TIMEOUT_S`` with a
message (before, ``gs://`` without credentials hung for minutes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from components.etl import extract
from components.etl.config import EtlConfig
from tests.components.etl import rawdata
from tests.components.etl.test_job import make_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "raw"
    rawdata.hours_of(root, range(3), rows_per_hour=5)
    return root


def test_a_linked_file_outside_the_root_is_refused(raw, tmp_path) -> None:
    from components.etl import run_etl

    secret = tmp_path / "elsewhere" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_text(json.dumps(rawdata.record(1, hour=1)) + "\nnot json\n")
    (rawdata.part_dir(raw, 1) / "part-00001.jsonl").symlink_to(secret)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="lead outside the input root") as e:
        run_etl(make_config(raw, out))  # refused before Spark starts: no session needed
    assert f"dt=2026-11-01/hr=01/part-00001.jsonl -> {secret}" in str(e.value)
    assert not out.exists()  # nothing written, nothing quarantined


def test_a_linked_partition_folder_outside_the_root_is_refused(raw, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    rawdata.hours_of(elsewhere, range(3, 4), rows_per_hour=5)
    hour = rawdata.part_dir(raw, 2)
    for f in hour.iterdir():
        f.unlink()
    hour.rmdir()
    hour.symlink_to(rawdata.part_dir(elsewhere, 3), target_is_directory=True)
    with pytest.raises(ValueError, match=r"1 input file\(s\) lead outside") as e:
        extract.list_input(make_config(raw, tmp_path / "out"))
    assert "dt=2026-11-01/hr=02/part-00000.jsonl -> " in str(e.value)


def test_a_link_that_stays_under_the_root_is_read(raw, tmp_path) -> None:
    kept = raw / "_backfill" / "late.jsonl"  # under the root, outside the partitions
    kept.parent.mkdir()
    kept.write_text(json.dumps(rawdata.record(7, hour=1)) + "\n")
    (rawdata.part_dir(raw, 1) / "part-00001.jsonl").symlink_to(kept)
    listing = extract.list_input(make_config(raw, tmp_path / "out"))
    assert "dt=2026-11-01/hr=01/part-00001.jsonl" in listing.files


def _config(uri: str, tmp_path: Path) -> EtlConfig:
    return make_config(uri, tmp_path / "out")  # type: ignore[arg-type]


def test_an_object_store_that_never_answers_fails_in_time(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(extract.STORE_TIMEOUT_ENV, "1")
    with socket.socket() as server:  # accepts connections (the backlog), never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        uri = f"s3://logs/raw?endpoint_override=127.0.0.1:{port}&scheme=http"
        with pytest.raises(ValueError, match=r"the store did not answer within 1 s"):
            extract.check_input(_config(uri, tmp_path))


def test_gs_without_credentials_fails_with_a_message(tmp_path) -> None:
    """Through the CLI: one line on stderr, exit 2, before any JVM starts. (Without network the
    request hangs and the timeout speaks; with network but no credentials, the store's refusal.)"""
    env = {**os.environ, "PYTHONPATH": str(REPO), extract.STORE_TIMEOUT_ENV: "1"}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "components.cli", "etl", "--input", "gs://metarec-no-such/raw",
         "--output", str(tmp_path / "out"), "--start", "2026-11-01T00", "--end",
         "2026-11-01T01"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith("metarec etl: error: gs://metarec-no-such/raw: ")
    assert "did not answer within 1 s" in errors[0] or "cannot open the store" in errors[0]


def test_a_bad_timeout_setting_is_named(monkeypatch) -> None:
    monkeypatch.setenv(extract.STORE_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=r"\$METAREC_STORE_TIMEOUT_S must be a number"):
        extract.filesystem("gs://metarec-no-such/raw")
