"""DES (oracle 3 of DESIGN.md §5): at world size 1, 2 and 4 (gloo, CPU, spawned) the forward
logits, the losses and ALL gradients (dense parameters after the all-reduce, W1 included; every
non-null embedding and linear row at its owner) equal the unsubstituted single-process computation
over the union of the ranks' episodes, for DeepFM, Wide&Deep and MeLU in plain, MAML and FOMAML
training, and for ESMM's two towers (two first layers: one partial each); DLRM keeps the row
exchange (nothing applies). Plus, without processes: which operators
apply to which model, the adapt rules, and the byte model that ``auto`` decides on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from tests.trainer.parallel.parity import (
    DTYPE,
    EPISODES_PER_RANK,
    Case,
    assert_close_states,
    global_batch,
    layout,
    reference_model,
)
from tests.trainer.parallel.spawn import run_spawned
from trainer.meta import MetaConfig, outer_loss
from trainer.models import ModelConfig, build_model
from trainer.optim import build_optimizers
from trainer.parallel import des_plan
from trainer.parallel.apply import build_des, build_parallel_model
from trainer.parallel.comm import Collectives
from trainer.parallel.env import ParallelEnv
from trainer.parallel.plan import ParallelConfig, build_sharding_plan
from trainer.parallel.reshard import merge_shards
from trainer.parallel.sharded_embeddings import ShardedEmbeddingCollection

pytestmark = pytest.mark.timeout(400)
STEPS = 3
TOL = {"rtol": 1e-9, "atol": 1e-11}
DES_CALLS = ("des.header", "des.request", "des.forward", "des.backward")


@dataclass(frozen=True)
class DESCase:
    arch: str
    mode: str
    des: str | tuple[str, ...] = "on"
    table_wise: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        des = self.des if isinstance(self.des, str) else "+".join(self.des)
        tw = f"-tw:{','.join(self.table_wise)}" if self.table_wise else ""
        return f"{self.arch}-{self.mode}-des:{des}{tw}"

    @property
    def ref(self) -> Case:  # the parity oracle's model, seeds and optimizers
        return Case(self.arch, self.mode, "head", table_wise=self.table_wise)

    @property
    def expect_des(self) -> bool:
        return self.arch != "dlrm"


@dataclass(frozen=True)
class ESMMRef(Case):
    """The parity oracle's ESMM model (``model.task = "esmm"``: a CTR and a CVR tower)."""

    def model_cfg(self) -> ModelConfig:
        return dataclasses.replace(super().model_cfg(), task="esmm")


@dataclass(frozen=True)
class ESMMDESCase(DESCase):
    """DES on ESMM: every operator, the first layer once per tower."""

    @property
    def name(self) -> str:
        return f"esmm-{super().name}"

    @property
    def ref(self) -> Case:
        return ESMMRef(self.arch, self.mode, "head", table_wise=self.table_wise)


WORLD2 = [
    DESCase(arch, mode)
    for arch in ("deepfm", "wide_deep", "melu")
    for mode in ("plain", "maml", "fomaml")
] + [
    DESCase("dlrm", "maml", "auto"),
    DESCase("dlrm", "plain", "auto"),
    DESCase("deepfm", "fomaml", table_wise=("tags",)),  # FM of a multi-slot field on one owner
    DESCase("deepfm", "maml", ("lr",)),  # mixed: the embedding rows still travel
    DESCase("deepfm", "plain", ("fm", "first")),  # mixed: the linear rows still travel
    ESMMDESCase("deepfm", "maml"),  # lr + fm shared by the towers, one h1 per tower
    ESMMDESCase("melu", "fomaml", ("first",)),
    ESMMDESCase("wide_deep", "plain"),
]
WORLD4 = [
    DESCase("deepfm", "maml"),
    DESCase("wide_deep", "plain", table_wise=("hour",)),
    DESCase("melu", "fomaml"),
    DESCase("dlrm", "fomaml", "auto"),
]
WORLD1 = [DESCase("deepfm", "maml"), DESCase("wide_deep", "fomaml"), DESCase("melu", "plain")]


