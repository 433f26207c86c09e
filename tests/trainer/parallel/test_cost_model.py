"""The cost model (``trainer/parallel/cost_model.py``) against what runs: the communication meter's
bytes and calls of a real step at world size 1, 2 (and 4, slow) on gloo, and a real step of rank
``r`` of 64 in this process on PyTorch's fake process group (no communication), whose collectives
are recorded by wrapping the comm layer and whose shard is measured from its tensors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist

from tests.trainer.meta_fixtures import batch_from_local_ids, make_layout
from tests.trainer.parallel.parity import Case, global_batch, layout, train_step
from tests.trainer.parallel.spawn import run_spawned
from trainer.optim import build_optimizers
from trainer.parallel import cost_model, des_plan
from trainer.parallel.apply import build_parallel_model
from trainer.parallel.comm import Collectives
from trainer.parallel.env import ParallelEnv
from trainer.parallel.plan import ParallelConfig, build_sharding_plan

CASE = Case("deepfm", "fomaml", "dense")
DES_CASE = Case("deepfm", "plain")
DES_PARALLEL = ParallelConfig(des="on")
METRICS = {"loss": 1.0, "episodes": 2.0, "samples": 3.0}
SMALL_BUCKET = 256  # bytes: several dense buckets, so their count is checked too


# ----------------------------------------------------------------------- gloo: the meter's bytes
def _env(env: ParallelEnv) -> ParallelEnv:
    return ParallelEnv(
        env.rank, env.world_size, env.local_rank, env.device, env.backend, env.comm, SMALL_BUCKET
    )


def _one_step(env: ParallelEnv) -> dict[str, dict[str, int]]:
    """The meter's count of one trainer step plus the logging all-reduce, with the row exchange
    and with DES (``on``, plain training: every DeepFM operator substituted)."""
    env, out = _env(env), {}
    for variant, case, par in (("rows", CASE, None), ("des", DES_CASE, DES_PARALLEL)):
        model, _ = build_parallel_model(
            case.model_cfg(), layout(), env, par, dtype=torch.float64, meta=case.meta_cfg()
        )
        opt = build_optimizers(case.optim_cfg(), model)
        env.comm_stats(reset=True)
        train_step(model, opt, global_batch(0, env.world_size, env.rank), case.meta_cfg(), env)
        env.reduce_sums(METRICS)
        out[variant] = env.comm_stats(reset=True)
    return out


def _predicted(world_size: int) -> list[dict[str, dict[str, int]]]:
    """The cost model's snapshot of every rank, from the batches alone (no process group)."""
    one = ParallelEnv.single_process(torch.device("cpu"))
    model, _ = build_parallel_model(CASE.model_cfg(), layout(), one, dtype=torch.float64)
    buckets = cost_model.dense_buckets(model.parameters(), SMALL_BUCKET)
    plan = build_sharding_plan(layout(), world_size, CASE.model_cfg(), dtype=torch.float64)
    batches = [global_batch(0, world_size, r) for r in range(world_size)]
    requests = cost_model.requests_from_ids(plan, [b.ids for b in batches])
    first = [(n, layer.weight.shape[1]) for n, layer in model.first_field_layers()]
    spec = des_plan.describe_model("deepfm", plan, layout().feature_slots, first)
    counts = [
        cost_model.des_request_counts(plan, b.ids, b.inverse, r) for r, b in enumerate(batches)
    ]
    out = []
    for r in range(world_size):
        rows = cost_model.step_collectives(plan, requests, r, buckets, metric_values=len(METRICS))
        des = cost_model.des_collectives(spec, des_plan.APPLICABLE["deepfm"], counts, r, 8)
        des += [c for c in rows if c.name in ("scalar", "dense", "metrics")]
        out.append({"rows": cost_model.snapshot(rows), "des": cost_model.snapshot(des)})
    return out


def test_single_process_step_matches_the_meter() -> None:
    measured = _one_step(ParallelEnv.single_process(torch.device("cpu")))
    assert measured == _predicted(1)[0]
    assert measured["rows"]["comm.bytes"] == 0 and "comm.scalar.calls" not in measured["rows"]


def test_des_bytes_summed_over_ranks_are_des_plans_estimate() -> None:
    """des_plan charges a step's bytes to the requester, the meter to the sender: same totals."""
    W = 4
    plan = build_sharding_plan(layout(), W, CASE.model_cfg(), dtype=torch.float64)
    spec = des_plan.describe_model("deepfm", plan, layout().feature_slots, [("first", 8)])
    batches = [global_batch(0, W, r) for r in range(W)]
    counts = [
        cost_model.des_request_counts(plan, b.ids, b.inverse, r) for r, b in enumerate(batches)
    ]
    for ops in des_plan.candidates(des_plan.APPLICABLE["deepfm"])[1:]:
        sent = sum(
            c.bytes for r in range(W) for c in cost_model.des_collectives(spec, ops, counts, r, 8)
        )
        assert sent == sum(des_plan.candidate_bytes(spec, c, ops, 8) for c in counts), ops


@pytest.mark.multiprocess
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "world_size", [2, pytest.param(4, marks=pytest.mark.slow)], ids=lambda w: f"W{w}"
)
def test_gloo_step_matches_the_meter(world_size: int, tmp_path) -> None:
    measured = run_spawned(_one_step, world_size, tmp_path)
    predicted = _predicted(world_size)
    assert measured == predicted
    rows = [m["rows"] for m in measured]
    assert all(m["comm.dense.calls"] > 1 and m["comm.rows.bytes"] > 0 for m in rows)
    assert all(m["des"]["comm.des.forward.bytes"] > 0 and "comm.rows.calls" not in m["des"]
               for m in measured)  # fmt: skip
    # ranks differ (their batches do): the prediction is per rank, not an average
    assert len({m["comm.ids.bytes"] for m in rows}) > 1


