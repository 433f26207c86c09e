"""Delta exports (rows changed since the base version + dense parameters) and the temp folders of
killed exports.

Oracle: a delta export loaded through its chain equals a full export of the same checkpoint bit
for bit: the same tables, the same dense parameters, the same scores before and after adaptation.
A broken link (missing, tampered, replaced base) is refused before anything is returned.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.exported.runs import RUN
from trainer.exported import ExportError, export_checkpoint, load_exported
from trainer.exported import delta as deltas
from trainer.exported.artifact import (
    FORMAT,
    FORMAT_VERSION,
    list_versions,
    publish,
    write_json,
)
from trainer.exported.evaluation import score_episodes
from trainer.exported.tensors import save_array

REPO = Path(__file__).resolve().parents[3]
STEP2, STEP4 = "checkpoints/step-00000002", "checkpoints/step-00000004"


@pytest.fixture(scope="module")
def exports(single_run, tmp_path_factory) -> dict[str, Path]:
    """v1: step 2 in full; v2: step 4 as a delta on v1; and step 4 in full in another registry."""
    root = tmp_path_factory.mktemp("delta")
    v1 = export_checkpoint(single_run / STEP2, root / "chain", delta=True)
    v2 = export_checkpoint(single_run / STEP4, root / "chain", delta=True)
    full = export_checkpoint(single_run / STEP4, root / "full")
    assert (v1.base, v2.base, full.base) == (None, "v1", None)
    return {"v1": v1.path, "v2": v2.path, "full": full.path}


def test_delta_scores_equal_a_full_export_bit_for_bit(exports, episodes):
    v2, full = exports["v2"], exports["full"]
    desc = json.loads((v2 / "model.json").read_text())
    assert desc["delta"]["base"] == "v1" and desc["delta"]["depth"] == 1
    rows = np.load(v2 / "tables" / "rows.npy")
    emb_full = np.load(full / "tables" / "emb.npy")
    assert 0 < len(rows) < len(emb_full)  # four steps touch some rows, not all

    a, b = load_exported(v2), load_exported(full, mmap=False)
    assert a.version == "v2" and a.lineage["checkpoint"]["step"] == 4
    np.testing.assert_array_equal(a.embeddings.emb, emb_full)
    for key, value in b.model.state_dict().items():
        np.testing.assert_array_equal(a.model.state_dict()[key].numpy(), value.numpy())
    got = score_episodes(a, str(episodes), "valid", RUN["data.batch_episodes"], 16)
    want = score_episodes(b, str(episodes), "valid", RUN["data.batch_episodes"], 16)
    assert len(got.labels) > 0
    np.testing.assert_array_equal(got.before, want.before)
    np.testing.assert_array_equal(got.after, want.after)
    # and the chain's tables differ from the base's where the delta says, nowhere else
    base = np.load(exports["v1"] / "tables" / "emb.npy")
    differs = np.flatnonzero(np.any(base != emb_full, axis=1))
    np.testing.assert_array_equal(differs, rows)


def test_a_broken_chain_is_refused(exports, tmp_path):
    chain = tmp_path / "chain"
    shutil.copytree(exports["v1"].parent, chain)
    v1, v2 = chain / "v1", chain / "v2"

    emb = v1 / "tables" / "emb.npy"
    data = bytearray(emb.read_bytes())
    data[-1] ^= 0x01
    emb.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"v1: tables/emb\.npy does not match its checksum"):
        load_exported(v2)

    shutil.rmtree(v1)  # another, intact v1 in its place: not the base the delta was written on
    shutil.copytree(exports["full"], v1)
    with pytest.raises(ExportError, match="v2 is a delta on another v1 than the one there"):
        load_exported(v2)

    shutil.rmtree(v1)
    with pytest.raises(ExportError, match="v2 is a delta on v1, which is missing"):
        load_exported(v2)

    shutil.copytree(exports["v1"], v1)
    load_exported(v2)  # restored
    rows = v2 / "tables" / "rows.npy"
    rows.write_bytes(rows.read_bytes()[:-8] + np.int64(0).tobytes())
    with pytest.raises(ExportError, match=r"v2: tables/rows\.npy does not match its checksum"):
        load_exported(v2)


def _version(model_dir: Path, emb: np.ndarray, base: str | None = None) -> Path:
    """A minimal version holding only tables (what the chain reads), full or a delta on ``base``."""
    desc = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": {"arch": "x"},
            "tables": {"emb": "tables/emb.npy"}}  # fmt: skip
    plan = None
    if base is not None:
        plan = deltas.plan_delta(model_dir, {"emb": emb}, desc, {"features": []})
        assert plan is not None and plan.base.name == base

    def write(tmp: Path) -> None:
        index: dict = {}
        if plan is None:
            index["tables/emb.npy"] = save_array(tmp / "tables/emb.npy", emb)
            entry = None
        else:
            entry = deltas.write_delta(tmp, plan, {"emb": emb}, index)
        write_json(tmp / "model.json", {**desc, "tensors": index, "delta": entry})
        write_json(tmp / "feature_spec.json", {"features": []})
        write_json(tmp / "lineage.json", {})

    return publish(model_dir, write)


def test_a_chain_applies_its_deltas_in_order_and_is_bounded(tmp_path, monkeypatch):
    model_dir = tmp_path / "m"
    gen = np.random.default_rng(0)
    states = [gen.standard_normal((50, 4)).astype(np.float32)]
    for rows in ([3, 7], [7, 40], [0]):  # row 7 changes twice: the newer value must win
        nxt = states[-1].copy()
        nxt[rows] = gen.standard_normal((len(rows), 4)).astype(np.float32)
        states.append(nxt)
    states.append(states[-1].copy())
    states[-1][9, 0] = -0.0 if states[-1][9, 0] == 0 else -states[-1][9, 0]
    _version(model_dir, states[0])
    for n, state in enumerate(states[1:], 1):
        path = _version(model_dir, state, base=f"v{n}")
        links = deltas.chain(path)
        assert [link.path.name for link in links] == [f"v{i}" for i in range(1, n + 2)]
        got = deltas.materialize(links, mmap=True)["emb"]
        assert got.tobytes() == state.tobytes()
    assert len(np.load(model_dir / "v5" / "tables" / "rows.npy")) == 1
    assert np.load(model_dir / "v3" / "tables" / "rows.npy").tolist() == [7, 40]
    assert not np.shares_memory(got, np.load(model_dir / "v1" / "tables" / "emb.npy", "r"))

    monkeypatch.setattr(deltas, "FULL_EVERY", 5)  # the chain is 5 long: the next one is full
    assert deltas.plan_delta(model_dir, {"emb": states[-1]}, {"model": {"arch": "x"},
                             "tables": {"emb": "tables/emb.npy"}}, {"features": []}) is None  # fmt: skip
    monkeypatch.setattr(deltas, "FULL_EVERY", 24)
    hour = {"features": [], "interval": "2026-11-02T10"}  # the next interval: still a delta
    assert deltas.plan_delta(model_dir, {"emb": states[-1]}, {"model": {"arch": "x"},
                             "tables": {"emb": "tables/emb.npy"}}, hour) is not None  # fmt: skip
    other = {"model": {"arch": "y"}, "tables": {"emb": "tables/emb.npy"}}
    assert deltas.plan_delta(model_dir, {"emb": states[-1]}, other, {"features": []}) is None


_HOLD = """
import sys
from pathlib import Path
from trainer.exported.artifact import publish