def rank_job(env: ParallelEnv, cases: list[DESCase]) -> dict:
    """Per rank: DES training from the reference's start; record logits, losses, gradients."""
    out = {}
    for case in cases:
        meta = case.ref.meta_cfg()
        pcfg = ParallelConfig(
            table_wise=case.table_wise, des=case.des if case.des == "auto" else "on"
        )
        model, plan = build_parallel_model(
            case.ref.model_cfg(), layout(), env, pcfg, seed=0, dtype=DTYPE, meta=meta
        )
        coll = model.embeddings
        if isinstance(case.des, tuple):  # an explicit subset (what auto may pick)
            coll.use_des(build_des(model, coll, case.des, meta))
        opt = build_optimizers(case.ref.optim_cfg(), model)
        owned = plan.owned_ids(env.rank)
        rec: dict = {"logits": [], "losses": [], "dense": [], "rows": [], "comm": []}
        for s in range(STEPS):
            batch = global_batch(s, env.world_size, env.rank)
            env.comm_stats(reset=True)
            sparse = coll.lookup(batch)
            with torch.no_grad():
                rec["logits"].append(model(sparse, batch.dense.to(DTYPE)))
            loss, _ = outer_loss(
                model, sparse, batch, meta, env.normalizer(batch.episode_mask.sum())
            )
            loss.backward()  # the DES return trip included
            env.reduce_dense_grads(model.parameters())
            rec["dense"].append({n: _grad(p) for n, p in model.dense_half.named_parameters()})
            got = coll.des.owner_gradients()
            rec["rows"].append(None if got is None else (owned[got[0]], got[1].clone()))
            opt.step()
            rec["losses"].append(float(loss.detach()))
            rec["comm"].append(env.comm_stats(reset=True))
        rec["emb"] = coll.state_dict()
        rec["dense_state"] = model.state_dict()
        rec["ops"] = coll.des.ops
        out[case.name] = rec
    return out


def _grad(p: torch.Tensor) -> torch.Tensor | None:
    return None if p.grad is None else p.grad.clone()


def reference(case: DESCase, world_size: int) -> dict:
    """The unsubstituted single-process run over the union of the ranks' episodes."""
    model = reference_model(case.ref)
    opt = build_optimizers(case.ref.optim_cfg(), model)
    meta = case.ref.meta_cfg()
    rec: dict = {"logits": [], "losses": [], "dense": [], "rows": []}
    for s in range(STEPS):
        batch = global_batch(s, world_size, None)
        sparse = model.embeddings.lookup(batch)
        rows = model.embeddings.rows
        with torch.no_grad():
            rec["logits"].append(model(sparse, batch.dense.to(DTYPE)))
        loss, _ = outer_loss(model, sparse, batch, meta)
        loss.backward()
        rec["dense"].append({n: _grad(p) for n, p in model.dense_half.named_parameters()})
        g = [rows.emb.grad] + ([rows.linear.grad] if rows.linear is not None else [])
        trainable = ~model.embeddings.is_null(batch.ids)
        rec["rows"].append((batch.ids.clone(), torch.cat(g, 1).clone(), trainable))
        opt.step()
        rec["losses"].append(float(loss.detach()))
    rec["emb"] = {k: v.clone() for k, v in model.embeddings.state_dict().items()}
    rec["dense_state"] = model.state_dict()
    return rec


def _check(results: list[dict], case: DESCase, world_size: int) -> None:
    ref = reference(case, world_size)
    per_rank = [r[case.name] for r in results]
    T = EPISODES_PER_RANK
    assert all(r["ops"] == per_rank[0]["ops"] for r in per_rank)
    assert bool(per_rank[0]["ops"]) == case.expect_des, per_rank[0]["ops"]
    for s in range(STEPS):
        for r, res in enumerate(per_rank):  # forward outputs of each rank's episodes
            expected = ref["logits"][s][r * T : (r + 1) * T]
            torch.testing.assert_close(res["logits"][s], expected, **TOL)
        total = sum(res["losses"][s] for res in per_rank)
        assert total == pytest.approx(ref["losses"][s], rel=1e-10, abs=1e-12)
        for name, g in ref["dense"][s].items():  # every dense gradient, W1 included
            mine = per_rank[0]["dense"][s][name]
            assert (mine is None) == (g is None), (case.name, s, name)
            if g is not None:
                torch.testing.assert_close(mine, g, **TOL, msg=f"{case.name} step {s} {name}")
        if case.expect_des:
            _check_row_grads([res["rows"][s] for res in per_rank], ref["rows"][s], case.name)
        for res in per_rank:
            calls = res["comm"][s]
            des_used = all(calls.get(f"comm.{n}.calls") == 1 for n in DES_CALLS)
            assert des_used == case.expect_des and ("comm.rows.calls" in calls) != des_used
    full = merge_shards([res["emb"] for res in per_rank])
    assert_close_states(full, ref["emb"], f"{case.name} embeddings")
    assert_close_states(per_rank[0]["dense_state"], ref["dense_state"], f"{case.name} dense")
    assert full["emb.adagrad_sum"].count_nonzero() > 0


