"""The run's report (``trainer/report.py``) that cannot be written is one line naming the file, as
for the trainer's other outputs (issue 18: before, a read-only run directory surfaced as a
``PermissionError`` traceback naming a temp file). File modes are enforced also when the tests run
as root (``unprivileged.py``)."""

from __future__ import annotations

import json

from tests.reliability.unprivileged import python, run_as_user

BOTH_WAYS = """
import contextlib, io, json, runpy, sys
from trainer.report import write_report
out = {"error": None}
try:
    write_report(sys.argv[1])
except ValueError as e:
    out["error"] = str(e)
sys.argv = ["trainer.report", sys.argv[1]]  # the command line, python -m trainer.report RUN
del sys.modules["trainer.report"]  # run afresh as __main__, as -m does
err, stdout = io.StringIO(), io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
    try:
        runpy.run_module("trainer.report", run_name="__main__")
    except SystemExit as e:
        out["code"] = e.code
out["stderr"], out["stdout"] = err.getvalue(), stdout.getvalue()
print(json.dumps(out))
"""


def test_a_read_only_run_directory_is_one_line_naming_the_report(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"kind": "train", "step": s, "loss": 0.7 - 0.1 * s} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run.chmod(0o555)
    try:
        proc = run_as_user(python("-c", BOTH_WAYS, str(run)))
    finally:
        run.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    error = out["error"]
    assert error is not None and error.startswith(
        f"cannot write the run's report {run / 'report.png'}: Permission denied;"
    ), error
    assert "\n" not in error
    assert (out["code"], out["stdout"]) == (2, "")  # the command line: the same one line
    assert out["stderr"].splitlines() == [f"trainer.report: error: {error}"], out["stderr"]
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]  # no temp file either
