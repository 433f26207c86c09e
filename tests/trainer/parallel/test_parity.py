"""Oracle 1 of DESIGN.md §5: meta-training at world size 2 and 4 (gloo, CPU, spawned) ends with the
same dense parameters, embedding rows, Adagrad state and Adam state as the single-process run over
the union of the ranks' episodes; the ranks' dense replicas stay bitwise identical; and each step
makes exactly the designed collectives (one AlltoAll each for ids, rows and gradients)."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.parallel.parity import (
    Case,
    assert_close_states,
    global_batch,
    layout,
    reference_run,
    train_step,
)
from tests.trainer.parallel.spawn import run_spawned
from trainer.optim import build_optimizers
from trainer.parallel.apply import build_parallel_model
from trainer.parallel.env import ParallelEnv
from trainer.parallel.reshard import merge_shards

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]
STEPS = 3

# Every architecture under every mode; adapt modes rotate so each mode meets each adapt mode.
WORLD2 = {
    "maml": [
        Case("dlrm", "maml", "dense", clip=0.05),
        Case("deepfm", "maml", "dense+emb"),
        Case("wide_deep", "maml", "head"),
        Case("melu", "maml", "dense+emb", clip=0.05),
    ],
    "fomaml": [
        Case("dlrm", "fomaml", "dense+emb"),
        Case("deepfm", "fomaml", "head", clip=0.05),
        Case("wide_deep", "fomaml", "dense+emb"),
        Case("melu", "fomaml", "dense"),
    ],
    "plain": [
        Case("dlrm", "plain"),
        Case("deepfm", "plain", clip=0.05),
        Case("wide_deep", "plain", sharding="table_wise"),
        Case("melu", "plain"),
    ],
}
WORLD4 = [
    Case("dlrm", "maml", "dense+emb", table_wise=("hour",)),
    Case("deepfm", "fomaml", "dense", sharding="table_wise", clip=0.05),
    Case("wide_deep", "plain"),
]


def train_cases(env: ParallelEnv, cases: list[Case], steps: int) -> dict:
    """Per rank: train every case for ``steps`` steps from the same start as the reference."""
    out = {}
    lay = layout()
    for case in cases:
        model, _ = build_parallel_model(
            case.model_cfg(), lay, env, case.parallel_cfg(), seed=0, dtype=torch.float64
        )
        opt = build_optimizers(case.optim_cfg(), model)
        env.comm_stats(reset=True)
        losses, comm = [], []
        for s in range(steps):
            batch = global_batch(s, env.world_size, env.rank)
            losses.append(train_step(model, opt, batch, case.meta_cfg(), env))
            comm.append(env.comm_stats(reset=True))
        out[case.name] = {
            "dense": model.state_dict(),
            "emb": model.embeddings.state_dict(),
            "adam": opt.state_dict()["dense"]["state"],
            "losses": losses,
            "comm": comm,
        }
    return out


def _check(results: list[dict], cases: list[Case], world_size: int) -> None:
    for case in cases:
        ref = reference_run(case, world_size, STEPS)
        per_rank = [r[case.name] for r in results]
        for r, res in enumerate(per_rank):  # replicas are bitwise identical
            for key, value in res["dense"].items():
                assert torch.equal(value, per_rank[0]["dense"][key]), (case.name, r, key)
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
        # Training moved the rows: the comparison is not between two untouched tables.
        assert full["emb.adagrad_sum"].count_nonzero() > 0, case.name
        for step_comm in per_rank[0]["comm"]:
            for name in ("splits", "ids", "rows", "grads", "dense", "scalar"):
                assert step_comm[f"comm.{name}.calls"] == 1, (case.name, name, step_comm)


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> list[dict]:
    """One spawned job trains every world-size-2 case (one process start-up for all of them)."""
    cases = [c for group in WORLD2.values() for c in group]
    return run_spawned(train_cases, 2, tmp_path_factory.mktemp("w2"), (cases, STEPS))


@pytest.fixture(scope="module")
def world4(tmp_path_factory) -> list[dict]:
    return run_spawned(train_cases, 4, tmp_path_factory.mktemp("w4"), (WORLD4, STEPS))


@pytest.mark.parametrize(
    "case", [c for group in WORLD2.values() for c in group], ids=lambda c: c.name
)
def test_world_size_2_matches_single_process(case: Case, world2: list[dict]) -> None:
    _check(world2, [case], 2)
    first_step = world2[0][case.name]["comm"][0]
    assert first_step["comm.ids.bytes"] > 0 and first_step["comm.rows.bytes"] > 0


@pytest.mark.parametrize("case", WORLD4, ids=lambda c: c.name)
def test_world_size_4_matches_single_process(case: Case, world4: list[dict]) -> None:
    _check(world4, [case], 4)
