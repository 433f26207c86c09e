"""The exported directory: layout, lineage, merged tables, versions and atomic publication."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer.parallel.loop_reference import checkpoint_shards
from trainer.data.contract import load_manifest
from trainer.data.hashing import HASH_CONTRACT
from trainer.exported import ExportError, export_checkpoint, load_exported
from trainer.exported.artifact import list_versions, publish, verify_checksums
from trainer.parallel.reshard import merge_shards

REPO = Path(__file__).resolve().parents[3]


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}  # fmt: skip


def test_layout_spec_lineage_and_checksums(single_run, episodes, tmp_path):
    result = export_checkpoint(single_run, tmp_path / "models")
    v1 = result.path
    assert (result.name, result.version, result.created) == ("click-dlrm", "v1", True)
    assert v1 == tmp_path / "models" / "click-dlrm" / "v1"
    files = set(_tree(v1))
    assert {"model.json", "feature_spec.json", "eval.json", "lineage.json", "CHECKSUMS",
            "dense/graph.pt2", "tables/emb.npy"} <= files  # fmt: skip
    # CHECKSUMS lists every other file with its sha256 (sha256sum format)
    listed = dict(
        reversed(line.split("  ", 1)) for line in (v1 / "CHECKSUMS").read_text().splitlines()
    )
    assert listed == {k: v for k, v in _tree(v1).items() if k != "CHECKSUMS"}
    assert verify_checksums(v1) == listed

    manifest = load_manifest(str(episodes))
    spec = json.loads((v1 / "feature_spec.json").read_text())
    assert [f["name"] for f in spec["features"]] == [f.name for f in manifest.features]
    assert spec["k_support"] == manifest.k_support and spec["task_key"] == manifest.task_key
    assert {k: spec["hash"][k] for k in HASH_CONTRACT} == HASH_CONTRACT
    lineage = json.loads((v1 / "lineage.json").read_text())
    assert lineage["data"]["content_hash"] == manifest.content_hash
    assert lineage["data"]["interval"] == manifest.interval
    assert lineage["checkpoint"]["step"] == 4 and lineage["checkpoint"]["world_size"] == 1
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert lineage["code"]["git_commit"] == (head or None)
    assert (
        lineage["code"]["torch"] == torch.__version__
        and lineage["config"]["model"]["arch"] == "dlrm"
    )
    assert json.loads((v1 / "eval.json").read_text()) == json.loads(
        (single_run / "eval.json").read_text()
    )
    model = json.loads((v1 / "model.json").read_text())
    adaptation = model["adaptation"]  # evaluation's meta settings, every field
    assert {k: adaptation[k] for k in ("mode", "inner_steps", "inner_lr", "adapt")} == {
        "mode": "maml",
        "inner_steps": 2,
        "inner_lr": 0.05,
        "adapt": "dense",
    }
    assert adaptation["learn_inner_lr"] == "off"  # export refuses learned step sizes
    assert not list((tmp_path / "models" / "click-dlrm").glob(".tmp-*"))


@pytest.mark.multiprocess  # sharded_run: a 2-rank gloo job
def test_tables_are_merged_from_every_rank_shard(sharded_run, tmp_path):
    shards = checkpoint_shards(sharded_run)
    merged = merge_shards([s["embeddings"] for s in shards])
    local_rows = [s["embeddings"]["emb.weight"].shape[0] for s in shards]
    assert len(shards) == 2 and sum(local_rows) == merged["emb.weight"].shape[0] > max(local_rows)
    model = load_exported(export_checkpoint(sharded_run, tmp_path / "models").path, mmap=False)
    assert model.lineage["checkpoint"]["world_size"] == 2
    np.testing.assert_array_equal(model.embeddings.emb, merged["emb.weight"].numpy())
    for key, value in shards[0]["model"].items():
        np.testing.assert_array_equal(model.model.state_dict()[key].numpy(), value.numpy())


def test_versions_are_never_overwritten_and_reexport_is_idempotent(single_run, tmp_path):
    root = tmp_path / "models"
    v1 = export_checkpoint(single_run, root)
    before = _tree(v1.path)
    again = export_checkpoint(single_run / "checkpoints", root)
    assert (again.path, again.created) == (v1.path, False)
    step2 = export_checkpoint(single_run / "checkpoints" / "step-00000002", root)
    assert (step2.version, step2.created) == ("v2", True)
    named = export_checkpoint(single_run, root, name="ctr-campaign")
    assert named.path == root / "ctr-campaign" / "v1"
    assert _tree(v1.path) == before
    assert list_versions(root / "click-dlrm") == ["v1", "v2"]
    assert json.loads((step2.path / "lineage.json").read_text())["checkpoint"]["step"] == 2


def test_refuses_another_runs_data_and_bad_names(single_run, tmp_path):
    from tests.trainer.run_helpers import write_episodes

    other = write_episodes(tmp_path / "other", seed=5)
    with pytest.raises(ValueError, match="not the data this checkpoint was trained on"):
        export_checkpoint(single_run, tmp_path / "models", manifest=str(other))
    with pytest.raises(ValueError, match="model name"):
        export_checkpoint(single_run, tmp_path / "models", name="../escape")
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        export_checkpoint(tmp_path / "nothing", tmp_path / "models")
    assert not (tmp_path / "models" / "click-dlrm").exists()


def test_a_failed_export_leaves_no_version(tmp_path):
    model_dir = tmp_path / "models" / "m"

    def write_then_fail(tmp: Path) -> None:
        (tmp / "model.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish(model_dir, write_then_fail)
    assert list_versions(model_dir) == [] and not list(model_dir.glob(".tmp-*"))


@pytest.mark.multiprocess  # a process killed mid-write
def test_a_crash_mid_export_leaves_no_version(single_run, tmp_path):
    """A process killed while writing (os._exit in the middle, no cleanup) leaves only its
    temporary directory, which no reader lists; the next export publishes v1 whole."""
    root = tmp_path / "models"
    code = (
        "import os, sys\n"
        "import trainer.exported.tensors as t\n"
        "real = t.save_graph\n"
        "def crash(path, program):\n"
        "    real(path, program)\n"
        "    os._exit(17)\n"
        "t.save_graph = crash\n"
        "import trainer.exported.export as e\n"
        "e.save_graph = crash\n"
        f"e.export_checkpoint({str(single_run)!r}, {str(root)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, cwd=REPO)
    assert proc.returncode == 17, proc.stderr.decode()[-2000:]
    model_dir = root / "click-dlrm"
    assert list_versions(model_dir) == [] and len(list(model_dir.glob(".tmp-*"))) == 1
    result = export_checkpoint(single_run, root)
    assert result.version == "v1"
    load_exported(result.path)


def test_export_without_graph_scores_with_the_rebuilt_model(single_run, tmp_path):
    result = export_checkpoint(single_run, tmp_path / "models", graph=False)
    assert not (result.path / "dense" / "graph.pt2").exists()
    model = load_exported(result.path)
    assert model.graph is None
    with pytest.raises(ExportError, match="incomplete"):
        os.remove(result.path / "CHECKSUMS")
        load_exported(result.path)
