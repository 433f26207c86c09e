"""``metarec train --nproc``: the torchrun command line for one host, several hosts and a PyTorchJob
pod, and the checks on the process options (no processes started here; the launches themselves run
in tests/trainer/parallel/test_trainer_distributed.py)."""

from __future__ import annotations

import sys

import pytest

from components.cli import main
from components.train.launch import TorchrunOptions, torchrun_command

TRAINER = ["--config", "debug", "data.path=/d"]
HEAD = [sys.executable, "-m", "torch.distributed.run"]
TAIL = ["-m", "trainer", *TRAINER]


def test_one_host_is_a_standalone_rendezvous() -> None:
    opts = TorchrunOptions(nproc=4)
    assert opts.multi_process({})
    assert torchrun_command(opts, TRAINER, {}) == [
        *HEAD, "--standalone", "--nproc-per-node=4", *TAIL
    ]  # fmt: skip
    assert not TorchrunOptions(nproc=1).multi_process({})  # in-process


def test_several_hosts_name_the_rendezvous() -> None:
    opts = TorchrunOptions(
        nproc=2, nnodes=3, node_rank=1, master_addr="10.0.0.1", master_port=29400
    )
    assert torchrun_command(opts, TRAINER, {}) == [
        *HEAD, "--nnodes=3", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29400",
        "--nproc-per-node=2", *TAIL,
    ]  # fmt: skip


def test_inside_a_pytorchjob_pod_torchrun_takes_the_operator_variables() -> None:
    pod = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "job-master-0",
           "PET_MASTER_PORT": "23456", "PET_NPROC_PER_NODE": "auto"}  # fmt: skip
    opts = TorchrunOptions(nproc=1)
    assert opts.multi_process(pod)  # two pods: a job even with one process per pod
    assert torchrun_command(opts, TRAINER, pod) == [*HEAD, "--nproc-per-node=1", *TAIL]
    assert TorchrunOptions(nproc=1).multi_process({"PET_NNODES": "1:4"})  # elastic range


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nproc": 0}, "--nproc and --nnodes must be >= 1"),
        ({"nproc": 2, "nnodes": 2, "node_rank": 2}, r"--node-rank must be in \[0, --nnodes\)"),
    ],
)
def test_bad_process_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TorchrunOptions(**kwargs)


def test_a_bad_config_is_refused_before_anything_is_launched(tmp_path, capsys) -> None:
    argv = ["train", "--nproc", "2", "--config", "debug", f"data.path={tmp_path}", "meta.mode=x"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("metarec train: error: meta.mode"), err
    assert main(["train", "--nproc", "0", "--config", "debug", f"data.path={tmp_path}"]) == 2
    assert "--nproc and --nnodes must be >= 1" in capsys.readouterr().err
