"""Oracle 1 of DESIGN.md §5 for ESMM (``model.task = "esmm"``): MAML, FOMAML and plain training of
the two-tower model at world size 2 (gloo, CPU, spawned, sharded rows) end with the same dense
parameters (both towers), embedding rows and Adam state as the single-process run over the union
of the ranks' episodes. The batches carry unknown conversions (-1), which the CTCVR loss skips."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from tests.trainer.parallel.parity import (
    Case,
    assert_close_states,
    layout,
    reference_model,
    train_step,
)
from tests.trainer.parallel.parity import global_batch as parity_batch
from tests.trainer.parallel.spawn import run_spawned
from trainer.data.batch import EpisodeBatch
from trainer.models import ModelConfig
from trainer.optim import build_optimizers
from trainer.parallel.apply import build_parallel_model
from trainer.parallel.env import ParallelEnv
from trainer.parallel.reshard import merge_shards

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]
STEPS = 2  # step 1: the upper rank has only padding episodes


@dataclass(frozen=True)
class ESMMCase(Case):
    def model_cfg(self) -> ModelConfig:
        return dataclasses.replace(super().model_cfg(), task="esmm", head_layers=1)


CASES = [
    ESMMCase("deepfm", "maml", "head"),
    ESMMCase("dlrm", "fomaml", "dense+emb", sharding="table_wise"),
    ESMMCase("wide_deep", "plain", clip=0.05),
]


def esmm_batch(step: int, world_size: int, rank: int | None) -> EpisodeBatch:
    """The parity batch with the conversion unknown (-1) on a quarter of the samples, chosen by
    task id and position (the same samples in a rank's batch and in the union)."""
    batch = parity_batch(step, world_size, rank)
    n = batch.conversion.shape[1]
    unknown = (batch.task_ids[:, None] + torch.arange(n)[None]) % 4 == 0
    batch.conversion = torch.where(unknown, -1.0, batch.conversion).to(batch.conversion.dtype)
    return batch


def train_cases(env: ParallelEnv, cases: list[ESMMCase], steps: int) -> dict:
    out = {}
    for case in cases:
        model, _ = build_parallel_model(
            case.model_cfg(), layout(), env, case.parallel_cfg(), seed=0, dtype=torch.float64
        )
        opt = build_optimizers(case.optim_cfg(), model)
        losses = [
            train_step(model, opt, esmm_batch(s, env.world_size, env.rank), case.meta_cfg(), env)
            for s in range(steps)
        ]
        out[case.name] = {
            "dense": model.state_dict(),
            "emb": model.embeddings.state_dict(),
            "adam": opt.state_dict()["dense"]["state"],
            "losses": losses,
        }
    return out


def reference_run(case: ESMMCase) -> dict:
    """The single-process run on the union batches."""
    model = reference_model(case)
    opt = build_optimizers(case.optim_cfg(), model)
    losses = [
        train_step(model, opt, esmm_batch(s, 2, None), case.meta_cfg(), None) for s in range(STEPS)
    ]
    return {
        "dense": model.state_dict(),
        "emb": model.embeddings.state_dict(),
        "adam": opt.state_dict()["dense"]["state"],
        "losses": losses,
    }


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> list[dict]:
    return run_spawned(train_cases, 2, tmp_path_factory.mktemp("esmm"), (CASES, STEPS))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_esmm_world_size_2_matches_single_process(case: ESMMCase, world2: list[dict]) -> None:
    ref = reference_run(case)
    assert any(k.startswith("dense_half.cvr.") for k in ref["dense"])
    per_rank = [r[case.name] for r in world2]
    for res in per_rank:  # replicas are bitwise identical
        for key, value in res["dense"].items():
            assert torch.equal(value, per_rank[0]["dense"][key]), (case.name, key)
    assert_close_states(per_rank[0]["dense"], ref["dense"], f"{case.name} dense")
    assert_close_states(merge_shards([r["emb"] for r in per_rank]), ref["emb"], f"{case.name} emb")
    for i, state in ref["adam"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                per_rank[0]["adam"][i][key], state[key], rtol=1e-9, atol=1e-12
            )
    summed = [sum(res["losses"][s] for res in per_rank) for s in range(STEPS)]
    assert summed == pytest.approx(ref["losses"], rel=1e-10, abs=1e-12), case.name