def write(tmp):
    print(tmp.name, flush=True)
    sys.stdin.readline()  # hold the export open until told
    (tmp / "model.json").write_text("{}")

publish(Path(sys.argv[1]), write)
"""


def _writer(model_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(model_dir)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    name = proc.stdout.readline().strip()
    assert name.startswith(".tmp-"), name
    return proc, name


@pytest.mark.multiprocess  # a writer process killed mid-export
def test_the_temp_folder_of_a_killed_export_is_removed_by_the_next_one(tmp_path):
    model_dir = tmp_path / "m"
    killed, dead = _writer(model_dir)
    live, alive = _writer(model_dir)
    killed.kill()  # SIGKILL: no cleanup ran, its folder stays
    killed.wait()
    assert (model_dir / dead).is_dir()
    planted = model_dir / ".tmp-0123456789abcdef"  # an older export's, no lock held
    (planted / "tables").mkdir(parents=True)

    publish(model_dir, lambda tmp: (tmp / "model.json").write_text("{}"))
    assert not (model_dir / dead).exists() and not planted.exists()
    assert (model_dir / alive).is_dir()  # a live export's folder is left alone
    live.communicate("go\n", timeout=60)
    assert live.returncode == 0
    assert list_versions(model_dir) == ["v1", "v2"]
    assert not list(model_dir.glob(".tmp-*"))


def test_the_export_command_writes_a_delta_on_request(single_run, tmp_path, capsys):
    from components.cli import main

    root = str(tmp_path / "models")
    outputs = []
    for step, extra in ((STEP2, []), (STEP4, ["--delta"])):
        assert main(["export", "--checkpoint", str(single_run / step), "--out", root, *extra]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert [(o["version"], o["base"]) for o in outputs] == [("v1", None), ("v2", "v1")]
    assert load_exported(outputs[1]["path"]).lineage["checkpoint"]["step"] == 4