def _check_row_grads(owners: list, ref: tuple, name: str) -> None:
    """Every non-null row's gradient at its owner equals the reference's row gradient."""
    ids, grads, trainable = ref
    expected = {int(i): g for i, g, t in zip(ids, grads, trainable, strict=True) if t}
    seen = set()
    null = set(layout().table_offsets)
    for got_ids, got in owners:
        for i, g in zip(got_ids.tolist(), got, strict=True):
            if i in null:
                continue
            torch.testing.assert_close(g, expected[i], **TOL, msg=f"{name} row {i}")
            seen.add(i)
    assert seen == set(expected), name


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> list[dict]:
    return run_spawned(rank_job, 2, tmp_path_factory.mktemp("des2"), (WORLD2,), timeout_s=60)


@pytest.fixture(scope="module")
def world4(tmp_path_factory) -> list[dict]:
    return run_spawned(rank_job, 4, tmp_path_factory.mktemp("des4"), (WORLD4,), timeout_s=60)


@pytest.fixture(scope="module")
def world1(tmp_path_factory) -> list[dict]:
    return run_spawned(rank_job, 1, tmp_path_factory.mktemp("des1"), (WORLD1,), timeout_s=60)


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", WORLD2, ids=lambda c: c.name)
def test_des_equals_the_unsubstituted_computation_at_world_size_2(case, world2) -> None:
    _check(world2, case, 2)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("case", WORLD4, ids=lambda c: c.name)
def test_des_equals_the_unsubstituted_computation_at_world_size_4(case, world4) -> None:
    _check(world4, case, 4)


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", WORLD1, ids=lambda c: c.name)
def test_des_equals_the_unsubstituted_computation_at_world_size_1(case, world1) -> None:
    _check(world1, case, 1)


# ----------------------------------------------------------------- no processes
def _des(
    arch: str,
    mode: str = "maml",
    adapt: str = "head",
    des="on",
    head_layers: int = 2,
    esmm: bool = False,
):
    cfg = ModelConfig(
        arch=arch,
        embedding_dim=4,
        mlp=(8, 4),
        bottom_mlp=(4,),
        head_layers=head_layers,
        task="esmm" if esmm else "ctr",
    )
    plan = build_sharding_plan(layout(), 1, cfg, ParallelConfig())
    coll = ShardedEmbeddingCollection(plan, Collectives(0, 1), layout().slot_feature)
    model = build_model(cfg, layout(), embeddings=coll)
    return build_des(model, coll, des, MetaConfig(mode=mode, adapt=adapt))


def test_operators_that_apply_to_each_model() -> None:
    assert _des("deepfm").ops == ("lr", "fm", "first")
    assert _des("wide_deep").ops == ("lr", "first")
    assert _des("melu").ops == ("first",)
    assert _des("deepfm").spec.first_layers == ("deep.first.from_fields",)
    assert _des("melu").spec.first_layers == ("decision.first.from_fields",)
    assert _des("deepfm").spec.split_fields == (3,)  # "tags": 3 slots, row-wise
    with pytest.raises(ValueError, match="dlrm: no operator is a sum over fields"):
        _des("dlrm")
    assert _des("dlrm", des="auto").allowed == ()


