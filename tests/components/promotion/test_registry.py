"""The champion pointer: promotion and rollback semantics, the history, and atomicity under
crashes injected between the steps of a change (a killed process, no cleanup)."""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from components.promotion import registry
from trainer.exported.artifact import write_checksums

NAME = "click-dlrm"
CTX = mp.get_context("spawn")


def make_versions(root: Path, *versions: str) -> None:
    for v in versions:
        d = root / NAME / v
        d.mkdir(parents=True)
        (d / "model.json").write_text("{}")
        write_checksums(d)


def history_file(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / NAME / registry.HISTORY).read_text().splitlines()]


def test_promote_rollback_and_history(tmp_path):
    make_versions(tmp_path, "v1", "v2", "v3")
    assert registry.read_champion(tmp_path, NAME) is None
    p = registry.promote(tmp_path, NAME, "v1", reason="first")
    assert (p.version, p.stack, p.seq, p.previous) == ("v1", ["v1"], 1, None)
    registry.promote(tmp_path, NAME, "v3", details={"verdict": "better"})
    again = registry.promote(tmp_path, NAME, "v3")  # idempotent: no new record
    assert (again.version, again.seq) == ("v3", 2)
    back = registry.rollback(tmp_path, NAME, reason="bad CTR")
    assert (back.version, back.stack, back.seq) == ("v1", ["v1"], 3)
    with pytest.raises(ValueError, match="no previous champion"):
        registry.rollback(tmp_path, NAME)
    registry.promote(tmp_path, NAME, "v2")
    assert registry.read_champion(tmp_path, NAME).stack == ["v1", "v2"]
    records = history_file(tmp_path)
    assert [(r["seq"], r["action"], r["from"], r["to"]) for r in records] == [
        (1, "promote", None, "v1"), (2, "promote", "v1", "v3"), (3, "rollback", "v3", "v1"),
        (4, "promote", "v1", "v2")]  # fmt: skip
    assert records[0]["reason"] == "first" and records[2]["reason"] == "bad CTR"
    assert records[1]["details"] == {"verdict": "better"}
    assert registry.read_history(tmp_path, NAME) == records


def test_only_complete_versions_can_be_promoted(tmp_path):
    make_versions(tmp_path, "v1")
    (tmp_path / NAME / "v2").mkdir()  # no CHECKSUMS: an export that did not finish
    for version in ("v2", "v9"):
        with pytest.raises(FileNotFoundError, match="not a complete export"):
            registry.promote(tmp_path, NAME, version)
    with pytest.raises(ValueError, match="no previous champion"):
        registry.rollback(tmp_path, NAME)
    assert not (tmp_path / NAME / registry.CHAMPION).exists()


def _crash_during(root: str, action: str, version: str, stage: str) -> None:
    def fault(at: str) -> None:
        if at == stage:
            os._exit(17)  # a killed process: no cleanup, no flush of anything pending

    if action == "promote":
        registry.promote(root, NAME, version, fault=fault)
    else:
        registry.rollback(root, NAME, fault=fault)


def _run(target, *args) -> int:
    proc = CTX.Process(target=target, args=args)
    proc.start()
    proc.join(60)
    return proc.exitcode


@pytest.mark.multiprocess  # a process killed mid-write
@pytest.mark.parametrize("stage", ["pointer_written", "pointer_swapped", "history_appended"])
@pytest.mark.parametrize("action", ["promote", "rollback"])
def test_a_crash_leaves_the_old_or_the_new_pointer_and_a_consistent_history(
    stage, action, tmp_path
):
    make_versions(tmp_path, "v1", "v2", "v3")
    registry.promote(tmp_path, NAME, "v1")
    registry.promote(tmp_path, NAME, "v2")
    old = registry.read_champion(tmp_path, NAME)
    assert _run(_crash_during, str(tmp_path), action, "v3", stage) == 17
    now = registry.read_champion(tmp_path, NAME)  # always present and whole
    new_version = "v3" if action == "promote" else "v1"
    if stage == "pointer_written":
        assert (now.version, now.seq) == (old.version, old.seq)
        assert list((tmp_path / NAME).glob("CHAMPION.tmp-*"))  # the unswapped new pointer
    else:
        assert (now.version, now.seq) == (new_version, old.seq + 1)
    history = registry.read_history(tmp_path, NAME)
    assert [r["seq"] for r in history] == list(range(1, now.seq + 1))
    assert history[-1]["to"] == now.version
    # the next change repairs the file: the record a crash kept out is written, temp files go
    make_versions(tmp_path, "v4")
    registry.promote(tmp_path, NAME, "v4")
    records = history_file(tmp_path)
    assert [r["seq"] for r in records] == list(range(1, now.seq + 2))
    assert [r["to"] for r in records][-2:] == [now.version, "v4"]
    assert not list((tmp_path / NAME).glob("CHAMPION.tmp-*"))


