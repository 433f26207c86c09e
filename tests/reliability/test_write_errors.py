"""A checkpoint that cannot be written says so in one line naming the path and what was being
written (issue 18: before, a full disk surfaced as torch's ``enforce fail at
inline_container.cc ... unexpected pos`` and a read-only directory as a traceback).

Both failures are real: a read-only directory (file modes enforced, also when the tests run as
root: ``unprivileged.py``; the trainer's own outputs too) and a full filesystem (a 256 KiB tmpfs mounted inside a user and
mount namespace, ``unshare -rm``, which needs no root; skipped where user namespaces are off).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.reliability.unprivileged import REPO, python, run_as_user

READ_ONLY = """
import contextlib, io, json, sys, torch
from tests.trainer.run_helpers import tiny_overrides
from trainer.__main__ import main
from trainer.checkpoint import Checkpointer, CheckpointError
checkpoints, episodes, run = sys.argv[1:]
out = {}
try:
    Checkpointer(checkpoints).save(1, {"w": torch.zeros(200_000)})
except CheckpointError as e:
    out["save"] = str(e)
err = io.StringIO()
with contextlib.redirect_stderr(err):
    out["code"] = main(["--config", "debug", *tiny_overrides(episodes, run)])
out["trainer"] = err.getvalue().strip().splitlines()[-1]
print(json.dumps(out))
"""


def test_a_read_only_directory_is_one_line(tmp_path) -> None:
    """A read-only checkpoints directory (the checkpoint writer) and a read-only run directory
    (the trainer's first output, ``config.json``): one line each, naming the file."""
    from tests.trainer.run_helpers import write_episodes

    episodes = write_episodes(tmp_path / "episodes")
    checkpoints, run = tmp_path / "checkpoints", tmp_path / "run"
    for d in (checkpoints, run):
        d.mkdir()
        d.chmod(0o555)
    try:
        proc = run_as_user(python("-c", READ_ONLY, str(checkpoints), str(episodes), str(run)))
    finally:
        for d in (checkpoints, run):
            d.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    step = checkpoints / "step-00000001.tmp"
    assert out["save"].startswith(
        f"cannot write the step 1 checkpoint directory {step}: Permission denied;"
    ), out["save"]
    assert out["code"] == 2 and out["trainer"].startswith(
        f"trainer: error: cannot write the run's config.json {run / 'config.json'}: Permission "
        "denied;"
    ), out["trainer"]
    assert "\n" not in out["save"] and not list(checkpoints.iterdir()) and not list(run.iterdir())


FULL_DISK = """
import json, sys, torch
from pathlib import Path
from trainer.checkpoint import Checkpointer, CheckpointError, writing
from trainer.logging_utils import JsonlLog
root = Path(sys.argv[1])
out = {}
try:
    Checkpointer(root).save(1, {"w": torch.zeros(200_000)})  # 800 KB > the 256 KiB filesystem
except CheckpointError as e:
    out["save"] = str(e)
# torch writing through its own file handle (a path, not a file object): no errno to read
try:
    with writing("a test shard", root / "direct.pt"):
        torch.save({"w": torch.zeros(200_000)}, str(root / "direct.pt"))
except CheckpointError as e:
    out["direct"], out["torch"] = str(e), str(e.__cause__)
out["left"] = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
log = JsonlLog(root / "metrics.jsonl")  # an empty file: no block needed
try:
    with open(root / "filler", "wb") as f:  # fill what the failed writes gave back
        while True:
            f.write(bytes(4096))
except OSError:
    pass
try:
    log.write({"kind": "train", "step": 1})
except ValueError as e:
    out["metrics"] = str(e)
print(json.dumps(out))
"""


def test_a_full_disk_is_one_line_naming_the_path(tmp_path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a small filesystem without root")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = 'mount -t tmpfs -o size=256k tmpfs "$1" && shift && exec "$@"'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(disk),
                           *python("-c", FULL_DISK, str(disk / "checkpoints"))],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    if proc.returncode != 0 and "mount" in proc.stderr + proc.stdout and not proc.stdout:
        pytest.skip(f"no user namespaces here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    shard = disk / "checkpoints" / "step-00000001.tmp" / "rank-00000.pt"
    assert out["save"].startswith(
        f"cannot write the step 1 checkpoint of rank 0 {shard}: No space left on device;"
    ), out["save"]
    assert "enforce fail" not in out["save"] and "\n" not in out["save"]
    # torch's own text, as it reaches a caller that saved to a path, is mapped too
    assert "unexpected pos" in out["torch"]
    direct = disk / "checkpoints" / "direct.pt"
    assert out["direct"].startswith(f"cannot write a test shard {direct}: the write failed (")
    assert "bytes free on that filesystem" in out["direct"] and "\n" not in out["direct"]
    # no partial shard is left to keep the disk full (torch's own partial file is the caller's)
    assert out["left"] == ["direct.pt", "step-00000001.tmp"], out["left"]
    metrics = disk / "checkpoints" / "metrics.jsonl"
    assert out["metrics"].startswith(
        f"cannot append to the run's metrics log {metrics}: No space left on device;"
    ), out["metrics"]
