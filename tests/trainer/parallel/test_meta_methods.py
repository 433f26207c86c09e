"""Oracle 1 of DESIGN.md §5 for the methods beyond MAML: Meta-SGD (learned inner step sizes),
FiLM (support-set encoder) and MetaEmb (id-embedding generator) meta-training at world size 2 (gloo, CPU, spawned) ends with the same
dense parameters (the step sizes, the encoder and the generator included), embedding rows and Adam state as the
single-process run over the union of the ranks' episodes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tests.trainer.parallel.parity import (
    DTYPE,
    Case,
    assert_close_states,
    global_batch,
    layout,
    train_step,
)
from tests.trainer.parallel.spawn import run_spawned
from trainer.embeddings import PlainEmbeddingCollection
from trainer.meta import MetaConfig
from trainer.models import build_model
from trainer.models.build import LINEAR_ARCHS
from trainer.optim import build_optimizers
from trainer.parallel.apply import build_parallel_model
from trainer.parallel.env import ParallelEnv
from trainer.parallel.reshard import merge_shards

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]
STEPS = 3


@dataclass(frozen=True)
class MethodCase(Case):
    learn_inner_lr: str = "off"

    @property
    def name(self) -> str:
        return f"{super().name}-lr:{self.learn_inner_lr}"

    def meta_cfg(self) -> MetaConfig:
        return MetaConfig(
            mode=self.mode,
            inner_steps=2,
            inner_lr=0.3,
            adapt=self.adapt,
            learn_inner_lr=self.learn_inner_lr,
            encoder_hidden=5,
            metaemb_id="ad" if self.mode == "metaemb" else "",
            metaemb_attributes=("user", "hour") if self.mode == "metaemb" else (),
        )


CASES = [
    MethodCase("deepfm", "maml", "dense+emb", learn_inner_lr="parameter"),
    MethodCase("dlrm", "fomaml", "dense", learn_inner_lr="layer", clip=0.05),
    MethodCase("wide_deep", "film", sharding="table_wise"),
    MethodCase("melu", "film", clip=0.05),
    MethodCase("deepfm", "metaemb"),
]
OWN = {"film": "task_encoder.", "metaemb": "id_generator."}


def train_cases(env: ParallelEnv, cases: list[MethodCase], steps: int) -> dict:
    out = {}
    for case in cases:
        model, _ = build_parallel_model(
            case.model_cfg(), layout(), env, case.parallel_cfg(), seed=0, dtype=DTYPE,
            meta=case.meta_cfg(),
        )  # fmt: skip
        opt = build_optimizers(case.optim_cfg(), model)
        losses = [
            train_step(model, opt, global_batch(s, env.world_size, env.rank), case.meta_cfg(), env)
            for s in range(steps)
        ]
        out[case.name] = {
            "dense": model.state_dict(),
            "emb": model.embeddings.state_dict(),
            "adam": opt.state_dict()["dense"]["state"],
            "losses": losses,
        }
    return out


def reference_run(case: MethodCase, world_size: int) -> dict:
    lay, cfg = layout(), case.model_cfg()
    coll = PlainEmbeddingCollection(
        lay.table_offsets, lay.total_rows, cfg.embedding_dim, lay.slot_feature,
        linear=cfg.arch in LINEAR_ARCHS, init_std=cfg.embedding_init_std, seed=1, dtype=DTYPE,
    )  # fmt: skip
    model = build_model(cfg, lay, embeddings=coll, seed=0, meta=case.meta_cfg())
    opt = build_optimizers(case.optim_cfg(), model)
    losses = [
        train_step(model, opt, global_batch(s, world_size, None), case.meta_cfg(), None)
        for s in range(STEPS)
    ]
    return {
        "dense": model.state_dict(),
        "emb": model.embeddings.state_dict(),
        "adam": opt.state_dict()["dense"]["state"],
        "losses": losses,
        "init": build_model(cfg, lay, embeddings=coll, seed=0, meta=case.meta_cfg()).state_dict(),
    }


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> list[dict]:
    return run_spawned(train_cases, 2, tmp_path_factory.mktemp("methods"), (CASES, STEPS))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_world_size_2_matches_single_process(case: MethodCase, world2: list[dict]) -> None:
    ref = reference_run(case, 2)
    per_rank = [r[case.name] for r in world2]
    for res in per_rank:  # replicas are bitwise identical
        for key, value in res["dense"].items():
            assert torch.equal(value, per_rank[0]["dense"][key]), (case.name, key)
    own = OWN.get(case.mode, "inner_lrs.")
    assert any(k.startswith(own) for k in ref["dense"]), case.name
    own_keys = [k for k in ref["dense"] if k.startswith(own)]
    assert any(not torch.equal(ref["dense"][k], ref["init"][k]) for k in own_keys)  # it trained
    assert_close_states(per_rank[0]["dense"], ref["dense"], f"{case.name} dense")
    full = merge_shards([res["emb"] for res in per_rank])
    assert_close_states(full, ref["emb"], f"{case.name} embeddings")
    for i, state in ref["adam"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                per_rank[0]["adam"][i][key], state[key], rtol=1e-9, atol=1e-12
            )
    summed = [sum(res["losses"][s] for res in per_rank) for s in range(STEPS)]
    assert summed == pytest.approx(ref["losses"], rel=1e-10, abs=1e-12), case.name
