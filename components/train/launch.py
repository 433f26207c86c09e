"""Launch the trainer on several processes with ``torchrun``, as a child process of ``metarec train``.

    cmd = torchrun_command(TorchrunOptions(nproc=2), ["--config", "debug", "data.path=..."])
    # [python, -m, torch.distributed.run, --standalone, --nproc_per_node=2, -m, trainer, ...]
    code = run_torchrun(cmd)          # streams the job's output; 0, or the job's exit code

One host: ``--standalone`` (a private rendezvous on a free local port). Several hosts: every host
runs the same command with its ``--node-rank``, and the rendezvous is ``--master-addr`` /
``--master-port`` of node 0; flags that are not given are left to torchrun, which takes the
Kubeflow training operator's ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
``PET_MASTER_PORT`` as defaults, so inside a PyTorchJob pod ``metarec train --nproc N`` needs no
rendezvous flags. torchrun is run as ``python -m torch.distributed.run`` with this interpreter, so
the job uses the same environment as the CLI.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchrunOptions:
    """Process layout of a ``metarec train`` job."""

    nproc: int = 1
    """Processes (ranks) per host."""
    nnodes: int | None = None
    """Hosts (None: one, or ``PET_NNODES`` where the training operator set it)."""
    node_rank: int | None = None
    """This host's rank among ``nnodes`` (None: 0, or ``PET_NODE_RANK``)."""
    master_addr: str | None = None
    """Address of node 0, where the rendezvous runs (None: ``PET_MASTER_ADDR``)."""
    master_port: int | None = None
    """Port of the rendezvous on node 0 (None: ``PET_MASTER_PORT``, else torchrun's 29500)."""

    def __post_init__(self) -> None:
        if self.nproc < 1 or (self.nnodes is not None and self.nnodes < 1):
            raise ValueError(f"--nproc and --nnodes must be >= 1, got {self.nproc}, {self.nnodes}")
        if self.node_rank is not None and not 0 <= self.node_rank < (self.nnodes or 1):
            raise ValueError(
                f"--node-rank must be in [0, --nnodes), got {self.node_rank} of {self.nnodes or 1}"
            )

    def multi_process(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether the job needs torchrun (several processes here, or several hosts)."""
        return self.nproc > 1 or self._nnodes(environ) > 1

    def _nnodes(self, environ: Mapping[str, str] | None) -> int:
        if self.nnodes is not None:
            return self.nnodes
        pet = (os.environ if environ is None else environ).get("PET_NNODES", "1")
        return int(pet) if pet.isdigit() else 2  # "min:max" (elastic): several hosts


def torchrun_command(
    opts: TorchrunOptions, trainer_args: Sequence[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """The command line that runs ``python -m trainer <trainer_args>`` on every rank."""
    env = os.environ if environ is None else environ
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    explicit = opts.nnodes is not None or opts.master_addr is not None
    if not explicit and "PET_NNODES" not in env:
        cmd.append("--standalone")
    elif opts.nnodes is not None:
        cmd.append(f"--nnodes={opts.nnodes}")
    for flag, value in (
        ("--node-rank", opts.node_rank),
        ("--master-addr", opts.master_addr),
        ("--master-port", opts.master_port),
    ):
        if value is not None:
            cmd.append(f"{flag}={value}")
    cmd += [f"--nproc-per-node={opts.nproc}", "-m", "trainer", *trainer_args]
    return cmd


def run_torchrun(cmd: Sequence[str]) -> int:
    """Run ``cmd`` with this process's output streams (the ranks' logs appear as they come) and
    return its exit code. Ctrl-C or SIGTERM stops the job (torchrun forwards it to every rank)."""
    log.info("launching: %s", " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(list(cmd), env=env)
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        try:
            return child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
