"""Real permission failures in tests: a command run so that file modes apply to it.

Root ignores file modes (a ``chmod 0o444`` file stays writable for it) through two capabilities,
``CAP_DAC_OVERRIDE`` and ``CAP_DAC_READ_SEARCH``. Where the tests run as root, the command runs
without them (dropped from its bounding set before ``exec``, so the new program never gains them):
it is then held to the owner's mode bits like any user. Elsewhere the modes already apply.

    (tmp_path / "ro").mkdir(); (tmp_path / "ro").chmod(0o555)
    proc = run_as_user(python("-c", "open('ro/f', 'w')"))      # PermissionError, also as root
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PR_CAPBSET_DROP = 24  # <linux/prctl.h>
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2  # <linux/capability.h>


def _drop_mode_override() -> None:
    """In the child, before ``exec``: drop the capabilities that let root ignore file modes."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")


def run_as_user(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``args`` from the repository root, with file modes enforced (module docstring);
    output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    drop = _drop_mode_override if os.geteuid() == 0 else None
    return subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=drop)  # fmt: skip


def python(*args: str) -> list[str]:
    """``[python, *args]`` with the interpreter running the tests."""
    return [sys.executable, *args]
