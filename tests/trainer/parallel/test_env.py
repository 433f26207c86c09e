"""Launch variables (plain python, torchrun, Kubeflow PyTorchJob), the one-process environment, the
communication meter and gradient buckets: all without a process group."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.parallel.comm import Collectives, CommMeter
from trainer.parallel.dense_sync import allreduce_gradients, plan_buckets
from trainer.parallel.env import LaunchSpec, init_parallel

TORCHRUN = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "job"}  # fmt: skip
# What the training operator injects into worker pod 1 of a Master + 2 Workers job (nprocPerNode
# defaulted to "auto", so WORLD_SIZE counts pods and RANK is the pod rank).
PYTORCHJOB_WORKER = {"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "3",
                     "RANK": "2", "PET_MASTER_ADDR": "job-master-0", "PET_MASTER_PORT": "23456",
                     "PET_NODE_RANK": "2", "PET_NNODES": "3", "PET_NPROC_PER_NODE": "auto",
                     "PYTHONUNBUFFERED": "1"}  # fmt: skip


def test_plain_python_is_one_process_without_a_process_group() -> None:
    assert LaunchSpec.from_environ({}) == LaunchSpec(0, 1, 0, None, None, "none")
    env = init_parallel({}, device="cpu")
    assert (env.rank, env.world_size, env.backend, env.is_main) == (0, 1, "none", True)
    assert env.barrier_fn() is None and env.normalizer(torch.tensor(5)) is None
    assert env.reduce_sums({"loss": 2.5, "n": 3}) == {"loss": 2.5, "n": 3.0}
    env.close()  # nothing to tear down, and no error


def test_torchrun_variables() -> None:
    spec = LaunchSpec.from_environ(TORCHRUN)
    assert spec == LaunchSpec(3, 4, 1, "10.0.0.5", 29500, "torchrun")


def test_pytorchjob_variables_one_process_per_pod() -> None:
    spec = LaunchSpec.from_environ(PYTORCHJOB_WORKER)
    assert spec == LaunchSpec(2, 3, 0, "job-master-0", 23456, "pytorchjob")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"RANK": "3"}, "0 <= RANK < WORLD_SIZE"),
        ({"WORLD_SIZE": "two"}, "must be integers"),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR/MASTER_PORT are not set"),
        ({"PET_NPROC_PER_NODE": "4"}, "torchrun -m trainer"),
    ],
)
def test_bad_launch_variables_are_refused_with_the_fix(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        LaunchSpec.from_environ({**PYTORCHJOB_WORKER, **changes})


def test_torchrun_may_run_several_processes_per_pod() -> None:
    env = {**PYTORCHJOB_WORKER, **TORCHRUN, "PET_NPROC_PER_NODE": "2"}
    assert LaunchSpec.from_environ(env).launcher == "torchrun"


def test_backend_and_device_choices_are_checked() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        init_parallel({}, device="cpu", backend="mpi")
    with pytest.raises(ValueError, match="nccl backend needs a GPU"):
        init_parallel({}, device="cpu", backend="nccl")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            init_parallel({}, device="cuda")


def test_meter_counts_calls_and_bytes_per_collective() -> None:
    meter = CommMeter()
    meter.add("ids", 100)
    meter.add("ids", 20)
    meter.add("dense", 8, calls=2)
    assert meter.snapshot(reset=True) == {
        "comm.dense.calls": 2, "comm.dense.bytes": 8, "comm.ids.calls": 2, "comm.ids.bytes": 120,
        "comm.calls": 4, "comm.bytes": 128,
    }  # fmt: skip
    assert meter.snapshot() == {"comm.calls": 0, "comm.bytes": 0}


def test_one_rank_collectives_are_identities_counted_with_zero_bytes() -> None:
    comm = Collectives(0, 1)
    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(comm.all_to_all(x, [3], [3], "rows"), x)
    assert comm.exchange_counts(torch.tensor([3])).tolist() == [3]
    assert [t.tolist() for t in comm.all_gather_rows(x, "gather")] == [x.tolist()]
    snap = comm.meter.snapshot()
    assert snap["comm.calls"] == 3 and snap["comm.bytes"] == 0


def test_buckets_follow_parameter_order_size_and_dtype() -> None:
    params = [nn.Parameter(torch.zeros(n, dtype=dt)) for n, dt in
              [(10, torch.float32), (10, torch.float32), (30, torch.float32), (4, torch.float64),
               (5, torch.float32)]]  # fmt: skip
    # 40 + 40 bytes share a bucket; 120 bytes get their own; float64 never mixes with float32
    index = {id(p): i for i, p in enumerate(params)}
    buckets = plan_buckets(params, bucket_bytes=100)
    assert [[index[id(p)] for p in b] for b in buckets] == [[0, 1], [2], [3], [4]]
    assert [[index[id(p)] for p in b] for b in plan_buckets(params, 220)] == [[0, 1, 2, 4], [3]]
    frozen = nn.Parameter(torch.zeros(3), requires_grad=False)
    assert plan_buckets([frozen], 100) == []
    with pytest.raises(ValueError, match="bucket size"):
        plan_buckets(params, 0)


def test_one_rank_gradient_sync_leaves_gradients_alone() -> None:
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    comm = Collectives(0, 1)
    allreduce_gradients([p], comm)
    assert p.grad.tolist() == [2.0, 2.0, 2.0]
