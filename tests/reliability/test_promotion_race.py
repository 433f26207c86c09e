"""Promotion under hostile timing and storage: two ``metarec promote`` processes at once, and a
history file that cannot be appended after the pointer swap (issue 18, items 7 and 8).

The exports are small real directories with checksums and an ``eval.json`` (the gate reads only
those without ``--evaluate-on``); the champion is v1 (AUC 0.70), v3 is better (0.80), v4 is better
than v1 but worse than v3 (0.75).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from components.promotion import registry
from tests.reliability.unprivileged import REPO, python, run_as_user
from trainer.exported.artifact import LOCK_FILE, locked, write_checksums

NAME = "click-dlrm"
AUC = {"v1": 0.70, "v3": 0.80, "v4": 0.75}


def _models(root: Path) -> Path:
    """v1, v3 and v4 exported (same data hash), v1 champion."""
    for version, auc in AUC.items():
        d = root / NAME / version
        d.mkdir(parents=True)
        for name, body in (("model.json", {}), ("feature_spec.json", {}),
                           ("lineage.json", {"data": {"content_hash": "same-episodes"}}),
                           ("eval.json", {"splits": {"test_cold": {"after": {"auc": auc}}}})):  # fmt: skip
            (d / name).write_text(json.dumps(body))
        write_checksums(d)
    registry.promote(root, NAME, "v1", reason="setup")
    return root


def _promote(models: Path, version: str) -> list[str]:
    return python("-m", "components.cli", "promote", "--models", str(models), "--name", NAME,
                  "--version", version, "--tolerance", "0")  # fmt: skip


def _lock_waiters(lock: Path) -> set[int]:
    """Pids blocked on ``lock`` (``/proc/locks``: ``N: -> FLOCK ADVISORY WRITE <pid> maj:min:ino``)."""
    ino = os.stat(lock).st_ino
    waiters = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == "->" and fields[6].endswith(f":{ino}"):
            waiters.add(int(fields[5]))
    return waiters


def _race(models: Path) -> dict[str, tuple[int, dict]]:
    """Start a promotion of v3 and one of v4 while this test holds the model's lock, wait until
    both are blocked on it (each has read whatever it reads before locking), then let them go."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    mdir = models / NAME
    with locked(mdir):
        procs = {v: subprocess.Popen(_promote(models, v), cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for v in ("v3", "v4")}  # fmt: skip
        deadline = time.monotonic() + 60  # a hang fails the test instead of blocking it
        while _lock_waiters(mdir / LOCK_FILE) != {p.pid for p in procs.values()}:
            assert all(p.poll() is None for p in procs.values()), "a promotion did not wait"
            assert time.monotonic() < deadline, "the promotions never reached the lock"
            time.sleep(0.02)
    results = {}
    for version, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, 1), err
        results[version] = (proc.returncode, json.loads(out))
    return results


@pytest.mark.multiprocess  # two promotion processes racing for the lock
def test_concurrent_promotions_decide_against_the_champion_they_lock(tmp_path) -> None:
    """Whichever takes the lock first, v3 ends champion and each decision compared the challenger
    with the champion it replaced or kept at that moment (before: the loser of the lock was
    refused, and v4 became champion whenever it locked first, compared with v1)."""
    orders = []
    for trial in range(4):
        models = _models(tmp_path / f"trial-{trial}")
        results = _race(models)
        assert registry.read_champion(models, NAME).version == "v3"
        history = registry.read_history(models, NAME)[1:]  # after the setup's promotion of v1
        for record in history:  # every swap was decided against the champion it replaced
            decision = record["details"]["decision"]
            assert decision["champion"] == AUC[record["from"]]
            assert decision["challenger"] == AUC[record["to"]]
        code4, out4 = results["v4"]
        if [r["to"] for r in history] == ["v3"]:  # v3 locked first: v4 compared with v3
            assert code4 == 1 and out4["decision"]["verdict"] == "worse"
            assert out4["decision"]["champion"] == AUC["v3"] and out4["champion"] == "v3"
            orders.append("v3 first")
        else:  # v4 locked first: better than v1, then v3 better than v4
            assert [(r["from"], r["to"]) for r in history] == [("v1", "v4"), ("v4", "v3")]
            assert code4 == 0 and results["v3"][1]["decision"]["champion"] == AUC["v4"]
            orders.append("v4 first")
        assert results["v3"][0] == 0 and results["v3"][1]["promoted"]
    print(f"lock orders over the trials: {orders}")


def test_a_history_that_cannot_be_appended_does_not_hide_the_promotion(tmp_path) -> None:
    """The history file is read-only for the promoting user: the pointer swap happens, so the
    command says it promoted (exit 0) and why the history lacks the record; readers and the next
    change restore the record from the pointer."""
    models = _models(tmp_path)
    history = models / NAME / registry.HISTORY
    history.chmod(0o444)
    proc = run_as_user(_promote(models, "v3"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["promoted"] and out["champion"] == "v3"
    assert out["warning"].startswith("promoted v3; history not recorded: cannot append to ")
    assert str(history) in out["warning"] and "Permission denied" in out["warning"]
    assert "history not recorded" in proc.stderr
    assert registry.read_champion(models, NAME).version == "v3"  # what is on disk
    assert [r["to"] for r in registry.read_history(models, NAME)] == ["v1", "v3"]
    assert len(history.read_text().splitlines()) == 1  # the file itself lacks v3's record
    history.chmod(0o644)
    proc = run_as_user(_promote(models, "v4"))  # worse than v3: kept, but the file healed
    assert proc.returncode == 1, proc.stderr
    records = [json.loads(line) for line in history.read_text().splitlines()]
    assert [(r["seq"], r["to"]) for r in records] == [(1, "v1"), (2, "v3")]


def test_a_rollback_whose_history_cannot_be_appended_says_it_rolled_back(tmp_path) -> None:
    models = _models(tmp_path)
    registry.promote(models, NAME, "v3")
    (models / NAME / registry.HISTORY).chmod(0o444)
    proc = run_as_user(python("-m", "components.cli", "rollback", "--models", str(models),
                              "--name", NAME, "--expect", "v3"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["champion"] == "v1" and "history not recorded" in out["warning"]
    assert registry.read_history(models, NAME)[-1]["action"] == "rollback"


def test_a_pointer_that_cannot_be_written_leaves_the_champion_and_says_so(tmp_path) -> None:
    """The model folder is read-only for the promoting user: one error line naming the pointer
    file, exit 2, and the champion, history and folder as they were."""
    models = _models(tmp_path)
    mdir = models / NAME
    before = sorted(p.name for p in mdir.iterdir())
    mdir.chmod(0o555)
    try:
        proc = run_as_user(_promote(models, "v3"))
    finally:
        mdir.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("metarec promote: error: promote of 'click-dlrm' ")
    assert f"cannot write the champion pointer {mdir / registry.CHAMPION} (" in line
    assert "Permission denied" in line and "the champion is unchanged (v1)" in line
    assert registry.read_champion(models, NAME).version == "v1"
    assert sorted(p.name for p in mdir.iterdir()) == before
