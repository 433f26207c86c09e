"""``metarec etl`` refuses a wrong --input before Spark starts: no JVM, a clear line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[3]

# Runs the CLI in a fresh interpreter, so "was Spark started?" is "was pyspark ever imported?".
CHILD = """
import contextlib, io, json, sys
from components.cli import main
results = []
for input_ in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["etl", "--input", input_, "--output", "/tmp/unused-etl-out",
                   "--start", "2026-11-01T00", "--end", "2026-11-01T02"])
    results.append({"rc": rc, "err": err.getvalue()})
print(json.dumps({"results": results, "pyspark_imported": "pyspark" in sys.modules}))
"""


def _run_etl_cli(*inputs: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *inputs],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_wrong_input_fails_before_the_jvm_starts(tmp_path: Path) -> None:
    a_file = tmp_path / "raw.jsonl"
    a_file.write_text("{}\n")
    one_hour = tmp_path / "raw"
    (one_hour / "dt=2026-11-01" / "hr=00").mkdir(parents=True)
    (one_hour / "dt=2026-11-01" / "hr=00" / "_SUCCESS").write_text("")  # landed (no traffic)

    out = _run_etl_cli("/nonexistent/raw", f"file://{tmp_path}/nowhere", str(a_file), str(one_hour))

    assert out["pyspark_imported"] is False  # Spark (and its JVM) never started
    missing, missing_uri, not_a_dir, one_missing_hour = out["results"]
    for r in out["results"]:
        assert r["rc"] == 2 and r["err"].startswith("metarec etl: error: "), r
        assert "Traceback" not in r["err"] and len(r["err"].strip().splitlines()) == 1, r
    assert "input root /nonexistent/raw does not exist or is not a directory" in missing["err"]
    assert "dt=YYYY-MM-DD/hr=HH/" in missing["err"]
    assert f"input root file://{tmp_path}/nowhere does not exist" in missing_uri["err"]
    assert f"input root {a_file} does not exist or is not a directory" in not_a_dir["err"]
    assert "1 of 2 hourly partitions" in one_missing_hour["err"]
    assert "dt=2026-11-01/hr=01" in one_missing_hour["err"]
    assert "--allow-missing" in one_missing_hour["err"]
