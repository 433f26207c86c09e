"""Exports of runs with dynamic embedding tables (``parallel.dynamic``): the id maps travel with the
physical tables, and scoring maps ids as the trainer does.

Oracles:
- every id of a dynamic feature's space (admitted, never admitted, evicted, 0) reads, from the
  export, exactly the row the trainer's evaluation reads (``DynamicEmbeddingCollection.read``
  of the checkpoint, warm-started in one process);
- the exported model scores episodes as the trainer evaluated them, before and after
  adaptation, for a one-process run and a 2-rank (sharded) one;
- a delta export (changed rows + the maps' changes) loaded through its chain equals a full export
  of the same checkpoint bit for bit: tables, maps and scores;
- a tampered map is refused: a changed byte (checksum), or a map rewritten with fresh checksums
  that the trainer cannot have written (its content is checked).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer.exported.runs import DYNAMIC, RUN, overrides, reference_scores, train
from trainer.config import load_trainer_config
from trainer.data.batch import EpisodeBatch
from trainer.exported import ExportError, export_checkpoint, load_exported
from trainer.exported.artifact import write_checksums
from trainer.exported.evaluation import score_episodes
from trainer.exported.id_maps import map_files
from trainer.exported.tensors import save_array
from trainer.trainer import Trainer

STEP2, STEP4 = "checkpoints/step-00000002", "checkpoints/step-00000004"
BATCH, LIMIT = RUN["data.batch_episodes"], RUN["eval.max_episodes"]


@pytest.fixture(scope="module")
def dynamic_run(episodes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dynamic") / "run"
    return train(episodes, out, **DYNAMIC, **{"eval.splits": []})  # evaluated by the tests


@pytest.fixture(scope="module")
def dynamic_exports(dynamic_run, tmp_path_factory) -> dict[str, Path]:
    """v1: step 2 in full; v2: step 4 as a delta on v1; step 4 in full in another registry."""
    root = tmp_path_factory.mktemp("dynamic-models")
    v1 = export_checkpoint(dynamic_run / STEP2, root / "chain", delta=True)
    v2 = export_checkpoint(dynamic_run / STEP4, root / "chain", delta=True)
    full = export_checkpoint(dynamic_run / STEP4, root / "full")
    assert (v1.base, v2.base, full.base) == (None, "v1", None)
    return {"v1": v1.path, "v2": v2.path, "full": full.path}


def _every_id_batch(layout) -> EpisodeBatch:
    """One episode whose samples hold every id of every feature (0 included) in their slots."""
    buckets = np.asarray([layout.feature_buckets[f] for f in layout.slot_feature.tolist()])
    n = int(buckets.max())
    local = (np.arange(n)[:, None] + np.arange(layout.sparse_width)[None, :]) % buckets
    ids, inverse = np.unique(local + layout.slot_offsets.numpy(), return_inverse=True)
    K = layout.k_support
    return EpisodeBatch(
        ids=torch.from_numpy(ids),
        inverse=torch.from_numpy(inverse.reshape(1, n, -1)),
        dense=torch.zeros(1, n, layout.dense_width),
        click=torch.zeros(1, n),
        conversion=torch.zeros(1, n),
        n_support=torch.tensor([K]),
        n_query=torch.tensor([n - K]),
        task_ids=torch.zeros(1, dtype=torch.int64),
        episode_mask=torch.ones(1, dtype=torch.bool),
        k_support=K,
    )


def test_every_id_reads_the_trainers_row(dynamic_run, dynamic_exports, episodes, tmp_path):
    """Admitted, never admitted, evicted and padding ids: the export's rows are the trainer's."""
    model = load_exported(dynamic_exports["full"], graph=False)
    warm = {**DYNAMIC, "checkpoint.warm_start": str(dynamic_run / "checkpoints"), "train.steps": 0}
    trainer = Trainer(load_trainer_config("debug", overrides(episodes, tmp_path, **warm))).build()
    try:
        batch = _every_id_batch(model.layout)
        want = trainer.model.embeddings.read(batch).as_dict()
        got = model.embeddings.read(batch).as_dict()
        assert want.keys() == got.keys()
        for key, value in want.items():
            torch.testing.assert_close(got[key], value.to(torch.float32), rtol=0, atol=0)
    finally:
        trainer.close()
    # the case the oracle covers: admitted ids, ids never admitted, ids evicted since step 2
    maps = model.embeddings.id_maps.maps
    old = load_exported(dynamic_exports["v1"], graph=False).embeddings.id_maps.maps
    for fi, buckets in ((0, 101), (1, 53)):
        admitted = set(maps[fi].ids.tolist())
        assert 0 < len(admitted) < buckets - 1
    evicted = {fi: set(old[fi].ids.tolist()) - set(maps[fi].ids.tolist()) for fi in (0, 1)}
    assert any(evicted.values()), "no id was evicted between steps 2 and 4"


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
# 2 ranks: a spawned run (~35 s); distributed = single process for dynamic tables is also checked
# in the default tier (tests/trainer/parallel/test_dynamic_sharded.py)
@pytest.mark.parametrize("world_size", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_exported_dynamic_scores_equal_trainer_evaluation(
    world_size, dynamic_run, episodes, tmp_path
):
    run = dynamic_run
    if world_size == 2:
        run = train(episodes, tmp_path / "run2", world_size=2, **DYNAMIC)
    model = load_exported(export_checkpoint(run, tmp_path / "models").path)
    assert model.graph is not None and model.embeddings.id_maps is not None
    expected, trainer_eval = reference_scores(episodes, run, tmp_path / "ref", "valid", **DYNAMIC)
    got = score_episodes(model, str(episodes), "valid", BATCH, LIMIT)
    np.testing.assert_array_equal(got.labels, expected["labels"])
    assert len(got.labels) == trainer_eval["query_samples"] > 0
    np.testing.assert_allclose(got.before, expected["before"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.after, expected["after"], rtol=1e-6, atol=1e-6)
    assert not np.allclose(got.before, got.after)


def test_a_dynamic_delta_equals_a_full_export_bit_for_bit(dynamic_exports, episodes):
    v2, full = dynamic_exports["v2"], dynamic_exports["full"]
    desc = json.loads((v2 / "model.json").read_text())
    assert desc["delta"]["base"] == "v1"
    assert set(desc["dynamic"]) == {"user", "ad"}
    assert any("evicted" in d for d in desc["dynamic"].values())  # a map written as its change
    a, b = load_exported(v2), load_exported(full, mmap=False)
    np.testing.assert_array_equal(a.embeddings.emb, b.embeddings.emb)
    for fi, m in b.embeddings.id_maps.maps.items():
        np.testing.assert_array_equal(a.embeddings.id_maps.maps[fi].ids, m.ids)
        np.testing.assert_array_equal(a.embeddings.id_maps.maps[fi].rows, m.rows)
    got = score_episodes(a, str(episodes), "valid", BATCH, 16)
    want = score_episodes(b, str(episodes), "valid", BATCH, 16)
    assert len(got.labels) > 0
    np.testing.assert_array_equal(got.before, want.before)
    np.testing.assert_array_equal(got.after, want.after)


def test_a_tampered_map_is_refused(dynamic_exports, tmp_path):
    version = tmp_path / "m" / "v1"
    shutil.copytree(dynamic_exports["v1"], version)
    ids_file, _ = map_files("ad")
    path = version / ids_file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(
        ExportError, match=r"tables/id_map/ad\.ids\.npy does not match its checksum"
    ):
        load_exported(version)

    # rewritten with fresh checksums: two ids swapped (unsorted), refused for its content
    ids = np.load(dynamic_exports["v1"] / ids_file)
    assert len(ids) >= 2
    save_array(path, ids[[1, 0, *range(2, len(ids))]])
    write_checksums(version)
    with pytest.raises(ExportError, match=r"dynamic feature 'ad'.*id map is invalid"):
        load_exported(version)
