"""Restarts that happen: real ranks (2 per launcher, gloo, ``rank_fault.py``) are killed, aborted,
made to raise or to exit 2, or their launcher is sent SIGTERM, under plain torchrun and under
``python -m trainer.supervise``; each exit code is then put through the operators' documented rules
(``operator_rules.py``) with the policy fields of the RENDERED manifests: the PyTorchJob's
restartPolicy/backoffLimit and the TrainingRuntime's Job podFailurePolicy/backoffLimit and JobSet
failurePolicy. A killed, aborted, raising or preempted rank must restart the job under both
operators, a user error (exit 2) must fail it, success must succeed. Plain torchrun exits 1 for
every failure, which the PyTorchJob's ExitCode policy never restarts: the finding this fixes (its
runs are torchrun's behaviour, not this repository's: the ``slow`` tier rechecks it).

    .venv/bin/pytest tests/reliability/test_restart_policy.py -q -s   # -s prints the table
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from components.launchers.render import TrainRunParams, job_of, render_run
from tests.reliability.operator_rules import (
    FAIL,
    RESTART,
    SUCCEED,
    pytorchjob_decisions,
    trainjob_decision,
)
from trainer.supervise import exit_code_for

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]
RANK = Path(__file__).with_name("rank_fault.py")
LAUNCHERS = {"torchrun": "torch.distributed.run", "wrapper": "trainer.supervise"}
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")  # fmt: skip
# failure kind -> (rank_fault.py's METAREC_FAULT, the wrapper's exit code, what must happen)
KINDS = {
    "rank SIGKILL (OOM, lost process)": ("kill", 137, RESTART),
    "rank SIGABRT (NCCL abort)": ("abort", 134, RESTART),
    "rank exception (exit 1)": ("raise", 138, RESTART),
    "rank user error (exit 2)": ("user-error", 2, FAIL),
    "SIGTERM to the launcher (preemption)": ("preempt", 143, RESTART),
    "success": ("none", 0, SUCCEED),
}
DATA = "data.path=/data/episodes/interval=2026110100-2026110200"


def _launch(launcher: str, fault: str, work: Path) -> int:
    """Exit code of ``python -m <launcher> --standalone --nproc-per-node=2 rank_fault.py``."""
    ready = work / f"{launcher}-{fault}"
    ready.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("PET_")}
    env.update(METAREC_FAULT="wait" if fault == "preempt" else fault, METAREC_READY_DIR=str(ready),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))  # fmt: skip
    cmd = [sys.executable, "-m", LAUNCHERS[launcher], "--standalone", "--nproc-per-node=2",
           "--monitor-interval=0.1", str(RANK)]  # fmt: skip
    with (ready / "output.log").open("w") as log:
        # its own session, so that a hang is cleaned up whole (launcher and ranks)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            if fault == "preempt":
                deadline = time.monotonic() + 90
                while len(list(ready.glob("*.ready"))) < 2:
                    assert time.monotonic() < deadline and proc.poll() is None, "ranks never met"
                    time.sleep(0.1)
                proc.send_signal(signal.SIGTERM)  # the launcher only, as the kubelet does
            return proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _exit_codes(launcher: str, work: Path) -> dict[str, int]:
    """fault -> exit code under ``launcher``, for every failure kind (runs in parallel)."""
    faults = [fault for fault, _, _ in KINDS.values()]
    with ThreadPoolExecutor(max_workers=3) as pool:
        codes = list(pool.map(lambda fault: _launch(launcher, fault, work), faults))
    return dict(zip(faults, codes, strict=True))


@pytest.fixture(scope="module")
def wrapper_codes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """fault -> exit code of ``python -m trainer.supervise``."""
    return _exit_codes("wrapper", tmp_path_factory.mktemp("restart-policy-wrapper"))


@pytest.fixture(scope="module")
def torchrun_codes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """fault -> exit code of plain ``python -m torch.distributed.run``."""
    return _exit_codes("torchrun", tmp_path_factory.mktemp("restart-policy-torchrun"))


@cache
def _rendered(variant: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_run(TrainRunParams(run_id="restart", variant=variant, overrides=(DATA,))))


def _pytorchjob(variant: str = "pytorchjob-gpu") -> dict[str, Any]:
    return copy.deepcopy(job_of(_rendered(variant)))


def _runtime(variant: str = "trainjob-gpu") -> dict[str, Any]:
    return copy.deepcopy(next(o for o in _rendered(variant) if o["kind"] == "TrainingRuntime"))


def _v1(job: dict[str, Any], code: int) -> str:
    """The PyTorchJob's decision, the same whichever replica's pod failed."""
    decisions = set(pytorchjob_decisions(job, code).values())
    assert len(decisions) == 1, decisions
    return decisions.pop()


def _print_table(launcher: str, codes: dict[str, int]) -> None:
    """The exit code of every failure kind and the two operators' decisions (``-s`` shows it)."""
    job, runtime = _pytorchjob(), _runtime()
    header = ("failure kind", f"{launcher} exit", "PyTorchJob v1", "TrainJob v2")
    rows = [
        (kind, str(code), _v1(job, code), trainjob_decision(runtime, code))
        for kind, code in ((kind, codes[fault]) for kind, (fault, _, _) in KINDS.items())
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    print("\n" + "\n".join(lines))


@pytest.mark.multiprocess
def test_killed_aborted_and_preempted_ranks_restart_under_both_operators(wrapper_codes):
    job, runtime = _pytorchjob(), _runtime()
    for kind, (fault, wrapper_code, expected) in KINDS.items():
        wrapped = wrapper_codes[fault]
        assert wrapped == wrapper_code, kind
        decisions = (_v1(job, wrapped), trainjob_decision(runtime, wrapped))
        assert decisions == (expected, expected), kind
    _print_table("wrapper", wrapper_codes)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_plain_torchrun_exits_1_so_the_exitcode_policy_never_restarts(torchrun_codes):
    job = _pytorchjob()
    for kind, (fault, _, _) in KINDS.items():
        plain = torchrun_codes[fault]
        assert plain == (0 if fault == "none" else 1), kind
        assert _v1(job, plain) == (SUCCEED if fault == "none" else FAIL), kind
    _print_table("torchrun", torchrun_codes)


@pytest.mark.parametrize(
    "variant", ["pytorchjob-cpu", "pytorchjob-elastic", "pytorchjob-kueue", "pytorchjob-volcano"]
)
def test_every_pytorchjob_variant_keeps_the_policy(variant: str):
    job = _pytorchjob(variant)
    assert {_v1(job, code) for code in (134, 137, 138, 143)} == {RESTART}
    assert _v1(job, 2) == FAIL


@pytest.mark.parametrize("variant", ["trainjob-cpu", "trainjob-kueue"])
def test_every_trainjob_variant_keeps_the_policy(variant: str):
    runtime = _runtime(variant)
    assert {trainjob_decision(runtime, code) for code in (134, 137, 138, 143)} == {RESTART}
    assert trainjob_decision(runtime, 2) == FAIL


def test_the_decisions_follow_the_policy_fields():
    """The rules are read from the manifests, not per row: other policies give other decisions."""
    job = _pytorchjob()
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        replica["restartPolicy"] = "OnFailure"
    assert _v1(job, 2) == RESTART  # why not OnFailure: a bad config would be retried
    job["spec"]["runPolicy"]["backoffLimit"] = 0
    assert _v1(job, 137) == FAIL
    runtime = _runtime()
    rjob = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    del rjob["podFailurePolicy"]
    assert trainjob_decision(runtime, 2) == RESTART  # no fail-fast without the Job rule
    runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] = 0
    assert trainjob_decision(runtime, 137) == FAIL
    del runtime["spec"]["template"]["spec"]["failurePolicy"]
    assert trainjob_decision(runtime, 137) == FAIL


def test_the_runtime_job_template_is_a_valid_batch_v1_job():
    """podFailurePolicy is a batch/v1 Job field: Kubernetes' own schema (strict) accepts it where
    the runtime puts it (the TrainingRuntime CRD embeds the Job template)."""
    import kubernetes_validate

    (rjob,) = _runtime()["spec"]["template"]["spec"]["replicatedJobs"]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "node"},
           "spec": rjob["template"]["spec"]}  # fmt: skip
    kubernetes_validate.validate(job, "1.32.0", strict=True)
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it


@pytest.mark.parametrize(
    ("failures", "code"),
    [
        ({1: -9, 0: -15}, 137),  # rank 1 killed; torchrun then stopped rank 0: not a cause
        ({1: -6, 0: 1}, 134),  # the abort, not the peer's collective error
        ({1: 1, 0: -15}, 138),
        ({0: 1, 1: 2}, 2),  # a user error wins: a restart would repeat it
        ({0: -15, 1: -15}, 143),
        ({0: 139}, 139),  # a rank's own code in 128-255 is kept
    ],
)
def test_the_cause_among_several_failed_ranks(failures: dict[int, int], code: int):
    assert exit_code_for(failures)[0] == code
