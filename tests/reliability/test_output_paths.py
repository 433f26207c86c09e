"""Outputs never alias inputs, and nothing is written through a link that leaves its root
(issue 18, items 10 and 11): the scorer's --out against --input / --adapt-on, symlink loops in an
input folder, the trainer's outputs behind planted symlinks, and the delivery config's
``warm_start = false`` against a trainer config file's ``checkpoint.warm_start``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from components.cli import main
from tests.reliability.unprivileged import REPO

EVENT = json.dumps({"event_id": "e1", "event_time": "2026-11-02T10:00:00Z", "campaign_id": "c1"})


@pytest.fixture
def events(tmp_path):
    """An input folder ``raw/dt=2026-11-02/part.jsonl`` (one event)."""
    part = tmp_path / "raw" / "dt=2026-11-02" / "part.jsonl"
    part.parent.mkdir(parents=True)
    part.write_text(EVENT + "\n")
    return part


def _score(capsys, *args: str) -> tuple[int, str]:
    code = main(["score", "--model", "no-model-needed", *args])
    return code, capsys.readouterr().err


def test_score_refuses_an_output_that_aliases_its_input(events, tmp_path, capsys) -> None:
    """Refused before the model is even read (the model path here does not exist), and the
    events are left as they were."""
    raw = events.parent.parent
    (tmp_path / "link").symlink_to(raw, target_is_directory=True)
    cases = [  # (args, how the error names the overlap)
        (["--input", str(events), "--out", str(events)], "--out", "is"),
        (["--input", f"file://{events}", "--out", str(events)], "--out", "is"),
        (["--input", str(raw), "--out", str(raw / "dt=2026-11-02" / "p.parquet")], "--out", "lies inside"),
        (["--input", str(raw), "--out", str(tmp_path / "link" / "p.parquet")], "--out", "lies inside"),
        (["--input", str(events), "--out", str(events.parent)], "--out", "contains"),
        (["--input", str(tmp_path / "elsewhere.jsonl"), "--adapt-on", str(raw),
          "--out", str(raw / "p.parquet")], "--out", "lies inside"),
        # the rejects file of --out p.parquet is p.rejected.parquet: here, the input itself
        (["--input", str(tmp_path / "p.rejected.parquet"), "--out", str(tmp_path / "p.parquet")],
         "--out's rejected file", "is"),
    ]  # fmt: skip
    (tmp_path / "p.rejected.parquet").write_bytes(b"not yet")
    for args, what, how in cases:
        code, err = _score(capsys, *args)
        assert code == 2, (args, err)
        assert f"metarec score: error: {what} " in err and f" {how} --" in err, err
        assert "overwrite or re-read its own input" in err and len(err.strip().splitlines()) == 1
    assert events.read_text() == EVENT + "\n"
    assert sorted(p.name for p in raw.rglob("*")) == ["dt=2026-11-02", "part.jsonl"]
    assert (tmp_path / "p.rejected.parquet").read_bytes() == b"not yet"
    # a sibling output is fine: the same call reaches the model (and fails there, as it should)
    code, err = _score(capsys, "--input", str(raw), "--out", str(tmp_path / "out" / "p.parquet"))
    assert code == 2 and "no-model-needed" in err and "own input" not in err


LISTING = """
import json, sys
from components.score.events import list_event_files
fs, files = list_event_files(sys.argv[1])
print(json.dumps([f.rel for f in files]))
"""


def test_symlink_loops_in_the_input_folder_do_not_hang_the_listing(events, tmp_path) -> None:
    """Two loops (``a/up -> ..`` and ``a/self -> .``) and a second way into a folder: the
    listing ends, and every real file is listed once (before, it never returned)."""
    raw = events.parent.parent
    (events.parent / "up").symlink_to("..", target_is_directory=True)
    (events.parent / "self").symlink_to(".", target_is_directory=True)
    (raw / "dt=2026-11-03").mkdir()
    (raw / "dt=2026-11-03" / "part.jsonl").write_text(EVENT + "\n")
    (raw / "zz-alias").symlink_to(raw / "dt=2026-11-03", target_is_directory=True)
    (raw / "dangling.jsonl").symlink_to(tmp_path / "gone.jsonl")
    proc = subprocess.run([sys.executable, "-c", LISTING, str(raw)], cwd=REPO, timeout=60,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["dt=2026-11-02/part.jsonl", "dt=2026-11-03/part.jsonl"]