def test_a_line_cut_by_a_crash_is_repaired(tmp_path):
    make_versions(tmp_path, "v1", "v2")
    registry.promote(tmp_path, NAME, "v1")
    with open(tmp_path / NAME / registry.HISTORY, "ab") as f:
        f.write(b'{"seq": 2, "acti')  # a crash in the middle of an append
    assert [r["seq"] for r in registry.read_history(tmp_path, NAME)] == [1]
    registry.promote(tmp_path, NAME, "v2")
    assert [r["seq"] for r in history_file(tmp_path)] == [1, 2]


def _churn(root: str, rounds: int) -> None:
    for _ in range(rounds):
        registry.promote(root, NAME, "v2")
        # the other writer may have rolled back first: nothing left to roll back then
        with contextlib.suppress(ValueError):
            registry.rollback(root, NAME)


@pytest.mark.multiprocess  # two writer processes: the lock between processes
def test_readers_never_see_a_missing_or_partial_pointer(tmp_path):
    """Two writers promote and roll back concurrently (the lock serialises them) while this
    process keeps reading the pointer: every read is a whole pointer, and the history of all
    changes is complete and in order."""
    make_versions(tmp_path, "v1", "v2")
    registry.promote(tmp_path, NAME, "v1")
    writers = [CTX.Process(target=_churn, args=(str(tmp_path), 60)) for _ in range(2)]
    for w in writers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        pointer = registry.read_champion(tmp_path, NAME)
        assert pointer is not None and pointer.version in ("v1", "v2")
        assert pointer.stack in (["v1"], ["v1", "v2"])
        reads += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert reads > 10
    records = history_file(tmp_path)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert registry.read_champion(tmp_path, NAME).seq == len(records)
    for a, b in itertools.pairwise(records):
        assert b["from"] == a["to"]


def test_a_pointer_naming_a_path_instead_of_a_version_is_refused(tmp_path):
    """A hand-edited CHAMPION that names ``../other/v1`` must not lead readers out of the model."""
    make_versions(tmp_path, "v1")
    registry.promote(tmp_path, NAME, "v1")
    pointer = tmp_path / NAME / registry.CHAMPION
    d = json.loads(pointer.read_text())
    pointer.write_text(json.dumps({**d, "version": "../other/v1", "stack": ["../other/v1"]}))
    with pytest.raises(ValueError, match=r"not a valid champion pointer.*v<N>"):
        registry.read_champion(tmp_path, NAME)


def test_a_change_is_refused_when_the_champion_is_not_the_expected_one(tmp_path):
    make_versions(tmp_path, "v1", "v2", "v3")
    with pytest.raises(registry.ChampionChanged, match="champion is none, expected v1"):
        registry.promote(tmp_path, NAME, "v2", expect="v1")
    registry.promote(tmp_path, NAME, "v1", expect=None)
    registry.promote(tmp_path, NAME, "v2", expect="v1")
    # A promotion decided against v1 arrives after v2 took over: refused, v2 stays.
    with pytest.raises(registry.ChampionChanged, match="champion is v2, expected v1"):
        registry.promote(tmp_path, NAME, "v3", expect="v1")
    with pytest.raises(registry.ChampionChanged, match="champion is v2, expected v3"):
        registry.rollback(tmp_path, NAME, expect="v3")
    assert registry.read_champion(tmp_path, NAME).stack == ["v1", "v2"]
    assert [r["to"] for r in history_file(tmp_path)] == ["v1", "v2"]


class _Crash(Exception):
    pass


def _crash_at(stage: str):
    def fault(at: str) -> None:
        if at == stage:
            raise _Crash(at)

    return fault


@pytest.mark.parametrize("stage", ["pointer_swapped", "history_appended"])
def test_a_retried_rollback_after_its_swap_rolls_back_once(stage, tmp_path):
    """The task's first try swaps the pointer and dies before it can reply; the retry (same key,
    same expected champion) finds its change recorded and returns it."""
    make_versions(tmp_path, "v1", "v2", "v3")
    for v in ("v1", "v2", "v3"):
        registry.promote(tmp_path, NAME, v)
    with pytest.raises(_Crash):
        registry.rollback(tmp_path, NAME, expect="v3", key="run-7", fault=_crash_at(stage))
    retry = registry.rollback(tmp_path, NAME, expect="v3", key="run-7")
    assert (retry.version, retry.stack) == ("v2", ["v1", "v2"])
    assert retry.replayed is not None
    assert (retry.replayed["from"], retry.replayed["to"], retry.replayed["key"]) == (
        "v3",
        "v2",
        "run-7",
    )
    assert [r["action"] for r in history_file(tmp_path)] == ["promote"] * 3 + ["rollback"]
    # Another run (another key) with an up-to-date expectation does roll back further.
    assert registry.rollback(tmp_path, NAME, expect="v2", key="run-8").version == "v1"
    assert registry.rollback(tmp_path, NAME, expect="v2", key="run-8").replayed["to"] == "v1"
