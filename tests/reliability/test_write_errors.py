"""A checkpoint that cannot be written says so in one line naming the path and what was being
written (issue 18: before, a full disk surfaced as torch's ``enforce fail at
inline_container.cc ... unexpected pos`` and a read-only directory as a traceback).

Both failures are real: a read-only directory (file modes enforced, also when the tests run as
root: ``unprivileged.py``) and a full filesystem (a 256 KiB tmpfs mounted inside a user and
mount namespace, ``unshare -rm``, which needs no root; skipped where user namespaces are off).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.reliability.unprivileged import REPO, python, run_as_user

SAVE = """
import json, sys, torch
from trainer.checkpoint import Checkpointer, CheckpointError
try:
    Checkpointer(sys.argv[1]).save(1, {"w": torch.zeros(200_000)})
except CheckpointError as e:
    print(json.dumps({"error": str(e)}))
else:
    print(json.dumps({"error": None}))
"""


def test_a_read_only_checkpoint_directory_is_one_line(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    root.mkdir()
    root.chmod(0o555)
    try:
        proc = run_as_user(python("-c", SAVE, str(root)))
    finally:
        root.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error.startswith(
        f"cannot write the step 1 checkpoint directory {root}/step-00000001.tmp: Permission denied;"
    ), error
    assert "\n" not in error and not list(root.iterdir())


FULL_DISK = """
import json, sys, torch
from pathlib import Path
from trainer.checkpoint import Checkpointer, CheckpointError, _writing
root = Path(sys.argv[1])
out = {}
try:
    Checkpointer(root).save(1, {"w": torch.zeros(200_000)})  # 800 KB > the 256 KiB filesystem
except CheckpointError as e:
    out["save"] = str(e)
# torch writing through its own file handle (a path, not a file object): no errno to read
try:
    with _writing("a test shard", root / "direct.pt"):
        torch.save({"w": torch.zeros(200_000)}, str(root / "direct.pt"))
except CheckpointError as e:
    out["direct"], out["torch"] = str(e), str(e.__cause__)
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