def test_esmm_substitutes_the_first_layer_of_each_tower() -> None:
    des = _des("deepfm", esmm=True)
    assert des.ops == ("lr", "fm", "first")
    assert des.spec.first_layers == ("ctr.deep.first.from_fields", "cvr.deep.first.from_fields")
    assert des.spec.widths(("first",)) == {"h1": 8 + 8}
    assert len(des.w1) == 2 and des.w1[0] is not des.w1[1]
    with pytest.raises(ValueError, match=r"first layer \(ctr.deep.first.from_fields, cvr.deep"):
        _des("deepfm", adapt="dense", esmm=True)
    with pytest.raises(ValueError, match="dlrm: no operator is a sum over fields"):
        _des("dlrm", esmm=True)


def test_substituted_operators_adapt_only_in_the_outer_loop() -> None:
    with pytest.raises(ValueError, match=r"adapts the first layer \(deep.first.from_fields\)"):
        _des("deepfm", adapt="dense")
    with pytest.raises(ValueError, match="adapts the first layer"):
        _des("melu", head_layers=3)  # MeLU's classic setting adapts every decision layer
    with pytest.raises(ValueError, match="dense\\+emb"):
        _des("wide_deep", adapt="dense+emb")
    assert _des("deepfm", mode="plain", adapt="dense").ops == ("lr", "fm", "first")
    auto = _des("deepfm", adapt="dense", des="auto")
    assert auto.allowed == ("lr", "fm") and "first layer" in auto.excluded[0]
    with pytest.raises(ValueError, match="cannot substitute"):
        _des("deepfm", adapt="dense", des=("first",))


def _counts(B: int, S: int, unique: int, slots: int, W: int = 2) -> des_plan.RequestCounts:
    """A requester's step with rows and slots spread evenly over ``W`` owners."""
    return des_plan.RequestCounts(B, S, [unique // W] * W, [slots // W] * W, rank=0)


def _model(arch: str, dim: int, hidden: int, split: int = 0) -> des_plan.DESModel:
    return des_plan.DESModel(
        arch,
        dim,
        8,
        (hidden,),
        arch in ("deepfm", "wide_deep"),
        ("deep.first.from_fields",),
        tuple(range(split)),
    )


def test_byte_model_counts_what_each_exchange_sends() -> None:
    m, c = _model("deepfm", dim=16, hidden=32), _counts(B=100, S=8, unique=400, slots=800)
    # plain: counts + ids + rows and their gradients of the 200 remote rows (dim 16 + linear)
    assert des_plan.candidate_bytes(m, c, (), 4) == 8 + 4 * 200 + 2 * 4 * 17 * 200
    # DES: counts + request (rows, int16 slot indices, bitmask) + partials and their gradients
    request = 4 * 200 + 2 * 400 + 100
    P = 1 + 16 + 1 + 32
    assert des_plan.request_bytes(c) == request
    assert des_plan.candidate_bytes(m, c, ("lr", "fm", "first"), 4) == 24 + request + 8 * P * 100
    # leaving out lr keeps the linear rows on the wire (1 float per remote row each way)
    got = des_plan.candidate_bytes(m, c, ("fm", "first"), 4)
    assert got == 24 + request + 8 * ((P - 1) * 100 + 200)
    assert des_plan.index_bytes(32767) == 2 and des_plan.index_bytes(32768) == 4


def test_auto_picks_des_for_multi_hot_fields_and_keeps_rows_for_a_wide_first_layer() -> None:
    def pick(m, c):
        costs = {
            s: des_plan.candidate_bytes(m, c, s, 4)
            for s in des_plan.candidates(des_plan.APPLICABLE[m.arch])
        }
        return des_plan.choose(costs), costs

    # 64 multi-hot slots per sample, little sharing: DES sends far less than the rows.
    ops, costs = pick(_model("deepfm", 16, 32), _counts(4096, 64, 4096 * 40, 4096 * 60))
    assert ops == ("lr", "fm", "first") and costs[ops] < 0.4 * costs[()]
    # 16 single-slot fields, VSI shrinks the rows, a first layer wider than fields x dim: rows.
    ops, costs = pick(_model("wide_deep", 16, 1024), _counts(4096, 16, 4096 * 3, 4096 * 16))
    assert ops == () and costs[("lr", "first")] > costs[()]
    # A split multi-slot field adds D floats per sample to the FM partials.
    assert sum(_model("deepfm", 16, 0, split=2).widths(("fm",)).values()) == 16 + 1 + 32