# -------------------------------------------------------------- fake process group: 64 ranks
W_FAKE, RANK = 64, 5
FEATURES = [("user", 64 * 40, 1), ("ad", 64 * 9, 1), ("hour", 64, 1), ("tags", 64 * 3, 3)]
"""Every table a multiple of W rows: equal shards, so the rows the fake group hands back (this
rank's own requests, echoed) are valid local rows of this rank's shard."""


@dataclass
class _Call:
    method: str
    name: str
    nbytes: int


class RecordingCollectives(Collectives):
    """The comm layer with every call recorded (what it sends to other ranks, computed from its
    arguments) and then made for real on the process group."""

    def __init__(self, rank: int, world_size: int) -> None:
        super().__init__(rank, world_size)
        self.log: list[_Call] = []

    def exchange_counts(self, send_counts, name="splits"):
        self.log.append(_Call("exchange_counts", name, 8 * (send_counts.numel() - 1)))
        return super().exchange_counts(send_counts, name)

    def all_to_all(self, tensor, send_counts, recv_counts, name):
        row = tensor[:1].numel() * tensor.element_size()
        sent = sum(send_counts) - send_counts[self.rank]
        self.log.append(_Call("all_to_all", name, row * sent))
        return super().all_to_all(tensor, send_counts, recv_counts, name)

    def all_reduce(self, tensor, name, async_op=False):
        size = tensor.numel() * tensor.element_size()
        self.log.append(
            _Call("all_reduce", name, 2 * (self.world_size - 1) * size // self.world_size)
        )
        return super().all_reduce(tensor, name, async_op)

    def broadcast(self, tensor, src, name):
        self.log.append(_Call("broadcast", name, 0))
        return super().broadcast(tensor, src, name)


@pytest.fixture
def fake_group():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    assert not dist.is_initialized()
    dist.init_process_group("fake", store=FakeStore(), rank=RANK, world_size=W_FAKE)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _fake_batch(lay):
    g = torch.Generator().manual_seed(7)
    T, N, S = 4, lay.k_support + lay.q_query, lay.sparse_width
    buckets = torch.tensor(lay.feature_buckets)[lay.slot_feature]
    local = (torch.rand(T, N, S, generator=g) * (buckets - 1)).long() + 1
    return batch_from_local_ids(
        lay, local, torch.randn(T, N, lay.dense_width, generator=g, dtype=torch.float64),
        (torch.rand(T, N, generator=g) < 0.4).double(), torch.zeros(T, N, dtype=torch.float64),
        torch.full((T,), lay.k_support), torch.full((T,), lay.q_query),
        torch.ones(T, dtype=torch.bool), task_ids=torch.arange(T) + 1,
    )  # fmt: skip


def test_fake_group_step_at_64_ranks(fake_group) -> None:
    lay = make_layout(FEATURES, dense_width=2, k_support=4, q_query=3)
    comm = RecordingCollectives(RANK, W_FAKE)
    env = ParallelEnv(RANK, W_FAKE, 0, torch.device("cpu"), "fake", comm, SMALL_BUCKET)
    model, plan = build_parallel_model(CASE.model_cfg(), lay, env, dtype=torch.float64)
    assert plan.world_size == W_FAKE and len(set(plan.rows_per_rank)) == 1

    # memory: the shard's tensors as allocated, against the prediction for this rank
    store = model.embeddings.store
    measured = {
        "table": sum(t.nbytes for t in store.weights.values()),
        "optimizer": sum(t.nbytes for t in store.accum.values()),
        "null_mask": store.null.nbytes,
    }
    n_dense = sum(p.numel() for p in model.parameters())
    mem = cost_model.rank_memory(plan, RANK, n_dense, 8, activations=0)
    assert measured == {"table": mem.table, "optimizer": mem.optimizer, "null_mask": mem.null_mask}
    assert mem.table == plan.rows_per_rank[RANK] * 5 * 8  # dim 4 + linear, float64

    # collectives: a real step; the fake group echoes this rank's counts and ids back, i.e. every
    # other rank asks this one for what this one asks it for (a mirrored world)
    opt = build_optimizers(CASE.optim_cfg(), model)
    comm.log.clear()
    env.comm_stats(reset=True)
    batch = _fake_batch(lay)
    train_step(model, opt, batch, CASE.meta_cfg(), env)
    env.reduce_sums(METRICS)
    mine = cost_model.requests_from_ids(plan, [batch.ids] * W_FAKE)[0]
    mirrored = [[mine[i]] * W_FAKE for i in range(W_FAKE)]
    mirrored[RANK] = mine
    buckets = cost_model.dense_buckets(model.parameters(), SMALL_BUCKET)
    predicted = cost_model.step_collectives(
        plan, mirrored, RANK, buckets, metric_values=len(METRICS)
    )
    expanded = [(c.name, c.bytes) for c in predicted if c.name != "dense"]
    recorded = [(c.name, c.nbytes) for c in comm.log if c.name != "dense"]
    assert recorded == expanded
    dense = [c.nbytes for c in comm.log if c.name == "dense"]
    assert len(dense) == len(buckets) > 1
    assert sum(dense) == next(c.bytes for c in predicted if c.name == "dense")
    assert env.comm_stats() == cost_model.snapshot(predicted)
    assert sum(mine) - mine[RANK] > 0  # rows did travel to other ranks
